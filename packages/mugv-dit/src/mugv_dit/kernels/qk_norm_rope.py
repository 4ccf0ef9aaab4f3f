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

Dimension legend: B batch, L tokens, N heads, K head dim, H = K / 2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mugv_dit.kernels._common import BACKWARD_ROWS, check_triton_tensors


# -- kernels ---------------------------------------------------------------------------
@triton.jit
def _qk_norm_rope_fwd(
    X, W, COS, SIN, OUT,
    L, N, HALF, cs_batch_stride, eps,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)  # token (b, l)
    b = row // L
    tok = row % L
    heads = tl.arange(0, BLOCK_N)[:, None]
    pairs = tl.arange(0, BLOCK_H)[None, :]
    valid = (heads < N) & (pairs < HALF)
    K = 2 * HALF
    offs = row * N * K + heads * K + 2 * pairs
    e = tl.load(X + offs, mask=valid, other=0.0).to(tl.float32)
    o = tl.load(X + offs + 1, mask=valid, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(e * e + o * o, axis=1) / K + eps)
    pvalid = pairs < HALF
    we = tl.load(W + 2 * pairs, mask=pvalid, other=0.0).to(tl.float32)
    wo = tl.load(W + 2 * pairs + 1, mask=pvalid, other=0.0).to(tl.float32)
    cs_off = b * cs_batch_stride + tok * HALF + pairs
    c = tl.load(COS + cs_off, mask=pvalid, other=0.0).to(tl.float32)
    s = tl.load(SIN + cs_off, mask=pvalid, other=0.0).to(tl.float32)
    ye = e * rstd[:, None] * we
    yo = o * rstd[:, None] * wo
    tl.store(OUT + offs, (ye * c - yo * s).to(OUT.dtype.element_ty), mask=valid)
    tl.store(OUT + offs + 1, (ye * s + yo * c).to(OUT.dtype.element_ty), mask=valid)


@triton.jit
def _qk_norm_rope_bwd(
    X, W, COS, SIN, DY, DX, DW_PART,
    L, N, HALF, n_rows, cs_batch_stride, eps, ROWS,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    chunk = tl.program_id(0)
    heads = tl.arange(0, BLOCK_N)[:, None]
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
    for row in range(r_start, r_end):
        b = row // L
        tok = row % L
        offs = row * N * K + heads * K + 2 * pairs
        e = tl.load(X + offs, mask=valid, other=0.0).to(tl.float32)
        o = tl.load(X + offs + 1, mask=valid, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(e * e + o * o, axis=1) / K + eps)
        ne = e * rstd[:, None]
        no = o * rstd[:, None]
        cs_off = b * cs_batch_stride + tok * HALF + pairs
        c = tl.load(COS + cs_off, mask=pvalid, other=0.0).to(tl.float32)
        s = tl.load(SIN + cs_off, mask=pvalid, other=0.0).to(tl.float32)
        gy_e = tl.load(DY + offs, mask=valid, other=0.0).to(tl.float32)
        gy_o = tl.load(DY + offs + 1, mask=valid, other=0.0).to(tl.float32)
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
        tl.store(DX + offs, dxe.to(DX.dtype.element_ty), mask=valid)
        tl.store(DX + offs + 1, dxo.to(DX.dtype.element_ty), mask=valid)
    part = chunk * K + 2 * tl.arange(0, BLOCK_H)
    hvalid = tl.arange(0, BLOCK_H) < HALF
    tl.store(DW_PART + part, tl.sum(dwe, axis=0), mask=hvalid)
    tl.store(DW_PART + part + 1, tl.sum(dwo, axis=0), mask=hvalid)


# -- launchers ---------------------------------------------------------------------------
def _blocks(N: int, half: int) -> tuple[int, int]:
    return triton.next_power_of_2(N), triton.next_power_of_2(half)


def _forward(x, weight, cos, sin, eps):
    B, L, N, K = x.shape
    out = torch.empty_like(x)
    block_n, block_h = _blocks(N, K // 2)
    cs_stride = 0 if cos.shape[0] == 1 else L * (K // 2)
    _qk_norm_rope_fwd[(B * L,)](
        x, weight, cos, sin, out, L, N, K // 2, cs_stride, eps,
        BLOCK_N=block_n, BLOCK_H=block_h, num_warps=4,
    )  # fmt: skip
    return out


def _backward(x, weight, cos, sin, eps, dy):
    B, L, N, K = x.shape
    dx = torch.empty_like(x)
    n_rows = B * L
    n_chunks = triton.cdiv(n_rows, BACKWARD_ROWS)
    dw = torch.empty(n_chunks, K, device=x.device, dtype=torch.float32)
    block_n, block_h = _blocks(N, K // 2)
    cs_stride = 0 if cos.shape[0] == 1 else L * (K // 2)
    _qk_norm_rope_bwd[(n_chunks,)](
        x, weight, cos, sin, dy, dx, dw, L, N, K // 2, n_rows, cs_stride, eps, BACKWARD_ROWS,
        BLOCK_N=block_n, BLOCK_H=block_h, num_warps=4,
    )  # fmt: skip
    return dx, dw.sum(0)


# -- autograd --------------------------------------------------------------------------
class _QKNormRoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, cos, sin, eps):
        x, weight = x.contiguous(), weight.contiguous()
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        out = _forward(x, weight, cos, sin, eps)
        ctx.save_for_backward(x, weight, cos, sin)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, dy):
        x, weight, cos, sin = ctx.saved_tensors
        dx, dw = _backward(x, weight, cos, sin, ctx.eps, dy.contiguous())
        return dx, dw.to(weight.dtype), None, None, None


# -- public function ---------------------------------------------------------------------
def qk_norm_rope_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Triton version of `qk_norm_rope_ref`.

    x: [B, L, N, K]; weight: [K]; cos, sin: [B or 1, L, K/2] (angles are constants, no
    gradient). Returns [B, L, N, K] in x.dtype; differentiable in x and weight.
    """
    check_triton_tensors("qk_norm_rope", x, weight, cos, sin)
    return _QKNormRoPE.apply(x, weight, cos, sin, eps)
