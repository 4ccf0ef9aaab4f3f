"""End-to-end training on CPU: loss falls, kill-and-resume is bitwise, saves are atomic."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_shards, tiny_train_config

TESTS = Path(__file__).parent


def test_loss_falls_and_exports_mugv_dit(megatron_tp1, tmp_path):
    from mugv_dit import MUGDiT
    from mugv_train import EMAConfig, train

    torch.set_num_threads(1)
    shards = tiny_shards(tmp_path / "shards")
    cfg = tiny_train_config(shards, tmp_path / "out", steps=60, ema=EMAConfig(decay=0.9))
    result = train(cfg)
    losses = result.losses
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.75 * first, f"loss did not fall: {first:.4f} -> {last:.4f}"
    dit = MUGDiT.from_pretrained(str(result.export_dir))
    assert dit.config.hidden_size == cfg.model.hidden_size
    ema = MUGDiT.from_pretrained(str(result.ema_export_dir))
    diff = sum((a - b).abs().sum() for a, b in zip(dit.parameters(), ema.parameters()))
    assert diff > 0  # the EMA export is a different (averaged) model
    result.plot(tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0


_KILLED_RUN = textwrap.dedent(
    """
    import sys, time, warnings
    warnings.filterwarnings("ignore")
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import mugv_train.loop as loop
    from train_helpers import tiny_train_config
    real_lr_at = loop.lr_at
    def slow_lr_at(step, total, optim):  # numerics unchanged; leaves time to be killed
        if step >= 4:
            time.sleep(2.0)
        return real_lr_at(step, total, optim)
    loop.lr_at = slow_lr_at
    loop.train(tiny_train_config({shards!r}, {out!r}, steps=10))
    """
)


@pytest.mark.slow
def test_sigkill_and_resume_gives_bitwise_equal_losses(megatron_tp1, tmp_path):
    from mugv_train import train

    torch.set_num_threads(1)
    shards = tiny_shards(tmp_path / "shards")
    reference = train(tiny_train_config(shards, tmp_path / "ref", steps=10)).losses

    out = tmp_path / "killed"
    script = _KILLED_RUN.format(tests=str(TESTS), shards=str(shards), out=str(out))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 180
        while not (out / "checkpoints" / "step_00000004" / "meta.json").exists():
            if proc.poll() is not None:
                raise AssertionError(
                    f"training subprocess ended early:\n{proc.stderr.read().decode()[-3000:]}"
                )
            if time.time() > deadline:
                raise AssertionError("no checkpoint within 180 s")
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "checkpoints" / "step_00000010").exists()

    resumed = train(tiny_train_config(shards, out, steps=10)).losses
    assert resumed == reference  # bitwise: same floats, not approximately


def test_disk_full_during_save_keeps_last_checkpoint(megatron_tp1, tmp_path, monkeypatch):
    import mugv_train.checkpointing as ck
    from mugv_train import CheckpointError, train

    shards = tiny_shards(tmp_path / "shards")
    cfg = tiny_train_config(shards, tmp_path / "out", steps=4)
    real_save = ck.atomic_torch_save
    calls = {"n": 0}

    def failing_save(obj, path):
        calls["n"] += 1
        if "step_00000004" in str(path):
            raise OSError(28, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(ck, "atomic_torch_save", failing_save)
    with pytest.raises(CheckpointError, match="last complete checkpoint"):
        train(cfg)
    root = tmp_path / "out" / "checkpoints"
    assert ck.latest_checkpoint(root).name == "step_00000002"
    assert not list(root.glob("*.partial"))
    monkeypatch.setattr(ck, "atomic_torch_save", real_save)
    # the run resumes from step 2 and finishes
    assert len(train(cfg).losses) == 4


def test_incompatible_checkpoint_is_named(megatron_tp1, tmp_path):
    from mugv_train import CheckpointError, train

    shards = tiny_shards(tmp_path / "shards")
    train(tiny_train_config(shards, tmp_path / "out", steps=2))
    other = tiny_train_config(shards, tmp_path / "out", steps=4)
    other = dataclasses.replace(other, model=other.model.replace(hidden_size=96, num_heads=4))
    with pytest.raises(CheckpointError, match="model"):
        train(other)


def test_nonfinite_losses_are_skipped_then_stop(megatron_tp1, tmp_path, monkeypatch):
    import mugv_train.loop as loop
    from mugv_train import NonFiniteLossError, train

    shards = tiny_shards(tmp_path / "shards")
    real = loop._objective

    def nan_loss(*args, **kwargs):
        loss, per = real(*args, **kwargs)
        return loss * float("nan"), per

    monkeypatch.setattr(loop, "_objective", nan_loss)
    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        train(tiny_train_config(shards, tmp_path / "out", steps=6, max_nonfinite_steps=3))


def test_exports_carry_the_null_caption_only_with_caption_dropout(megatron_tp1, tmp_path):
    """The null embedding caption dropout trained against travels with both exports (for
    CFG at inference); it is the seed's randn / sqrt(E) (official drop_emb, §G.3)."""
    from safetensors.torch import load_file

    from mugv_train import EMAConfig, ObjectiveConfig, null_text_embedding, train
    from mugv_train.loop import NULL_TEXT_FILE

    torch.set_num_threads(1)
    shards = tiny_shards(tmp_path / "shards")
    cfg = tiny_train_config(
        shards, tmp_path / "drop", steps=2, ema=EMAConfig(decay=0.9),
        objective=ObjectiveConfig(caption_dropout=0.5),
    )  # fmt: skip
    result = train(cfg)
    expected = null_text_embedding(cfg)
    assert expected.shape == (cfg.data.null_text_tokens, cfg.model.text_dim)
    g = torch.Generator().manual_seed(cfg.seed)
    independent = torch.randn(8, 16, generator=g) / 4.0  # E = 16
    torch.testing.assert_close(expected, independent, rtol=0, atol=0)
    for folder in (result.export_dir, result.ema_export_dir):
        saved = load_file(str(Path(folder) / NULL_TEXT_FILE))["null_text"]
        torch.testing.assert_close(saved, expected, rtol=0, atol=0)
    plain = train(tiny_train_config(shards, tmp_path / "plain", steps=2))
    assert not (Path(plain.export_dir) / NULL_TEXT_FILE).exists()
