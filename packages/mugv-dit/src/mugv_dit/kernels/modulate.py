"""Fused LayerNorm + AdaLN modulation with the per-token t / t0 choice (paper §5.3).

Maths, per token l of sample b (D features, no affine, eps 1e-6)::

    xhat = (x - mean(x)) / sqrt(var(x) + eps)
    m    = 0 if use_t[b, l] else 1            # 0: current timestep, 1: timestep 0
    y    = xhat * (1 + scale[b, m]) + shift[b, m]

Backward (g = dy * (1 + scale[b, m]))::

    dx          = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)
    dshift[b,m] = sum over tokens of b choosing m of dy
    dscale[b,m] = sum over tokens of b choosing m of dy * xhat

Dimension legend: B batch, L tokens, D hidden.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mugv_dit.kernels._common import BACKWARD_ROWS, check_triton_tensors, num_warps_for


# -- kernels ---------------------------------------------------------------------------
@triton.jit
def _modulate_fwd(
    X, SHIFT, SCALE, USE_T, Y, MEAN, RSTD,
    L, D, eps,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    b = row // L
    cols = tl.arange(0, BLOCK_D)
    valid = cols < D
    x = tl.load(X + row * D + cols, mask=valid, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / D
    xc = tl.where(valid, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
    m = 1 - tl.load(USE_T + row).to(tl.int32)
    mod_off = (b * 2 + m) * D + cols
    shift = tl.load(SHIFT + mod_off, mask=valid, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + mod_off, mask=valid, other=0.0).to(tl.float32)
    y = xc * rstd * (1.0 + scale) + shift
    tl.store(Y + row * D + cols, y.to(Y.dtype.element_ty), mask=valid)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _modulate_bwd(
    X, SCALE, USE_T, MEAN, RSTD, DY, DX, DSHIFT_PART, DSCALE_PART,
    L, D, ROWS,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    cols = tl.arange(0, BLOCK_D)
    valid = cols < D
    scale0 = tl.load(SCALE + (b * 2 + 0) * D + cols, mask=valid, other=0.0).to(tl.float32)
    scale1 = tl.load(SCALE + (b * 2 + 1) * D + cols, mask=valid, other=0.0).to(tl.float32)
    dshift0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dshift1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dscale0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dscale1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    l_start = chunk * ROWS
    l_end = tl.minimum(l_start + ROWS, L)
    for tok in range(l_start, l_end):
        row = b * L + tok
        x = tl.load(X + row * D + cols, mask=valid, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * D + cols, mask=valid, other=0.0).to(tl.float32)
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
    B, L, D = x.shape
    y = torch.empty_like(x)
    mean = torch.empty(B * L, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block = triton.next_power_of_2(D)
    _modulate_fwd[(B * L,)](
        x, shift, scale, use_t, y, mean, rstd, L, D, eps,
        BLOCK_D=block, num_warps=num_warps_for(block),
    )  # fmt: skip
    return y, mean, rstd


def _backward(x, scale, use_t, mean, rstd, dy):
    B, L, D = x.shape
    dx = torch.empty_like(x)
    n_chunks = triton.cdiv(L, BACKWARD_ROWS)
    dshift = torch.empty(B, n_chunks, 2, D, device=x.device, dtype=torch.float32)
    dscale = torch.empty_like(dshift)
    block = triton.next_power_of_2(D)
    _modulate_bwd[(B, n_chunks)](
        x, scale, use_t, mean, rstd, dy, dx, dshift, dscale, L, D, BACKWARD_ROWS,
        BLOCK_D=block, num_warps=num_warps_for(block),
    )  # fmt: skip
    return dx, dshift.sum(1), dscale.sum(1)


# -- autograd --------------------------------------------------------------------------
class _ModulatedLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, scale, use_t, eps):
        x, shift, scale = x.contiguous(), shift.contiguous(), scale.contiguous()
        use_t = use_t.contiguous().to(torch.int8)
        y, mean, rstd = _forward(x, shift, scale, use_t, eps)
        ctx.save_for_backward(x, scale, use_t, mean, rstd)
        ctx.dtypes = (shift.dtype, scale.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, scale, use_t, mean, rstd = ctx.saved_tensors
        dx, dshift, dscale = _backward(x, scale, use_t, mean, rstd, dy.contiguous())
        return dx, dshift.to(ctx.dtypes[0]), dscale.to(ctx.dtypes[1]), None, None


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
    bool. Returns [B, L, D] in x.dtype; differentiable in x, shift and scale.
    """
    check_triton_tensors("modulated_layernorm", x, shift, scale, use_t)
    return _ModulatedLayerNorm.apply(x, shift, scale, use_t, eps)
