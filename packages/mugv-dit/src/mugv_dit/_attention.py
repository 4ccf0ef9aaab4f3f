"""Attention backends behind one interface: torch SDPA, flash-attn, xformers.

Dimension legend: B batch, L query tokens, S text tokens, N heads, K head dim.

Self-attention is full bidirectional attention without a mask (reference §A.6). Cross
attention is packed variable-length attention: each sample's queries attend only to its
own valid caption tokens (§A.7). SDPA expresses that with a boolean key mask; flash-attn
(varlen) and xformers (block-diagonal mask) pack the valid tokens, as the official code does.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "flash", "xformers")
_MODULE = {"flash": "flash_attn", "xformers": "xformers"}
_EXTRA = {"flash": "flash", "xformers": "xformers"}


def check_attention_backend(backend: str) -> None:
    """Raise a clear error when ``backend`` is unknown or its package is not installed."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r} is not one of {BACKENDS}")
    if backend != "sdpa" and importlib.util.find_spec(_MODULE[backend]) is None:
        raise ImportError(
            f"attention_backend={backend!r} needs the {_MODULE[backend]} package, which is not "
            f"installed; install it with `pip install mugv-dit[{_EXTRA[backend]}]` (CUDA only) "
            "or use attention_backend='sdpa'"
        )


def _check_cuda_half(backend: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type != "cuda" or t.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"attention backend {backend!r} runs only on CUDA tensors in float16/bfloat16, "
                f"got {t.dtype} on {t.device.type}; use attention_backend='sdpa' here"
            )


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str = "sdpa"
) -> torch.Tensor:
    """Full (unmasked) attention with scale K^-0.5.

    q, k, v: [B, L, N, K]. Returns [B, L, N, K].
    """
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return out.transpose(1, 2)
    check_attention_backend(backend)
    _check_cuda_half(backend, q, k, v)
    if backend == "flash":
        from flash_attn import flash_attn_func

        return flash_attn_func(q, k, v, softmax_scale=q.shape[-1] ** -0.5)
    import xformers.ops as xops

    return xops.memory_efficient_attention(q, k, v)


def _pack(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, S, N, K] -> [sum of valid S, N, K]."""
    flat = t.flatten(0, 1)
    return flat if mask is None else flat[mask.flatten()]


def cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_mask: torch.Tensor | None = None,
    *,
    backend: str = "sdpa",
) -> torch.Tensor:
    """Variable-length cross-attention: sample b's queries see only its valid keys.

    q: [B, L, N, K]; k, v: [B, S, N, K]; kv_mask: [B, S] bool (True = valid caption token)
    or None (all valid). Every sample needs at least one valid token. Returns [B, L, N, K].
    """
    B, L, N, K = q.shape
    if backend == "sdpa":
        mask = None if kv_mask is None else kv_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        )
        return out.transpose(1, 2)
    check_attention_backend(backend)
    _check_cuda_half(backend, q, k, v)
    S = k.shape[1]
    lens = (
        torch.full((B,), S, dtype=torch.int32, device=q.device)
        if kv_mask is None
        else kv_mask.sum(1, dtype=torch.int32)
    )
    kp, vp = _pack(k, kv_mask), _pack(v, kv_mask)
    if backend == "flash":
        from flash_attn import flash_attn_varlen_func

        cu_q = torch.arange(0, (B + 1) * L, L, dtype=torch.int32, device=q.device)
        cu_k = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))
        out = flash_attn_varlen_func(
            q.reshape(B * L, N, K), kp, vp, cu_q, cu_k, L, int(lens.max()),
            softmax_scale=K**-0.5,
        )  # fmt: skip
        return out.view(B, L, N, K)
    import xformers.ops as xops

    bias = xops.fmha.BlockDiagonalMask.from_seqlens([L] * B, lens.tolist())
    out = xops.memory_efficient_attention(
        q.reshape(1, B * L, N, K), kp[None], vp[None], attn_bias=bias
    )
    return out.view(B, L, N, K)
