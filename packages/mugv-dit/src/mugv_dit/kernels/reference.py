"""Plain-PyTorch fp32 references of the fused ops; what CPU runs by default.

Dimension legend: B batch, L tokens, D hidden, N heads, K head dim, H = K / 2 complex pairs.

Every op computes in float32 (float64 inputs stay float64) and returns the input dtype,
so a Triton kernel (which also accumulates in float32 and rounds once) is compared against
exactly these functions.
"""

from __future__ import annotations

import torch


def _acc(x: torch.Tensor) -> torch.Tensor:
    """Accumulation precision: float32, or float64 for float64 inputs."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def select_modulation(mod: torch.Tensor, use_t: torch.Tensor) -> torch.Tensor:
    """Per-token choice between two modulation vectors (reference §A.4).

    mod: [B, 2, D], index 0 = the current timestep t, index 1 = timestep 0.
    use_t: [B, L] bool, True where a token is generated (uses t).
    Returns [B, L, D] in float32 (float64 for float64 input).
    """
    mod = _acc(mod)
    return torch.where(use_t[..., None], mod[:, 0:1], mod[:, 1:2])


def modulated_layernorm_ref(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    use_t: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """LN(x) * (1 + scale) + shift, LN without affine, shift/scale chosen per token.

    x: [B, L, D]; shift, scale: [B, 2, D]; use_t: [B, L] bool. Returns [B, L, D] (x.dtype).
    """
    xf = _acc(x)
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).pow(2).mean(-1, keepdim=True)
    xhat = (xf - mean) * torch.rsqrt(var + eps)
    y = xhat * (1 + select_modulation(scale, use_t)) + select_modulation(shift, use_t)
    return y.to(x.dtype)


def gated_residual_ref(
    residual: torch.Tensor,
    branch: torch.Tensor,
    gate: torch.Tensor,
    use_t: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """residual + gate * (branch + bias), gate chosen per token.

    residual, branch: [B, L, D]; gate: [B, 2, D]; use_t: [B, L] bool; bias: [D] or None.
    Returns [B, L, D] (residual.dtype).
    """
    b = _acc(branch)
    if bias is not None:
        b = b + _acc(bias)
    return (_acc(residual) + select_modulation(gate, use_t) * b).to(residual.dtype)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim in float32, times ``weight``; returns float32."""
    xf = _acc(x)
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * _acc(weight)


def apply_rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2j, 2j+1) of x by the angle whose cos/sin are given.

    x: [B, L, N, K]; cos, sin: [B or 1, L, K/2]. Returns float32 [B, L, N, K].
    """
    xf = _acc(x).unflatten(-1, (-1, 2))
    even, odd = xf[..., 0], xf[..., 1]
    c = _acc(cos)[:, :, None, :]
    s = _acc(sin)[:, :, None, :]
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2)


def qk_norm_rope_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """RMSNorm over the head dim (weight [K]) then 3D RoPE, for q or k.

    x: [B, L, N, K]; weight: [K]; cos, sin: [B or 1, L, K/2]. Returns [B, L, N, K] (x.dtype).
    """
    return apply_rope_ref(rms_norm_ref(x, weight, eps), cos, sin).to(x.dtype)
