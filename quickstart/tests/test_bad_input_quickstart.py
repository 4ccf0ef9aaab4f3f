"""mugv-quickstart refuses bad arguments with one error line and exit 2, before any work."""

from __future__ import annotations

import pytest
from mugv_quickstart.cli import _STAGE_NAMES, main
from mugv_quickstart.stages import STAGES


def test_stage_names_are_the_runner_stages():
    assert tuple(stage.name for stage in STAGES) == _STAGE_NAMES


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--seed", "-3"], "--seed must be >= 0, got -3"),
        (["--stop-after", "train"], "--stop-after 'train' is not a stage; choose one of"),
        (["--out", "{file}"], "--out {file} exists and is not a folder"),
    ],
)
def test_bad_arguments(tmp_path, capsys, argv, message):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    argv = [a.format(file=file) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mugv-quickstart: error: ")
    assert message.format(file=file) in err
    assert not (tmp_path / "run").exists()  # nothing was started
