"""Local engine: kill-and-resume equality (subprocess + SIGKILL), pool == in-process
(the Ray engine: test_ray.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mugv_data import CurationConfig, curate

_CLI = [sys.executable, "-m", "mugv_data.cli"]


def _manifest_rows(path: Path) -> list[dict]:
    rows = pq.read_table(path / "manifest.parquet").to_pylist()
    for r in rows:
        r.pop("path")  # absolute input path: the same here, but not part of the comparison
    return rows


def _kill_when(cmd: list[str], ready, timeout: float = 120.0) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds; fail if it ends first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(
                    f"{cmd[3]} finished before it could be killed: {proc.stderr.read()[-2000:]!r}"
                )
            if time.time() - t0 > timeout:
                pytest.fail(f"{cmd[3]} made no progress in {timeout}s")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()


def test_curate_killed_and_resumed_equals_uninterrupted(synthetic_set, curated, tmp_path):
    root, _ = synthetic_set
    reference, _ = curated
    out = tmp_path / "run"
    cmd = [*_CLI, "curate", str(root), "--out", str(out), "--preset", "synthetic", "--quiet"]
    records = out / "records"
    _kill_when(cmd, lambda: records.exists() and len(list(records.glob("*.json"))) >= 3)
    assert not (out / "manifest.parquet").exists()  # really killed mid-run
    done_before = len(list(records.glob("*.json")))
    assert not list(records.glob(".*.tmp"))  # atomic writes leave no partial record
    res = subprocess.run([*cmd], capture_output=True, text=True, check=True)
    assert f"resumed {done_before}" in res.stdout
    assert _manifest_rows(out) == _manifest_rows(reference.out_dir)
    a = pq.read_table(out / "videos.parquet").drop(["path"])
    b = pq.read_table(reference.videos).drop(["path"])
    assert a.equals(b)


def test_local_process_pool_matches_in_process(synthetic_set, curated, tmp_path):
    root, _ = synthetic_set
    reference, _ = curated
    cfg = CurationConfig.from_dict({"workers": 2}, base=CurationConfig.preset("synthetic"))
    res = curate(root, tmp_path / "pool", cfg)
    assert _manifest_rows(res.out_dir) == _manifest_rows(reference.out_dir)
    # A rerun does no work and changes nothing.
    again = curate(root, tmp_path / "pool", cfg)
    assert again.processed == 0
    assert _manifest_rows(again.out_dir) == _manifest_rows(reference.out_dir)
