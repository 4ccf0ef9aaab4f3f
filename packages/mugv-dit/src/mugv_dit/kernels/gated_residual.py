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

Layout: residual, branch and dy may be strided views (unit feature stride), the gate is read
through its strides; offsets are 64-bit (B·L·D may pass 2³¹).

Dimension legend: B batch, L tokens, D hidden.
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
    warp_configs,
)


# -- kernels ---------------------------------------------------------------------------
@triton.autotune(configs=warp_configs(), key=["D"])
@triton.jit
def _gated_residual_fwd(
    R, BR, GATE, USE_T, BIAS, OUT,
    L, D, sr_b, sr_l, sbr_b, sbr_l, sg_b, sg_m,
    HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    b = row // L
    tok = row % L
    cols = tl.arange(0, BLOCK_D)
    valid = cols < D
    r = tl.load(R + b * sr_b + tok * sr_l + cols, mask=valid, other=0.0).to(tl.float32)
    br = tl.load(BR + b * sbr_b + tok * sbr_l + cols, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        br += tl.load(BIAS + cols, mask=valid, other=0.0).to(tl.float32)
    m = 1 - tl.load(USE_T + row).to(tl.int64)
    gate = tl.load(GATE + b * sg_b + m * sg_m + cols, mask=valid, other=0.0).to(tl.float32)
    tl.store(OUT + row * D + cols, (r + gate * br).to(OUT.dtype.element_ty), mask=valid)


@triton.autotune(configs=warp_configs(), key=["D"])
@triton.jit
def _gated_residual_bwd(
    BR, GATE, USE_T, BIAS, DY, DBR, DGATE_PART, DBIAS_PART,
    L, D, sbr_b, sbr_l, sg_b, sg_m, sd_b, sd_l, ROWS,
    HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    n_chunks = tl.num_programs(1)
    cols = tl.arange(0, BLOCK_D)
    valid = cols < D
    gate0 = tl.load(GATE + b * sg_b + cols, mask=valid, other=0.0).to(tl.float32)
    gate1 = tl.load(GATE + b * sg_b + sg_m + cols, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(BIAS + cols, mask=valid, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    dgate0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dgate1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
    l_start = chunk * ROWS
    l_end = tl.minimum(l_start + ROWS, L)
    for i in range(0, l_end - l_start):
        tok = l_start + i  # int64 (a bare loop variable may be 32-bit)
        row = b * L + tok
        dy = tl.load(DY + b * sd_b + tok * sd_l + cols, mask=valid, other=0.0).to(tl.float32)
        br = tl.load(BR + b * sbr_b + tok * sbr_l + cols, mask=valid, other=0.0).to(tl.float32)
        br += bias
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
    """residual, branch: [B, L, D] (unit last stride); gate: [B, 2, D]; use_t: [B, L] int8."""
    B, L, D = residual.shape
    out = torch.empty((B, L, D), device=residual.device, dtype=residual.dtype)
    with launch_guard(residual):
        _gated_residual_fwd[(B * L,)](
            residual, branch, gate, use_t, bias if bias is not None else gate, out, L, D,
            residual.stride(0), residual.stride(1), branch.stride(0), branch.stride(1),
            gate.stride(0), gate.stride(1),
            HAS_BIAS=bias is not None, BLOCK_D=triton.next_power_of_2(D),
        )  # fmt: skip
    return out


def _backward(branch, gate, use_t, bias, dy):
    B, L, D = branch.shape
    dbranch = torch.empty((B, L, D), device=dy.device, dtype=branch.dtype)
    n_chunks = triton.cdiv(L, BACKWARD_ROWS)
    dgate = torch.empty(B, n_chunks, 2, D, device=dy.device, dtype=torch.float32)
    dbias = torch.empty(B, n_chunks, D, device=dy.device, dtype=torch.float32)
    with launch_guard(dy):
        _gated_residual_bwd[(B, n_chunks)](
            branch, gate, use_t, bias if bias is not None else gate, dy, dbranch, dgate, dbias,
            L, D, branch.stride(0), branch.stride(1), gate.stride(0), gate.stride(1),
            dy.stride(0), dy.stride(1), BACKWARD_ROWS,
            HAS_BIAS=bias is not None, BLOCK_D=triton.next_power_of_2(D),
        )  # fmt: skip
    return dbranch, dgate.sum(1), dbias.sum((0, 1))


# -- autograd (torch.library custom ops, so torch.compile traces through them) -----------
@torch.library.custom_op(
    "mugv_dit::gated_residual_fwd",
    mutates_args=(),
    schema="(Tensor residual, Tensor branch, Tensor gate, Tensor use_t, Tensor? bias) -> Tensor",
)
def _fwd_op(residual, branch, gate, use_t, bias):
    return _forward(residual, branch, gate, use_t, bias)


@_fwd_op.register_fake
def _fwd_fake(residual, branch, gate, use_t, bias):
    return residual.new_empty(residual.shape)


@torch.library.custom_op(
    "mugv_dit::gated_residual_bwd",
    mutates_args=(),
    schema="(Tensor branch, Tensor gate, Tensor use_t, Tensor? bias, Tensor dy) -> (Tensor, Tensor, Tensor)",
)
def _bwd_op(branch, gate, use_t, bias, dy):
    return _backward(branch, gate, use_t, bias, dy)


@_bwd_op.register_fake
def _bwd_fake(branch, gate, use_t, bias, dy):
    B, L, D = branch.shape
    return (
        branch.new_empty(B, L, D),
        branch.new_empty(B, 2, D, dtype=torch.float32),
        branch.new_empty(D, dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output):
    residual, branch, gate, use_t, bias = inputs
    ctx.save_for_backward(branch, gate, use_t, bias)
    ctx.residual_dtype = residual.dtype


def _backward_rule(ctx, dy):
    branch, gate, use_t, bias = ctx.saved_tensors
    dbranch, dgate, dbias = _bwd_op(branch, gate, use_t, bias, last_dim_unit(dy))
    return (
        dy.to(ctx.residual_dtype),
        dbranch,
        dgate.to(gate.dtype),
        None,
        dbias.to(bias.dtype) if bias is not None else None,
    )


_fwd_op.register_autograd(_backward_rule, setup_context=_setup_context)


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
    Any of them may be a strided view. Returns [B, L, D] (contiguous) in residual.dtype;
    differentiable in residual, branch, gate, bias.
    """
    tensors = [residual, branch, gate, use_t] + ([bias] if bias is not None else [])
    check_triton_tensors("gated_residual", *tensors)
    residual, branch, gate = last_dim_unit(residual), last_dim_unit(branch), last_dim_unit(gate)
    bias = bias.contiguous() if bias is not None else None
    return _fwd_op(residual, branch, gate, use_t.contiguous().to(torch.int8), bias)
