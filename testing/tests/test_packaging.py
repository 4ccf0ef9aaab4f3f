"""Workspace-wide packaging rules: every package is publishable on its own."""

import ast
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["mugv-vae", "mugv-dit", "mugv-data", "mugv-train", "mugv-infer"]
SIBLINGS = {
    "mugv-vae": set(),
    "mugv-dit": set(),
    "mugv-data": {"mugv-vae", "mugv-dit"},
    "mugv-infer": {"mugv-vae", "mugv-dit"},
    "mugv-train": {"mugv-vae", "mugv-dit", "mugv-data"},
}
GPU_ONLY = {"flash-attn", "xformers", "transformer-engine"}


def _project(package):
    return tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())


def _name(req):
    return re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0].lower()


@pytest.mark.parametrize("package", PACKAGES)
def test_package_layout(package):
    root = ROOT / "packages" / package
    module = package.replace("-", "_")
    init = root / "src" / module / "__init__.py"
    for required in (
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        f"src/{module}/py.typed",
        "tests",
    ):
        assert (root / required).exists(), f"{package} lacks {required}"
    assert "## Unreleased" in (root / "CHANGELOG.md").read_text()
    tree = ast.parse(init.read_text())
    assert ast.get_docstring(tree), f"{init} needs a docstring naming the entry points"
    names = {
        t.id
        for n in tree.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    assert {"__all__", "__version__"} <= names
    version = next(
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign)
        and any(getattr(t, "id", None) == "__version__" for t in n.targets)
    )
    assert version == _project(package)["project"]["version"], (
        "__version__ and pyproject version differ"
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies(package):
    data = _project(package)
    deps = {_name(d) for d in data["project"]["dependencies"]}
    assert not deps & GPU_ONLY, f"GPU-only dependencies must be extras: {deps & GPU_ONLY}"
    assert ("megatron-core" in deps) == (package == "mugv-train")
    siblings = {d for d in deps if d.startswith("mugv-")}
    assert siblings == SIBLINGS[package]
    for sibling in siblings:
        spec = next(d for d in data["project"]["dependencies"] if _name(d) == sibling)
        assert re.search(r">=\s*[\d.]+\s*,\s*<", spec), f"{spec}: siblings need a version range"
        assert data["tool"]["uv"]["sources"][sibling] == {"workspace": True}


def test_no_machine_paths_or_registry_hosts():
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # This checkout's own absolute path, home folders, and package-registry hosts.
    pattern = re.compile(
        rf"({re.escape(str(ROOT))}|/root/|/home/\w+/|pypi\.org|pythonhosted\.org|/opt/pypi)"
    )
    hits = []
    for rel in files:
        if rel == "uv.lock" or rel == Path(__file__).relative_to(ROOT).as_posix():
            continue
        path = ROOT / rel
        if (
            path.suffix
            in {".py", ".md", ".toml", ".yml", ".yaml", ".txt", ".json", ".cfg", ".sh", ""}
            and path.is_file()
        ):
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            hits += [
                f"{rel}:{i + 1}" for i, line in enumerate(text.splitlines()) if pattern.search(line)
            ]
    assert hits == [], f"machine paths or registry hosts in: {hits}"
