"""Fused LayerNorm + AdaLN modulation with the per-token t / t0 choice (paper §5.3).

Maths, per token l of sample b (D features, no affine, eps 1e-6)::

    xhat = (x - mean(x)) / sqrt(var(x) + eps)
    m    = 0 if use_t[b, l] else 1            # 0: current timestep, 1: timestep 0
    y    = xhat * (1 + scale[b, m]) + shift[b, m]

Backward (g = dy * (1 + scale[b, m]))::

    dx          = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)
    dshift[b,m] = sum over tokens of b choosing m of dy
    dscale[b,m] = sum over tokens of b choosing m of dy * xhat

Layout: x and dy may be strided views (any batch and token strides, unit feature stride);
shift and scale are read through their strides (they arrive as slices of one [B, 2, 6, D]
table), so no call copies an activation. Offsets are 64-bit: B·L·D may pass 2³¹.

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
def _modulate_fwd(
    X, SHIFT, SCALE, USE_T, Y, MEAN, RSTD,
    L, D, sx_b, sx_l, ssh_b, ssh_m, ssc_b, ssc_m, eps,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    b = row // L
    tok = row % L
    cols = tl.arange(0, BLOCK_D)
    valid = cols < D
    x = tl.load(X + b * sx_b + tok * sx_l + cols, mask=valid, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / D
    xc = tl.where(valid, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
    m = 1 - tl.load(USE_T + row).to(tl.int64)
    shift = tl.load(SHIFT + b * ssh_b + m * ssh_m + cols, mask=valid, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + b * ssc_b + m * ssc_m + cols, mask=valid, other=0.0).to(tl.float32)
    y = xc * rstd * (1.0 + scale) + shift
    tl.store(Y + row * D + cols, y.to(Y.dtype.element_ty), mask=valid)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.autotune(configs=warp_configs(), key=["D"])
@triton.jit
def _modulate_bwd(
    X, SCALE, USE_T, MEAN, RSTD, DY, DX, DSHIFT_PART, DSCALE_PART,
    L, D, sx_b, sx_l, ssc_b, ssc_m, sd_b, sd_l, ROWS,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    n_chunks = tl.num_programs(1)
    cols = tl.arange(0, BLOCK_D)
    valid = cols < D
    scale0 = tl.load(SCALE + b * ssc_b + cols, mask=valid, other=0.0).to(tl.float32)
    scale1 = tl.load(SCALE + b * ssc_b + ssc_m + cols, mask=valid, other=0.0).to(tl.float32)
    dshift0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dshift1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dscale0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dscale1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    l_start = chunk * ROWS
    l_end = tl.minimum(l_start + ROWS, L)
    for i in range(0, l_end - l_start):
        tok = l_start + i  # int64 (a bare loop variable may be 32-bit)
        row = b * L + tok
        x = tl.load(X + b * sx_b + tok * sx_l + cols, mask=valid, other=0.0).to(tl.float32)
        dy = tl.load(DY + b * sd_b + tok * sd_l + cols, mask=valid, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        use_t = tl.load(USE_T + row).to(tl.int32)
        sel = use_t != 0
        scale = tl.where(sel, scale0, scale1)
        xhat = tl.where(valid, (x - mean) * rstd, 0.0)
        g = dy * (1.0 + scale)
        mean_g = tl.sum(g, axis=0) / D
        mean_gx = tl.sum(g * xhat, axis=0) / D
        dx = (g - mean_g - xhat * mean_gx) * rstd
        tl.store(DX + row * D + cols, dx.to(DX.dtype.element_ty), mask=valid)
        t_f = use_t.to(tl.float32)
        dshift0 += dy * t_f
        dshift1 += dy * (1.0 - t_f)
        dscale0 += dy * xhat * t_f
        dscale1 += dy * xhat * (1.0 - t_f)
    base = ((b * n_chunks + chunk) * 2) * D + cols
    tl.store(DSHIFT_PART + base, dshift0, mask=valid)
    tl.store(DSHIFT_PART + base + D, dshift1, mask=valid)
    tl.store(DSCALE_PART + base, dscale0, mask=valid)
    tl.store(DSCALE_PART + base + D, dscale1, mask=valid)


# -- launchers ---------------------------------------------------------------------------
def _forward(x, shift, scale, use_t, eps):
    """x: [B, L, D] (unit last stride); shift, scale: [B, 2, D]; use_t: [B, L] int8."""
    B, L, D = x.shape
    y = torch.empty((B, L, D), device=x.device, dtype=x.dtype)
    mean = torch.empty(B * L, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    with launch_guard(x):
        _modulate_fwd[(B * L,)](
            x, shift, scale, use_t, y, mean, rstd, L, D, x.stride(0), x.stride(1),
            shift.stride(0), shift.stride(1), scale.stride(0), scale.stride(1), eps,
            BLOCK_D=triton.next_power_of_2(D),
        )  # fmt: skip
    return y, mean, rstd


def _backward(x, scale, use_t, mean, rstd, dy):
    B, L, D = x.shape
    dx = torch.empty((B, L, D), device=x.device, dtype=x.dtype)
    n_chunks = triton.cdiv(L, BACKWARD_ROWS)
    dshift = torch.empty(B, n_chunks, 2, D, device=x.device, dtype=torch.float32)
    dscale = torch.empty_like(dshift)
    with launch_guard(x):
        _modulate_bwd[(B, n_chunks)](
            x, scale, use_t, mean, rstd, dy, dx, dshift, dscale, L, D,
            x.stride(0), x.stride(1), scale.stride(0), scale.stride(1),
            dy.stride(0), dy.stride(1), BACKWARD_ROWS,
            BLOCK_D=triton.next_power_of_2(D),
        )  # fmt: skip
    return dx, dshift.sum(1), dscale.sum(1)


# -- autograd (torch.library custom ops, so torch.compile traces through them) -----------
@torch.library.custom_op(
    "mugv_dit::modulated_layernorm_fwd",
    mutates_args=(),
    schema="(Tensor x, Tensor shift, Tensor scale, Tensor use_t, float eps) -> (Tensor, Tensor, Tensor)",
)
def _fwd_op(x, shift, scale, use_t, eps):
    return _forward(x, shift, scale, use_t, eps)


@_fwd_op.register_fake
def _fwd_fake(x, shift, scale, use_t, eps):
    B, L, D = x.shape
    mean = x.new_empty(B * L, dtype=torch.float32)
    return x.new_empty(B, L, D), mean, torch.empty_like(mean)


@torch.library.custom_op(
    "mugv_dit::modulated_layernorm_bwd",
    mutates_args=(),
    schema="(Tensor x, Tensor scale, Tensor use_t, Tensor mean, Tensor rstd, Tensor dy) -> (Tensor, Tensor, Tensor)",
)
def _bwd_op(x, scale, use_t, mean, rstd, dy):
    return _backward(x, scale, use_t, mean, rstd, dy)


@_bwd_op.register_fake
def _bwd_fake(x, scale, use_t, mean, rstd, dy):
    B, L, D = x.shape
    dmod = x.new_empty(B, 2, D, dtype=torch.float32)
    return x.new_empty(B, L, D), dmod, torch.empty_like(dmod)


def _setup_context(ctx, inputs, output):
    x, shift, scale, use_t, _eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, scale, use_t, mean, rstd)
    ctx.dtypes = (shift.dtype, scale.dtype)


def _backward_rule(ctx, dy, _dmean, _drstd):
    x, scale, use_t, mean, rstd = ctx.saved_tensors
    dx, dshift, dscale = _bwd_op(x, scale, use_t, mean, rstd, last_dim_unit(dy))
    return dx, dshift.to(ctx.dtypes[0]), dscale.to(ctx.dtypes[1]), None, None


_fwd_op.register_autograd(_backward_rule, setup_context=_setup_context)


# -- public function ---------------------------------------------------------------------
def modulated_layernorm_triton(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    use_t: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Triton version of `modulated_layernorm_ref`.

    x: [B, L, D]; shift, scale: [B, 2, D] (0: timestep t, 1: timestep 0); use_t: [B, L]
    bool. Any of them may be a strided view. Returns [B, L, D] (contiguous) in x.dtype;
    differentiable in x, shift and scale.
    """
    check_triton_tensors("modulated_layernorm", x, shift, scale, use_t)
    x, shift, scale = last_dim_unit(x), last_dim_unit(shift), last_dim_unit(scale)
    return _fwd_op(x, shift, scale, use_t.contiguous().to(torch.int8), float(eps))[0]
