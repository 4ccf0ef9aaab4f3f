"""DPO, KTO and LoRA through ``train()`` end to end, and the CLI under ``torchrun``."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_shards, tiny_train_config


def _mean(xs):
    return sum(xs) / len(xs)


def _spy_reference(monkeypatch):
    """Capture the reference model (the forward-only run_pipeline call) of a DPO/KTO run."""
    import mugv_train.loop as loop

    seen = {}
    real = loop.forward_only

    def spy(chunks, microbatches, loss_fn):
        seen.setdefault("ref", chunks[0])
        return real(chunks, microbatches, loss_fn)

    monkeypatch.setattr(loop, "forward_only", spy)
    return seen


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_preference_tuning_end_to_end(megatron_tp1, tmp_path, monkeypatch, kind):
    import mugv_train.loop as loop
    from mugv_train import ObjectiveConfig, train
    from mugv_train.parallel import dit_to_megatron

    torch.set_num_threads(1)
    shards = tiny_shards(tmp_path / "shards", labels=True)
    cfg = tiny_train_config(shards, tmp_path / "out", steps=24)
    cfg = dataclasses.replace(cfg, objective=ObjectiveConfig(kind=kind, beta=5.0, sft_weight=1.0))
    seen = _spy_reference(monkeypatch)
    result = train(cfg)
    losses = result.losses
    assert len(losses) == 24 and all(map(torch.isfinite, map(torch.tensor, losses)))
    assert _mean(losses[-6:]) < 0.8 * _mean(losses[:6]), (losses[:6], losses[-6:])
    # the reference model is frozen at the initial weights, the policy moved away from them
    ref = seen["ref"]
    assert not any(p.requires_grad for p in ref.parameters())
    initial = dit_to_megatron(loop._initial_dit_state(cfg), cfg.model.num_heads)
    ref_state = ref.state_dict()
    for k, v in initial.items():
        assert torch.equal(ref_state[k], v), k
    from mugv_dit import MUGDiT

    exported = MUGDiT.from_pretrained(str(result.export_dir)).state_dict()
    start = loop._initial_dit_state(cfg)
    assert any(not torch.equal(exported[k], start[k]) for k in start)


def test_kto_without_labels_is_a_clear_error(megatron_tp1, tmp_path):
    from mugv_train import ObjectiveConfig, train

    shards = tiny_shards(tmp_path / "shards")
    cfg = tiny_train_config(shards, tmp_path / "out", steps=2)
    cfg = dataclasses.replace(cfg, objective=ObjectiveConfig(kind="kto", beta=5.0))
    with pytest.raises(ValueError, match="'label' column"):
        train(cfg)


def test_lora_trains_only_the_adapters(megatron_tp1, tmp_path):
    import mugv_train.loop as loop
    from mugv_dit import MUGDiT
    from mugv_train import LoRAConfig, train

    torch.set_num_threads(1)
    shards = tiny_shards(tmp_path / "shards")
    cfg = tiny_train_config(shards, tmp_path / "out", steps=40, lora=LoRAConfig(rank=4, alpha=8))
    # LoRA adapts a trained model (a fresh one has a zero final layer, frozen here): start
    # from a randomised "pretrained" mugv-dit folder
    torch.manual_seed(0)
    base = MUGDiT(cfg.model)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    cfg = dataclasses.replace(cfg, init_from=str(base.save_pretrained(tmp_path / "base")))
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=1e-2, min_lr=1e-3))
    result = train(cfg)
    losses = result.losses
    assert _mean(losses[-8:]) < 0.8 * _mean(losses[:8]), (losses[:8], losses[-8:])
    start = loop._initial_dit_state(cfg)
    merged = MUGDiT.from_pretrained(str(result.export_dir)).state_dict()
    adapted = (".attn.qkv.weight", ".proj.weight", ".q_linear.weight", ".kv_linear.weight",
               ".fc1.weight", ".fc2.weight")  # fmt: skip
    changed = {k for k in start if not torch.equal(merged[k], start[k])}
    block_linears = {k for k in start if k.startswith("blocks.") and k.endswith(adapted)}
    # only the adapted block linears (linear_proj: self- and cross-attention) moved (the merged low-rank delta); biases, norms,
    # embedders, start/end tokens and the final layer are frozen
    assert changed == block_linears, sorted(changed ^ block_linears)[:5]
    for k in block_linears:  # each merged delta has rank <= 4
        delta = (merged[k] - start[k]).double()
        assert torch.linalg.matrix_rank(delta, atol=1e-6).item() <= 4, k


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_cli_under_torchrun_pipeline_parallel_matches_one_process(megatron_tp1, tmp_path):
    """`torchrun --nproc-per-node 2 -m mugv_train.cli` with PP = 2 (gloo, Megatron's 1F1B
    schedule under mugv-testing's CUDA shim) and two micro-batches per step: the losses
    equal the single-process run's, so every stage drew the same tasks, timesteps and noise
    and the schedule accumulated the right gradients."""
    from mugv_train import apply_overrides, train
    from mugv_train.recipes import debug

    torch.set_num_threads(1)
    shards = tiny_shards(tmp_path / "shards")
    overrides = [
        "train_steps=4", "model.hidden_size=48", "model.num_heads=2", "model.depth=2",
        "model.in_channels=4", "model.text_dim=16", "data.null_text_tokens=8",
        "log.tensorboard=false", "log.progress=false", "checkpoint.save_every=2",
        "data.microbatches=2",  # two micro-batches in flight in the pipeline schedule
    ]  # fmt: skip
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "pp2"
    with socket.socket() as sock:  # torchrun's static rendezvous needs a concrete port
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", port, "-m"]
    cmd += ["mugv_testing._mcore_shim", "mugv_train.cli"]
    cmd += ["debug", "--shards", str(shards), "--out", str(out), *overrides]
    proc = subprocess.run(
        [*cmd, "parallel.pipeline_parallel=2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "exported mugv-dit weights" in proc.stdout
    pp_losses = [h["loss"] for h in json.loads((out / "history.json").read_text())]
    assert (out / "checkpoints" / "step_00000004" / "model_tp0_pp1.pt").exists()

    cfg = apply_overrides(debug(str(shards), str(tmp_path / "pp1")), overrides)
    ref = train(cfg).losses
    assert pp_losses == pytest.approx(ref, rel=1e-5, abs=1e-7)
