"""Online EMA of the weights and the paper's post-hoc EMA over saved checkpoints.

Post-hoc EMA (paper §4.2.3): an exponentially decayed ensemble of checkpoints,
    w = sum_i a_i W_i / sum_i a_i,   a_i = gamma^(n - 1 - i)   (i = 0 oldest .. n-1 newest),
which approximates an EMA of the run without having chosen its decay in advance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


class OnlineEMA:
    """Float32 shadow copy: ema = decay * ema + (1 - decay) * w, every ``interval`` steps."""

    def __init__(self, model: nn.Module, decay: float, interval: int = 1) -> None:
        self.decay, self.interval = decay, interval
        self.shadow = {
            k: p.detach().float().clone() for k, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if (step + 1) % self.interval:
            return
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].mul_(self.decay).add_(p.detach().float(), alpha=1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            raise ValueError("EMA state does not match the model's trainable parameters")
        self.shadow = {k: v.clone().float() for k, v in state.items()}


def post_hoc_ema(
    states: Sequence[dict[str, torch.Tensor]], gamma: float
) -> dict[str, torch.Tensor]:
    """Exponentially decayed average of ``states`` (oldest first) with ratio ``gamma`` in (0, 1]."""
    if not states:
        raise ValueError("post_hoc_ema needs at least one checkpoint")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    n = len(states)
    weights = [gamma ** (n - 1 - i) for i in range(n)]
    total = sum(weights)
    keys = states[0].keys()
    for i, s in enumerate(states[1:], 1):
        if s.keys() != keys:
            raise ValueError(f"checkpoint {i} has different tensors from checkpoint 0")
    out = {}
    for k in keys:
        if not torch.is_floating_point(states[0][k]):
            out[k] = states[-1][k].clone()
            continue
        acc = torch.zeros_like(states[0][k], dtype=torch.float64)
        for w, s in zip(weights, states):
            acc += (w / total) * s[k].double()
        out[k] = acc.to(states[0][k].dtype)
    return out


def post_hoc_ema_from_exports(
    dirs: Sequence[str | Path], gamma: float, out_dir: str | Path
) -> Path:
    """Average mugv-dit folders (``save_pretrained`` layout, oldest first) into ``out_dir``."""
    from mugv_dit import MUGDiT

    models = [MUGDiT.from_pretrained(str(d)) for d in dirs]
    merged = post_hoc_ema([m.state_dict() for m in models], gamma)
    models[-1].load_state_dict(merged)
    models[-1].save_pretrained(out_dir)
    return Path(out_dir)
