"""Checkpoint files never execute code, and resume is strict (issue 14).

A pickle payload (an object whose ``__reduce__`` calls ``exec``, which would create a marker
file) is planted in each file a resume reads: model, optimizer and trainer state. The
payload is live (an unrestricted ``torch.load`` runs it); the resume refuses it with
:class:`UnsafeCheckpointError` naming the file, and the marker never appears.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_shards, tiny_train_config


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.fixture(scope="module")
def run_with_checkpoint(tmp_path_factory):
    """A 2-step run with one complete checkpoint (step 2), shared by the cases below."""
    from mugv_train import ParallelConfig, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    shards = tiny_shards(root / "shards")
    cfg = tiny_train_config(shards, root / "run", steps=2)
    from mugv_train.parallel import init_distributed

    init_distributed(ParallelConfig())
    train(cfg)
    return shards, root / "run"


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst / "checkpoints" / "step_00000002"


@pytest.mark.parametrize("name", ["model_tp0_pp0.pt", "optim_tp0_pp0_dp0_cp0.pt", "trainer_dp0.pt"])
def test_planted_pickle_payload_never_runs(run_with_checkpoint, tmp_path, name):
    from mugv_train import UnsafeCheckpointError, train

    shards, run = run_with_checkpoint
    step = _copy_run(run, tmp_path / "run")
    marker = tmp_path / "pwned"
    torch.save(_Payload(marker), step / name)
    # the payload is live: an unrestricted load would run it
    probe = tmp_path / "probe.pt"
    torch.save(_Payload(tmp_path / "probe_marker"), probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe_marker").exists()

    with pytest.raises(UnsafeCheckpointError, match=rf"{name}.*refused unread"):
        train(tiny_train_config(shards, tmp_path / "run", steps=4))
    assert not marker.exists()


def test_resume_with_a_missing_tensor_names_it(run_with_checkpoint, tmp_path):
    from mugv_train import CheckpointMismatchError, train

    shards, run = run_with_checkpoint
    step = _copy_run(run, tmp_path / "run")
    state = torch.load(step / "model_tp0_pp0.pt", weights_only=True)
    dropped = "decoder.layers.1.mlp.linear_fc2.weight"
    del state[dropped]
    state["decoder.layers.9.bogus"] = torch.zeros(1)
    torch.save(state, step / "model_tp0_pp0.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        train(tiny_train_config(shards, tmp_path / "run", steps=4))
    assert info.value.missing == [dropped]
    assert info.value.unexpected == ["decoder.layers.9.bogus"]
    assert dropped in str(info.value)


def test_truncated_checkpoint_file_is_named(run_with_checkpoint, tmp_path):
    from mugv_train import CheckpointError, UnsafeCheckpointError, train

    shards, run = run_with_checkpoint
    step = _copy_run(run, tmp_path / "run")
    data = (step / "optim_tp0_pp0_dp0_cp0.pt").read_bytes()
    (step / "optim_tp0_pp0_dp0_cp0.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"optim_tp0_pp0_dp0_cp0\.pt cannot be read") as info:
        train(tiny_train_config(shards, tmp_path / "run", steps=4))
    assert not isinstance(info.value, UnsafeCheckpointError)
