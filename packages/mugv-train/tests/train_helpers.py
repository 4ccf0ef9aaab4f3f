"""Helpers shared by the mugv-train tests (module name kept unique across the workspace)."""

from __future__ import annotations

import torch


def tiny_dit_config(**overrides):
    from mugv_dit import DiTConfig

    base = dict(depth=2, hidden_size=48, num_heads=2, in_channels=4, text_dim=16)
    base.update(overrides)
    return DiTConfig(**base)


def tiny_inputs(cfg, b=2, t=3, h=6, w=4, s=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, t, h, w, generator=g)
    timestep = torch.tensor([37.0, 810.0][:b])
    text = torch.randn(b, s, cfg.text_dim, generator=g)
    text_mask = torch.ones(b, s, dtype=torch.bool)
    text_mask[0, 3:] = False
    fps = torch.tensor([24.0, 30.0][:b])
    x_mask = torch.ones(b, t, dtype=torch.bool)
    x_mask[0, 0] = False
    return dict(x=x, timestep=timestep, text=text, text_mask=text_mask, fps=fps, x_mask=x_mask)


def tiny_train_config(shards, out, steps=8, **overrides):
    """A tiny flow-matching run on CPU (fast: 48-wide DiT, 16-d captions)."""
    import dataclasses

    from mugv_train.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, TrainConfig

    cfg = TrainConfig(
        model=tiny_dit_config(),
        output_dir=str(out),
        train_steps=steps,
        data=DataConfig(shards=str(shards), batch_size=2, prefetch=2, null_text_tokens=8),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=2, schedule="cosine", eps=1e-8),
        checkpoint=CheckpointConfig(save_every=2, keep_last=2),
        log=LogConfig(log_every=2, tensorboard=False, progress=False),
        seed=1,
    )
    return dataclasses.replace(cfg, **overrides)


def tiny_shards(root, **kw):
    from mugv_train.synthetic import write_synthetic_shards

    args = dict(num_samples=12, channels=4, frames=2, height=4, width=4, text_dim=16, text_tokens=3)
    args.update(kw)
    return write_synthetic_shards(root, **args)
