"""Fused gate x (branch + bias) + residual, the paper's bias/modulation/residual kernel (§5.3).

Maths, per token l of sample b (D features)::

    m   = 0 if use_t[b, l] else 1             # 0: current timestep, 1: timestep 0
    out = residual + gate[b, m] * (branch + bias)

The branch is the output of a bias-free GEMM (attention ``proj`` or MLP ``fc2``); folding
its bias in here saves one read and one write of the [B, L, D] activation.

Backward::

    d residual  = dy
    d branch    = dy * gate[b, m]
    d bias      = sum over all tokens of dy * gate[b, m]
    d gate[b,m] = sum over tokens of b choosing m of dy * (branch + bias)

Dimension legend: B batch, L tokens, D hidden.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mugv_dit.kernels._common import BACKWARD_ROWS, check_triton_tensors, num_warps_for


# -- kernels ---------------------------------------------------------------------------
@triton.jit
def _gated_residual_fwd(
    R, BR, GATE, USE_T, BIAS, OUT,
    L, D,
    HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    b = row // L
    cols = tl.arange(0, BLOCK_D)
    valid = cols < D
    r = tl.load(R + row * D + cols, mask=valid, other=0.0).to(tl.float32)
    br = tl.load(BR + row * D + cols, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        br += tl.load(BIAS + cols, mask=valid, other=0.0).to(tl.float32)
    m = 1 - tl.load(USE_T + row).to(tl.int32)
    gate = tl.load(GATE + (b * 2 + m) * D + cols, mask=valid, other=0.0).to(tl.float32)
    tl.store(OUT + row * D + cols, (r + gate * br).to(OUT.dtype.element_ty), mask=valid)


@triton.jit
def _gated_residual_bwd(
    BR, GATE, USE_T, BIAS, DY, DBR, DGATE_PART, DBIAS_PART,
    L, D, ROWS,
    HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    cols = tl.arange(0, BLOCK_D)
    valid = cols < D
    gate0 = tl.load(GATE + (b * 2 + 0) * D + cols, mask=valid, other=0.0).to(tl.float32)
    gate1 = tl.load(GATE + (b * 2 + 1) * D + cols, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(BIAS + cols, mask=valid, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    dgate0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dgate1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
    l_start = chunk * ROWS
    l_end = tl.minimum(l_start + ROWS, L)
    for tok in range(l_start, l_end):
        row = b * L + tok
        dy = tl.load(DY + row * D + cols, mask=valid, other=0.0).to(tl.float32)
        br = tl.load(BR + row * D + cols, mask=valid, other=0.0).to(tl.float32) + bias
        use_t = tl.load(USE_T + row).to(tl.int32)
        gate = tl.where(use_t != 0, gate0, gate1)
        dbr = dy * gate
        tl.store(DBR + row * D + cols, dbr.to(DBR.dtype.element_ty), mask=valid)
        dbias += dbr
        t_f = use_t.to(tl.float32)
        dgate0 += dy * br * t_f
        dgate1 += dy * br * (1.0 - t_f)
    part = b * n_chunks + chunk
    tl.store(DGATE_PART + (part * 2) * D + cols, dgate0, mask=valid)
    tl.store(DGATE_PART + (part * 2 + 1) * D + cols, dgate1, mask=valid)
    tl.store(DBIAS_PART + part * D + cols, dbias, mask=valid)


# -- launchers ---------------------------------------------------------------------------
def _forward(residual, branch, gate, use_t, bias):
    B, L, D = residual.shape
    out = torch.empty_like(residual)
    block = triton.next_power_of_2(D)
    _gated_residual_fwd[(B * L,)](
        residual, branch, gate, use_t, bias if bias is not None else gate, out, L, D,
        HAS_BIAS=bias is not None, BLOCK_D=block, num_warps=num_warps_for(block),
    )  # fmt: skip
    return out


def _backward(branch, gate, use_t, bias, dy):
    B, L, D = branch.shape
    dbranch = torch.empty_like(branch)
    n_chunks = triton.cdiv(L, BACKWARD_ROWS)
    dgate = torch.empty(B, n_chunks, 2, D, device=dy.device, dtype=torch.float32)
    dbias = torch.empty(B, n_chunks, D, device=dy.device, dtype=torch.float32)
    block = triton.next_power_of_2(D)
    _gated_residual_bwd[(B, n_chunks)](
        branch, gate, use_t, bias if bias is not None else gate, dy, dbranch, dgate, dbias,
        L, D, BACKWARD_ROWS,
        HAS_BIAS=bias is not None, BLOCK_D=block, num_warps=num_warps_for(block),
    )  # fmt: skip
    return dbranch, dgate.sum(1), dbias.sum((0, 1))


# -- autograd --------------------------------------------------------------------------
class _GatedResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, residual, branch, gate, use_t, bias):
        residual, branch, gate = residual.contiguous(), branch.contiguous(), gate.contiguous()
        use_t = use_t.contiguous().to(torch.int8)
        bias = bias.contiguous() if bias is not None else None
        out = _forward(residual, branch, gate, use_t, bias)
        ctx.save_for_backward(branch, gate, use_t, bias)
        ctx.residual_dtype = residual.dtype
        return out

    @staticmethod
    def backward(ctx, dy):
        branch, gate, use_t, bias = ctx.saved_tensors
        dbranch, dgate, dbias = _backward(branch, gate, use_t, bias, dy.contiguous())
        dresidual = dy.to(ctx.residual_dtype)
        return (
            dresidual,
            dbranch,
            dgate.to(gate.dtype),
            None,
            dbias.to(bias.dtype) if bias is not None else None,
        )


# -- public function ---------------------------------------------------------------------
def gated_residual_triton(
    residual: torch.Tensor,
    branch: torch.Tensor,
    gate: torch.Tensor,
    use_t: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version of `gated_residual_ref`.

    residual, branch: [B, L, D]; gate: [B, 2, D]; use_t: [B, L] bool; bias: [D] or None.
    Returns [B, L, D] in residual.dtype; differentiable in residual, branch, gate, bias.
    """
    tensors = [residual, branch, gate, use_t] + ([bias] if bias is not None else [])
    check_triton_tensors("gated_residual", *tensors)
    return _GatedResidual.apply(residual, branch, gate, use_t, bias)
