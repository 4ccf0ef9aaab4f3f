"""Model FLOPs of MUG-DiT for MFU (the DiT formula of the official trainer, reference §G.4).

Per block and sample, forward, with L video tokens, S caption tokens, D hidden:
    self-attention  6 L D^2 (qkv) + 4 L^2 D (scores, values) + 2 L D^2 (proj)
    cross-attention 2 L D^2 (q) + 4 S D^2 (kv) + 4 L S D + 2 L D^2 (proj)
    MLP             2 L D (r D) 2            (r = mlp_ratio)
Training = 3 x forward (forward + backward), 4 x with full activation recompute.
"""

from __future__ import annotations

import torch

from mugv_dit import DiTConfig

#: Dense bf16 peak of the GPUs we plan for (FLOP/s).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def dit_forward_flops(config: DiTConfig, tokens: int, text_tokens: int) -> float:
    """Forward FLOPs of one sample with ``tokens`` video tokens (start/end included by caller)."""
    L, S, D = float(tokens + 2), float(text_tokens), float(config.hidden_size)
    per_block = (
        6 * L * D * D + 4 * L * L * D + 2 * L * D * D
        + 2 * L * D * D + 4 * S * D * D + 4 * L * S * D + 2 * L * D * D
        + 4 * L * D * config.mlp_hidden_size
    )  # fmt: skip
    return config.depth * per_block


def dit_flops_per_sample(
    config: DiTConfig, tokens: int, text_tokens: int, *, recompute: bool = False
) -> float:
    """Training FLOPs (forward + backward, + recompute) of one sample."""
    return (4.0 if recompute else 3.0) * dit_forward_flops(config, tokens, text_tokens)


def peak_flops(device: torch.device) -> float:
    """Peak dense bf16 FLOP/s of one device (0 on CPU: MFU is not reported there)."""
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), 0.0)
