"""The architecture check passes on the workspace and fails on each planted violation."""

import shutil
import textwrap
from pathlib import Path

import pytest

from mugv_testing.architecture import check

ROOT = Path(__file__).resolve().parents[2]


def _skeleton(tmp_path: Path) -> Path:
    """A copy of the workspace's package metadata and public __init__ files only."""
    for pkg_dir in (ROOT / "packages").iterdir():
        name = pkg_dir.name.replace("-", "_")
        dst = tmp_path / "packages" / pkg_dir.name
        (dst / "src" / name).mkdir(parents=True)
        shutil.copy(pkg_dir / "pyproject.toml", dst / "pyproject.toml")
        shutil.copy(pkg_dir / "src" / name / "__init__.py", dst / "src" / name / "__init__.py")
    return tmp_path


def _plant(root: Path, package: str, code: str, where: str = "src") -> None:
    pkg = package.replace("_", "-")
    target = (
        root / "packages" / pkg / (f"src/{package}" if where == "src" else "tests") / "planted.py"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(textwrap.dedent(code))


def test_workspace_is_clean():
    violations = check(ROOT)
    assert violations == [], "\n".join(map(str, violations))


def test_clean_skeleton_has_no_violations(tmp_path):
    assert check(_skeleton(tmp_path)) == []


@pytest.mark.parametrize(
    ("package", "code", "message"),
    [
        pytest.param(
            "mugv_vae", "import mugv_dit\n", "must not import mugv_dit", id="vae-imports-dit"
        ),
        pytest.param(
            "mugv_dit",
            "from mugv_train import x\n",
            "must not import mugv_train",
            id="dit-imports-train",
        ),
        pytest.param(
            "mugv_infer",
            "from mugv_data import y\n",
            "must not import mugv_data",
            id="infer-imports-data",
        ),
        pytest.param(
            "mugv_data",
            "from mugv_dit._model import MUGDiT\n",
            "only the top level",
            id="private-module",
        ),
        pytest.param("mugv_data", "import mugv_vae.losses\n", "only the top level", id="submodule"),
        pytest.param(
            "mugv_infer",
            "from mugv_vae import _private\n",
            "not in mugv_vae.__all__",
            id="private-name",
        ),
        pytest.param(
            "mugv_dit",
            "def f():\n    import megatron.core\n",
            "only mugv-train",
            id="megatron-outside-train",
        ),
        pytest.param("mugv_vae", "import yaml\n", "'yaml'", id="undeclared-third-party"),
        pytest.param("mugv_infer", "import ray\n", "not declared", id="extra-of-another-package"),
    ],
)
def test_planted_violation_is_reported(tmp_path, package, code, message):
    root = _skeleton(tmp_path)
    _plant(root, package, code)
    violations = check(root)
    assert len(violations) == 1, violations
    assert message in violations[0].message
    assert violations[0].path.name == "planted.py"


def test_allowed_imports_pass(tmp_path):
    root = _skeleton(tmp_path)
    _plant(root, "mugv_train", "import megatron.core\nimport torch\nimport mugv_dit\n")
    _plant(root, "mugv_data", "import cv2\nimport av\n")
    _plant(
        root, "mugv_dit", "import pytest\nfrom mugv_testing import assert_close\n", where="tests"
    )
    assert check(root) == []


def test_tests_may_use_sibling_dependencies(tmp_path):
    root = _skeleton(tmp_path)
    _plant(root, "mugv_infer", "import sentencepiece\n", where="tests")  # declared by mugv-dit
    assert check(root) == []
    _plant(root, "mugv_infer", "import sentencepiece\n")  # but the source must declare it
    assert ["sentencepiece" in v.message for v in check(root)] == [True]


def test_test_tools_only_allowed_in_tests(tmp_path):
    root = _skeleton(tmp_path)
    _plant(root, "mugv_dit", "import pytest\n")
    assert [v.message for v in check(root)] == [
        "import of 'pytest' (distribution pytest) is not declared in mugv-dit/pyproject.toml"
    ]
