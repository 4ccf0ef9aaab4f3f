"""Fused q/k RMSNorm + 3D RoPE (reference §A.6, §A.8).

Maths, per token (b, l) and head n, with K head dims seen as H = K/2 interleaved pairs
(e_j, o_j) = (x[2j], x[2j+1])::

    r        = 1 / sqrt(mean_K(x^2) + eps)
    (e, o)  <- (e * r * w[2j], o * r * w[2j+1])                  # RMSNorm, weight [K]
    out[2j]   = e * cos[b, l, j] - o * sin[b, l, j]               # rotation by angle_j
    out[2j+1] = e * sin[b, l, j] + o * cos[b, l, j]

The angle table (cos, sin: [B or 1, L, H]) holds the [h | w | t] axis split of §A.8.
Backward: rotate dy back by -angle to get d(norm * w); then dw = sum over tokens and heads
of that times the normalised x, and dx = r * (dn - n * mean_K(dn * n)) with dn = d * w.

Layout: one program takes one token and a block of BLOCK_N heads (tuned: 48 heads run as
3 x 16, never padded to 64); x and dy are read through their strides, so q and k come
straight out of the fused qkv projection (a [B, L, 3, N, K] view) without a copy. Offsets
are 64-bit. The output and dx are contiguous [B, L, N, K].

Dimension legend: B batch, L tokens, N heads, K head dim, H = K / 2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mugv_dit.kernels._common import (
    BACKWARD_ROWS,
    check_triton_tensors,
    last_dim_unit,
    launch_guard,
    tuned,
)


# -- kernels ---------------------------------------------------------------------------
def _configs() -> list[triton.Config]:
    pairs = [(4, 4), (1, 1), (2, 2), (4, 2), (8, 4), (16, 4), (16, 8)]
    return tuned([triton.Config({"BLOCK_N": n}, num_warps=w) for n, w in pairs])


@triton.autotune(configs=_configs(), key=["N", "HALF"])
@triton.jit
def _qk_norm_rope_fwd(
    X, W, COS, SIN, OUT,
    L, N, HALF, sx_b, sx_l, sx_n, cs_batch_stride, eps,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)  # token (b, l)
    b = row // L
    tok = row % L
    heads = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
    pairs = tl.arange(0, BLOCK_H)[None, :]
    valid = (heads < N) & (pairs < HALF)
    K = 2 * HALF
    x_offs = b * sx_b + tok * sx_l + heads * sx_n + 2 * pairs
    e = tl.load(X + x_offs, mask=valid, other=0.0).to(tl.float32)
    o = tl.load(X + x_offs + 1, mask=valid, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(e * e + o * o, axis=1) / K + eps)
    pvalid = pairs < HALF
    we = tl.load(W + 2 * pairs, mask=pvalid, other=0.0).to(tl.float32)
    wo = tl.load(W + 2 * pairs + 1, mask=pvalid, other=0.0).to(tl.float32)
    cs_off = b * cs_batch_stride + tok * HALF + pairs
    c = tl.load(COS + cs_off, mask=pvalid, other=0.0).to(tl.float32)
    s = tl.load(SIN + cs_off, mask=pvalid, other=0.0).to(tl.float32)
    ye = e * rstd[:, None] * we
    yo = o * rstd[:, None] * wo
    out_offs = (row * N + heads) * K + 2 * pairs
    tl.store(OUT + out_offs, (ye * c - yo * s).to(OUT.dtype.element_ty), mask=valid)
    tl.store(OUT + out_offs + 1, (ye * s + yo * c).to(OUT.dtype.element_ty), mask=valid)


@triton.autotune(configs=_configs(), key=["N", "HALF"])
@triton.jit
def _qk_norm_rope_bwd(
    X, W, COS, SIN, DY, DX, DW_PART,
    L, N, HALF, n_rows, sx_b, sx_l, sx_n, sd_b, sd_l, sd_n, cs_batch_stride, eps, ROWS,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    chunk = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
    pairs = tl.arange(0, BLOCK_H)[None, :]
    valid = (heads < N) & (pairs < HALF)
    pvalid = pairs < HALF
    K = 2 * HALF
    we = tl.load(W + 2 * pairs, mask=pvalid, other=0.0).to(tl.float32)
    wo = tl.load(W + 2 * pairs + 1, mask=pvalid, other=0.0).to(tl.float32)
    dwe = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
    dwo = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
    r_start = chunk * ROWS
    r_end = tl.minimum(r_start + ROWS, n_rows)
    for i in range(0, r_end - r_start):
        row = r_start + i  # int64 (a bare loop variable may be 32-bit)
        b = row // L
        tok = row % L
        x_offs = b * sx_b + tok * sx_l + heads * sx_n + 2 * pairs
        e = tl.load(X + x_offs, mask=valid, other=0.0).to(tl.float32)
        o = tl.load(X + x_offs + 1, mask=valid, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(e * e + o * o, axis=1) / K + eps)
        ne = e * rstd[:, None]
        no = o * rstd[:, None]
        cs_off = b * cs_batch_stride + tok * HALF + pairs
        c = tl.load(COS + cs_off, mask=pvalid, other=0.0).to(tl.float32)
        s = tl.load(SIN + cs_off, mask=pvalid, other=0.0).to(tl.float32)
        dy_offs = b * sd_b + tok * sd_l + heads * sd_n + 2 * pairs
        gy_e = tl.load(DY + dy_offs, mask=valid, other=0.0).to(tl.float32)
        gy_o = tl.load(DY + dy_offs + 1, mask=valid, other=0.0).to(tl.float32)
        # inverse rotation: gradient w.r.t. the normalised, weighted (pre-RoPE) values
        ge = gy_e * c + gy_o * s
        go = gy_o * c - gy_e * s
        dwe += ge * ne
        dwo += go * no
        dne = ge * we
        dno = go * wo
        dot = tl.sum(dne * ne + dno * no, axis=1) / K
        dxe = (dne - ne * dot[:, None]) * rstd[:, None]
        dxo = (dno - no * dot[:, None]) * rstd[:, None]
        dx_offs = (row * N + heads) * K + 2 * pairs
        tl.store(DX + dx_offs, dxe.to(DX.dtype.element_ty), mask=valid)
        tl.store(DX + dx_offs + 1, dxo.to(DX.dtype.element_ty), mask=valid)
    # partial dW per (chunk, head): [n_chunks, N, K], summed in torch
    part = (chunk * N + heads) * K + 2 * pairs
    tl.store(DW_PART + part, dwe, mask=valid)
    tl.store(DW_PART + part + 1, dwo, mask=valid)


# -- launchers ---------------------------------------------------------------------------
def _forward(x, weight, cos, sin, eps):
    """x: [B, L, N, K] (unit last stride); weight: [K]; cos, sin: contiguous fp32 [B or 1, L, K/2]."""
    B, L, N, K = x.shape
    out = torch.empty((B, L, N, K), device=x.device, dtype=x.dtype)
    cs_stride = 0 if cos.shape[0] == 1 else L * (K // 2)
    grid = lambda meta: (B * L, triton.cdiv(N, meta["BLOCK_N"]))  # noqa: E731
    with launch_guard(x):
        _qk_norm_rope_fwd[grid](
            x, weight, cos, sin, out, L, N, K // 2, x.stride(0), x.stride(1), x.stride(2),
            cs_stride, eps, BLOCK_H=triton.next_power_of_2(K // 2),
        )  # fmt: skip
    return out


def _backward(x, weight, cos, sin, eps, dy):
    B, L, N, K = x.shape
    dx = torch.empty((B, L, N, K), device=x.device, dtype=x.dtype)
    n_rows = B * L
    n_chunks = triton.cdiv(n_rows, BACKWARD_ROWS)
    dw = torch.zeros(n_chunks, N, K, device=x.device, dtype=torch.float32)
    cs_stride = 0 if cos.shape[0] == 1 else L * (K // 2)
    grid = lambda meta: (n_chunks, triton.cdiv(N, meta["BLOCK_N"]))  # noqa: E731
    with launch_guard(x):
        _qk_norm_rope_bwd[grid](
            x, weight, cos, sin, dy, dx, dw, L, N, K // 2, n_rows,
            x.stride(0), x.stride(1), x.stride(2), dy.stride(0), dy.stride(1), dy.stride(2),
            cs_stride, eps, BACKWARD_ROWS, BLOCK_H=triton.next_power_of_2(K // 2),
        )  # fmt: skip
    return dx, dw.sum((0, 1))


# -- autograd (torch.library custom ops, so torch.compile traces through them) -----------
@torch.library.custom_op(
    "mugv_dit::qk_norm_rope_fwd",
    mutates_args=(),
    schema="(Tensor x, Tensor weight, Tensor cos, Tensor sin, float eps) -> Tensor",
)
def _fwd_op(x, weight, cos, sin, eps):
    return _forward(x, weight, cos, sin, eps)


@_fwd_op.register_fake
def _fwd_fake(x, weight, cos, sin, eps):
    return x.new_empty(x.shape)


@torch.library.custom_op(
    "mugv_dit::qk_norm_rope_bwd",
    mutates_args=(),
    schema="(Tensor x, Tensor weight, Tensor cos, Tensor sin, float eps, Tensor dy) -> (Tensor, Tensor)",
)
def _bwd_op(x, weight, cos, sin, eps, dy):
    return _backward(x, weight, cos, sin, eps, dy)


@_bwd_op.register_fake
def _bwd_fake(x, weight, cos, sin, eps, dy):
    return x.new_empty(x.shape), weight.new_empty(weight.shape, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, cos, sin, eps = inputs
    ctx.save_for_backward(x, weight, cos, sin)
    ctx.eps = eps


def _backward_rule(ctx, dy):
    x, weight, cos, sin = ctx.saved_tensors
    dx, dw = _bwd_op(x, weight, cos, sin, ctx.eps, last_dim_unit(dy))
    return dx, dw.to(weight.dtype), None, None, None


_fwd_op.register_autograd(_backward_rule, setup_context=_setup_context)


# -- public function ---------------------------------------------------------------------
def qk_norm_rope_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Triton version of `qk_norm_rope_ref`.

    x: [B, L, N, K], any batch/token/head strides (e.g. q or k sliced from the fused qkv
    output); weight: [K]; cos, sin: [B or 1, L, K/2] (angles are constants, no gradient).
    Returns a contiguous [B, L, N, K] in x.dtype; differentiable in x and weight.
    """
    check_triton_tensors("qk_norm_rope", x, weight, cos, sin)
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    return _fwd_op(last_dim_unit(x), weight.contiguous(), cos, sin, float(eps))
