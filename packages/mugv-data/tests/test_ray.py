"""The Ray engine: same manifest as the local engine, model-stage actors, faults.

One local Ray instance serves the whole module (starting Ray costs tens of seconds here).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mugv_data import CurationConfig, ModelLoadError, Models, curate

ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra")

_CLI = [sys.executable, "-m", "mugv_data.cli"]


@pytest.fixture(scope="module")
def ray_instance():
    from mugv_data._ray_engine import _start_local_ray

    if not ray.is_initialized():
        _start_local_ray(ray, 2)
    # The stand-in models below live in this test module, which Ray's workers cannot
    # import: ship them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def _manifest_rows(path: Path) -> list[dict]:
    rows = pq.read_table(path / "manifest.parquet").to_pylist()
    for r in rows:
        r.pop("path")  # absolute input path: the same here, but not part of the comparison
    return rows


def _cfg(**ray_cfg) -> CurationConfig:
    base = CurationConfig.preset("synthetic")
    return CurationConfig.from_dict({"workers": 2, "ray": ray_cfg}, base=base)


def _brightness(frames: list) -> float:
    """A deterministic stand-in aesthetic model: mean pixel value / 40 (scores ~2-4)."""
    return float(np.mean([f.mean() for f in frames]) / 40.0)


class BatchedBrightness:
    """The stand-in model with a batch method, recording the batch sizes it saw."""

    def __call__(self, frames):
        return _brightness(frames)

    def batch(self, clips):
        return [_brightness(f) for f in clips]


class DiesOnce:
    """Kills its process (the actor) the first time it runs anywhere, mid-block."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, frames):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return _brightness(frames)


def test_ray_engine_matches_local(ray_instance, synthetic_set, curated, tmp_path):
    root, _ = synthetic_set
    reference, _ = curated
    res = curate(root, tmp_path / "ray", _cfg(videos_per_block=3), engine="ray")
    assert res.processed == reference.counts["videos"]
    assert _manifest_rows(res.out_dir) == _manifest_rows(reference.out_dir)
    a = pq.read_table(res.videos).drop(["path"])
    assert a.equals(pq.read_table(reference.videos).drop(["path"]))
    # Every video got its record file as its block finished; a rerun does nothing.
    assert len(list((res.out_dir / "records").glob("*.json"))) == reference.counts["videos"]
    again = curate(root, tmp_path / "ray", _cfg(videos_per_block=3), engine="ray")
    assert again.processed == 0
    assert _manifest_rows(again.out_dir) == _manifest_rows(reference.out_dir)


def _small_inputs(truth, dst: Path, names=("good_00", "good_01", "cuts", "fade")) -> Path:
    import shutil

    dst.mkdir()
    for n in names:
        shutil.copyfile(truth[n].path, dst / truth[n].path.name)
    return dst


def test_model_stage_actors_match_the_local_engine(ray_instance, synthetic_set, tmp_path):
    _root, truth = synthetic_set
    src = _small_inputs(truth, tmp_path / "in")
    cfg = CurationConfig.from_dict(
        {"default": {"aesthetic": {"min": 3.0}}, "model_batch_size": 3, "ray": {"model_actors": 2}},
        base=_cfg(),
    )
    models = Models(aesthetic=BatchedBrightness())
    ray_res = curate(src, tmp_path / "ray", cfg, engine="ray", models=models)
    local = curate(src, tmp_path / "local", cfg, models=Models(aesthetic=_brightness))
    rows = _manifest_rows(ray_res.out_dir)
    assert rows == _manifest_rows(local.out_dir)
    scored = [r for r in rows if r["aesthetic"] is not None]
    assert len(scored) >= 5
    assert {r["stage"] for r in rows if r["status"] == "dropped"} >= {"aesthetic"}


