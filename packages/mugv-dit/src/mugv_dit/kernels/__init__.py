"""Fused element-wise ops of MUG-DiT, each with a torch fp32 reference and a Triton kernel.

``backend`` is "torch" (the fp32 reference in `reference.py`; CPU default), "triton"
(the kernel files; CUDA, or CPU with ``TRITON_INTERPRET=1``) or "auto" (triton for CUDA
tensors when triton is installed, torch otherwise). Triton modules are imported on first
use, so the package imports without triton and the interpreter switch can be set late.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

from mugv_dit.kernels.reference import (
    gated_residual_ref,
    modulated_layernorm_ref,
    qk_norm_rope_ref,
)

Backend = Literal["auto", "torch", "triton"]


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_kernel_backend(backend: str, device: torch.device) -> str:
    """Turn "auto" into "triton" (CUDA + triton installed) or "torch"; check the others."""
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "torch":
        return backend
    if backend == "triton":
        if not triton_available():
            raise ImportError(
                "kernel_backend='triton' needs the triton package (pip install triton; "
                "Linux x86-64); use kernel_backend='torch' or 'auto'"
            )
        return backend
    raise ValueError(f"kernel backend {backend!r} is not one of 'auto', 'torch', 'triton'")


def modulated_layernorm(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    use_t: torch.Tensor,
    *,
    eps: float = 1e-6,
    backend: Backend = "torch",
) -> torch.Tensor:
    """LayerNorm (no affine) + AdaLN modulation, choosing t or t0 per token (§A.4, §A.5).

    x: [B, L, D]; shift, scale: [B, 2, D] with index 0 the current timestep and index 1
    timestep 0; use_t: [B, L] bool, True for generated tokens. Returns [B, L, D], x.dtype:
    ``LN(x) * (1 + scale[use_t ? 0 : 1]) + shift[use_t ? 0 : 1]``.
    """
    if resolve_kernel_backend(backend, x.device) == "triton":
        from mugv_dit.kernels.modulate import modulated_layernorm_triton

        return modulated_layernorm_triton(x, shift, scale, use_t, eps)
    return modulated_layernorm_ref(x, shift, scale, use_t, eps)


def gated_residual(
    residual: torch.Tensor,
    branch: torch.Tensor,
    gate: torch.Tensor,
    use_t: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: Backend = "torch",
) -> torch.Tensor:
    """``residual + gate[use_t ? 0 : 1] * (branch + bias)`` (paper §5.3 fused kernel).

    residual, branch: [B, L, D]; gate: [B, 2, D]; use_t: [B, L] bool; bias: [D] or None.
    Returns [B, L, D] in residual.dtype.
    """
    if resolve_kernel_backend(backend, residual.device) == "triton":
        from mugv_dit.kernels.gated_residual import gated_residual_triton

        return gated_residual_triton(residual, branch, gate, use_t, bias)
    return gated_residual_ref(residual, branch, gate, use_t, bias)


def qk_norm_rope(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    eps: float = 1e-6,
    backend: Backend = "torch",
) -> torch.Tensor:
    """q/k RMSNorm over the head dim (fp32, weight [K]) then interleaved 3D RoPE (§A.6, §A.8).

    x: [B, L, N, K]; weight: [K]; cos, sin: [B or 1, L, K/2] from `rope_3d_freqs`.
    Returns [B, L, N, K] in x.dtype.
    """
    if resolve_kernel_backend(backend, x.device) == "triton":
        from mugv_dit.kernels.qk_norm_rope import qk_norm_rope_triton

        return qk_norm_rope_triton(x, weight, cos, sin, eps)
    return qk_norm_rope_ref(x, weight, cos, sin, eps)


__all__ = [
    "gated_residual",
    "modulated_layernorm",
    "qk_norm_rope",
    "resolve_kernel_backend",
    "triton_available",
]
