"""Import a package and every one of its modules: ``python -m mugv_testing._import_all NAME``.

Used by ``nox -s build`` inside an environment that holds only the package's wheel and
its declared dependencies, so a module-level import of an undeclared distribution
fails there. Optional extras must be imported lazily (inside the function that needs
them), which this check also enforces.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys


def main(name: str) -> int:
    package = importlib.import_module(name)
    failed = []
    count = 1
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
        try:
            importlib.import_module(info.name)
            count += 1
        except Exception as exc:
            failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
    for line in failed:
        print(f"import failed: {line}")
    print(
        f"{name} {getattr(package, '__version__', '?')}: imported {count} module(s), {len(failed)} failed"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