def test_actor_killed_mid_block_is_retried(ray_instance, synthetic_set, tmp_path):
    _root, truth = synthetic_set
    src = _small_inputs(truth, tmp_path / "in")
    marker = tmp_path / "died"
    cfg = CurationConfig.from_dict({"default": {"aesthetic": {"min": 3.0}}}, base=_cfg())
    res = curate(
        src, tmp_path / "ray", cfg, engine="ray", models=Models(aesthetic=DiesOnce(str(marker)))
    )
    assert marker.exists()  # an actor really died in the middle of a block
    local = curate(src, tmp_path / "local", cfg, models=Models(aesthetic=_brightness))
    assert _manifest_rows(res.out_dir) == _manifest_rows(local.out_dir)


def test_model_that_fails_to_load_stops_before_any_record(ray_instance, synthetic_set, tmp_path):
    _root, truth = synthetic_set
    src = _small_inputs(truth, tmp_path / "in", names=("good_00",))
    bad = tmp_path / "clip"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    head = tmp_path / "head.safetensors"
    head.write_bytes(b"\0" * 16)
    on = {"enabled": True, "clip_model": str(bad), "head_weights": str(head)}
    cfg = CurationConfig.from_dict({"default": {"aesthetic": on}}, base=_cfg())
    with pytest.raises(
        ModelLoadError, match=r"aesthetic model .*failed to load.*aesthetic\.clip_model"
    ):
        curate(src, tmp_path / "ray", cfg, engine="ray")
    assert not list((tmp_path / "ray" / "records").glob("*.json"))
    # A path that does not exist is refused before any work, by either engine.
    gone = CurationConfig.from_dict(
        {"default": {"aesthetic": {**on, "clip_model": str(tmp_path / "nope")}}}, base=_cfg()
    )
    for engine in ("local", "ray"):
        with pytest.raises(ModelLoadError, match=r"aesthetic\.clip_model: no file or folder"):
            curate(src, tmp_path / f"gone_{engine}", gone, engine=engine)
        assert not list((tmp_path / f"gone_{engine}" / "records").glob("*.json"))


def test_unreachable_cluster_is_a_clear_error(tmp_path, synthetic_set):
    from mugv_data._ray_engine import RayClusterError, _check_reachable

    with pytest.raises(RayClusterError, match=r"cannot reach the Ray cluster at '127\.0\.0\.1:1'"):
        _check_reachable("127.0.0.1:1", timeout=2)
    with pytest.raises(RayClusterError, match="not host:port"):
        _check_reachable("localhost")
    # The command line: one line, exit 2, no traceback, no local fallback.
    root, _ = synthetic_set
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    res = subprocess.run(
        [*_CLI, "curate", str(root), "--out", str(tmp_path / "o"), "--engine", "ray", "--quiet"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("mugv-data: error: cannot reach the Ray cluster at '127.0.0.1:1'")
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # a second Ray instance in a subprocess
@pytest.mark.timeout(600)
def test_ray_driver_killed_and_resumed_equals_uninterrupted(
    ray_instance, synthetic_set, curated, tmp_path
):
    root, _ = synthetic_set
    reference, _ = curated
    out = tmp_path / "run"
    records = out / "records"
    cmd = [*_CLI, "curate", str(root), "--out", str(out), "--preset", "synthetic",
           "--engine", "ray", "--workers", "2", "--quiet"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    t0 = time.time()
    try:
        while not (records.exists() and len(list(records.glob("*.json"))) >= 3):
            if proc.poll() is not None:
                pytest.fail(f"finished before the kill: {proc.stderr.read()[-2000:]!r}")
            assert time.time() - t0 < 300, "no progress"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        # The driver's own Ray (raylet, workers) lives in the session started above.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "manifest.parquet").exists()  # really killed mid-run
    done_before = len(list(records.glob("*.json")))
    assert done_before < reference.counts["videos"]
    assert not list(records.glob(".*.tmp"))
    res = curate(root, out, _cfg(), engine="ray")
    assert res.processed == reference.counts["videos"] - done_before
    assert _manifest_rows(out) == _manifest_rows(reference.out_dir)
