"""Triton kernels against their fp32 torch references: outputs and every gradient.

On CPU the real Triton code runs through ``TRITON_INTERPRET=1`` (set in conftest before
any kernel module is imported), at small odd shapes; GPU tests run real shapes in bf16.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from mugv_dit import gated_residual, modulated_layernorm, qk_norm_rope
from mugv_dit.kernels import resolve_kernel_backend
from mugv_dit.kernels.reference import (
    gated_residual_ref,
    modulated_layernorm_ref,
    qk_norm_rope_ref,
)

pytest.importorskip("triton", reason="triton is not installed (Linux x86-64 only)")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# kernel accumulates in fp32 like the reference: differences are rounding of the output
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}
CPU_DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


def _rand(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_(True)


def _use_t(B, L, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(B, L, generator=g) > 0.4
    u[:, 0] = False  # a start token
    u[:, -1] = True
    return u.to(DEVICE)


def _compare(fn_triton, fn_ref, inputs, dtype, seed=99):
    out = fn_triton(*inputs)
    ref = fn_ref(*inputs)
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, **TOL[dtype], msg="forward")
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(out.shape, generator=g).to(DEVICE, out.dtype)
    wrt = [t for t in inputs if torch.is_tensor(t) and t.requires_grad]
    got = torch.autograd.grad(out, wrt, dy)
    want = torch.autograd.grad(ref, wrt, dy)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape
        # reductions over many tokens: scale the tolerance with the magnitude
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale,
                                   msg=f"gradient {i}")  # fmt: skip


MOD_SHAPES = [
    pytest.param(1, 1, 8, id="B1-L1-D8"),
    pytest.param(2, 31, 37, id="B2-L31-D37"),
    pytest.param(1, 67, 40, id="B1-L67-D40"),  # two backward chunks of 64 rows
]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize(("B", "L", "D"), MOD_SHAPES)
def test_modulated_layernorm(B, L, D, dtype):
    x = _rand(B, L, D, dtype=dtype, seed=1)
    shift = _rand(B, 2, D, dtype=dtype, seed=2)
    scale = _rand(B, 2, D, dtype=dtype, seed=3)
    use_t = _use_t(B, L, 4)
    _compare(
        lambda *a: modulated_layernorm(*a, eps=1e-6, backend="triton"),
        lambda *a: modulated_layernorm_ref(*a, eps=1e-6),
        (x, shift, scale, use_t),
        dtype,
    )


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize(("B", "L", "D"), MOD_SHAPES)
def test_gated_residual(B, L, D, with_bias, dtype):
    residual = _rand(B, L, D, dtype=dtype, seed=5)
    branch = _rand(B, L, D, dtype=dtype, seed=6)
    gate = _rand(B, 2, D, dtype=dtype, seed=7)
    bias = _rand(D, dtype=dtype, seed=8) if with_bias else None
    use_t = _use_t(B, L, 9)
    _compare(
        lambda r, b, g, u, bi: gated_residual(r, b, g, u, bi, backend="triton"),
        gated_residual_ref,
        (residual, branch, gate, use_t, bias),
        dtype,
    )


ROPE_SHAPES = [
    pytest.param(1, 5, 1, 6, 1, id="B1-L5-N1-K6"),
    pytest.param(2, 21, 3, 72, 1, id="B2-L21-N3-K72-shared-angles"),
    pytest.param(2, 9, 5, 18, 2, id="B2-L9-N5-K18-per-sample-angles"),
    pytest.param(1, 67, 7, 24, 1, id="B1-L67-N7-K24"),  # two backward chunks
]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize(("B", "L", "N", "K", "Bc"), ROPE_SHAPES)
def test_qk_norm_rope(B, L, N, K, Bc, dtype):
    x = _rand(B, L, N, K, dtype=dtype, seed=11)
    weight = (
        (1 + 0.3 * _rand(K, dtype=torch.float32, seed=12)).detach().to(dtype).requires_grad_(True)
    )
    g = torch.Generator().manual_seed(13)
    angles = (torch.rand(Bc, L, K // 2, generator=g) * 60).to(DEVICE)
    _compare(
        lambda *a: qk_norm_rope(*a, eps=1e-6, backend="triton"),
        lambda *a: qk_norm_rope_ref(*a, eps=1e-6),
        (x, weight, angles.cos(), angles.sin()),
        dtype,
    )


def test_rope_reference_matches_complex_multiplication():
    """The pair rotation equals multiplying (x[2j] + i x[2j+1]) by exp(i angle)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 12, generator=g, dtype=torch.float64)
    angles = torch.rand(2, 4, 6, generator=g, dtype=torch.float64) * 10
    weight = torch.ones(12, dtype=torch.float64)
    got = qk_norm_rope_ref(x, weight, angles.cos(), angles.sin(), eps=0.0)
    normed = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    z = torch.view_as_complex(normed.reshape(2, 4, 3, 6, 2).contiguous())
    want = torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)[:, :, None]).flatten(
        -2
    )
    torch.testing.assert_close(got, want)


def test_qk_norm_rope_reads_q_and_k_from_the_fused_qkv_view():
    """q and k sliced from a [B, L, 3, N, K] projection (no copy) equal the reference,
    and the gradient flows back into the right third of qkv."""
    B, L, N, K = 2, 9, 5, 18
    qkv = _rand(B, L, 3, N, K, dtype=torch.float32, seed=21)
    weight = (1 + 0.3 * _rand(K, dtype=torch.float32, seed=22)).detach().requires_grad_(True)
    angles = torch.rand(1, L, K // 2, generator=torch.Generator().manual_seed(23)).to(DEVICE) * 9
    k_view = qkv.unbind(2)[1]
    assert not k_view.is_contiguous()
    _compare(
        lambda x, w, c, s: qk_norm_rope(x, w, c, s, backend="triton"),
        qk_norm_rope_ref,
        (k_view, weight, angles.cos(), angles.sin()),
        torch.float32,
    )
    out = qk_norm_rope(k_view, weight, angles.cos(), angles.sin(), backend="triton")
    (grad,) = torch.autograd.grad(out.sum(), [qkv])
    assert grad[:, :, 0].abs().max() == 0 and grad[:, :, 2].abs().max() == 0
    assert grad[:, :, 1].abs().max() > 0


def test_modulation_and_gate_read_through_strides():
    """shift/scale/gate as slices of one [B, 2, 6, D] table (how the block passes them)."""
    B, L, D = 2, 7, 24
    table = _rand(B, 2, 6, D, dtype=torch.float32, seed=31)
    x = _rand(B, L, D, dtype=torch.float32, seed=32)
    branch = _rand(B, L, D, dtype=torch.float32, seed=33)
    use_t = _use_t(B, L, 34)
    shift, scale, gate = table.unbind(2)[:3]
    assert not shift.is_contiguous()
    _compare(
        lambda *a: modulated_layernorm(*a, backend="triton"),
        modulated_layernorm_ref, (x, shift, scale, use_t), torch.float32,
    )  # fmt: skip
    _compare(
        lambda *a: gated_residual(*a, backend="triton"),
        gated_residual_ref, (x, branch, gate, use_t), torch.float32,
    )  # fmt: skip


def _kernel_modules():
    # the package's public functions shadow the submodule names of the same spelling
    return tuple(
        importlib.import_module(f"mugv_dit.kernels.{name}")
        for name in ("gated_residual", "modulate", "qk_norm_rope")
    )


# A batch stride just above 2^30 puts sample 2 past 2^31 elements: 32-bit offsets wrap
# there. The buffer is allocated but never touched beyond the three rows (CPU pages are
# committed lazily), so the test costs a few KiB of real memory.
BIG_STRIDE = 2**30 + 64


def _far_apart(rows: torch.Tensor) -> torch.Tensor:
    """A view of ``rows`` ([3, ...]) whose rows lie BIG_STRIDE elements apart."""
    inner = rows[0].numel()
    buf = torch.empty(2 * BIG_STRIDE + inner, dtype=rows.dtype, device=rows.device)
    view = buf.as_strided(rows.shape, (BIG_STRIDE, *rows[0].stride()))
    view.copy_(rows)
    return view


@pytest.mark.skipif(DEVICE != "cpu", reason="interpreter test (the GPU runs real shapes)")
def test_offsets_past_2_31_elements():
    gr_mod, mod_mod, qk_mod = _kernel_modules()

    g = torch.Generator().manual_seed(41)
    B, L, D, N, K = 3, 1, 16, 3, 8
    x_small = torch.randn(B, L, D, generator=g)
    mod = torch.randn(B, 2, D, generator=g)
    use_t = torch.tensor([[True], [False], [True]])
    dy = torch.randn(B, L, D, generator=g)
    x = _far_apart(x_small)
    assert x.stride(0) * 2 > 2**31 - 1

    y, mean, rstd = mod_mod._forward(x, mod, mod, use_t.to(torch.int8), 1e-6)
    torch.testing.assert_close(y, modulated_layernorm_ref(x_small, mod, mod, use_t))
    dx, _, _ = mod_mod._backward(x, mod, use_t.to(torch.int8), mean, rstd, _far_apart(dy))
    xr = x_small.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(modulated_layernorm_ref(xr, mod, mod, use_t), [xr], dy)
    torch.testing.assert_close(dx, want)

    out = gr_mod._forward(x, x, mod, use_t.to(torch.int8), None)
    torch.testing.assert_close(out, gated_residual_ref(x_small, x_small, mod, use_t))
    dbr, _, _ = gr_mod._backward(x, mod, use_t.to(torch.int8), None, _far_apart(dy))
    torch.testing.assert_close(dbr, dy * torch.where(use_t[..., None], mod[:, :1], mod[:, 1:]))

    q_small = torch.randn(B, L, N, K, generator=g)
    w = 1 + 0.1 * torch.randn(K, generator=g)
    ang = torch.rand(1, L, K // 2, generator=g) * 7
    q = _far_apart(q_small)
    out = qk_mod._forward(q, w, ang.cos(), ang.sin(), 1e-6)
    torch.testing.assert_close(out, qk_norm_rope_ref(q_small, w, ang.cos(), ang.sin()))
    dq_out = torch.randn(B, L, N, K, generator=g)
    dq, _ = qk_mod._backward(q, w, ang.cos(), ang.sin(), 1e-6, _far_apart(dq_out))
    qr = q_small.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(qk_norm_rope_ref(qr, w, ang.cos(), ang.sin()), [qr], dq_out)
    torch.testing.assert_close(dq, want)


def test_custom_ops_pass_opcheck():
    """Schemas, fake (meta) kernels and autograd registrations agree with the real ops."""
    gr_mod, mod_mod, qk_mod = _kernel_modules()

    B, L, D, N, K = 2, 5, 12, 3, 8
    x = _rand(B, L, D, dtype=torch.float32, seed=51)
    mod = _rand(B, 2, D, dtype=torch.float32, seed=52)
    use_t = _use_t(B, L, 53).to(torch.int8)
    torch.library.opcheck(mod_mod._fwd_op, (x, mod, mod, use_t, 1e-6))
    torch.library.opcheck(gr_mod._fwd_op, (x, x, mod, use_t, mod[0, 0]))
    q = _rand(B, L, N, K, dtype=torch.float32, seed=54)
    w = _rand(K, dtype=torch.float32, seed=55)
    ang = torch.rand(1, L, K // 2).to(DEVICE)
    torch.library.opcheck(qk_mod._fwd_op, (q, w, ang.cos(), ang.sin(), 1e-6))


@pytest.mark.parametrize(
    "backend",
    # the torch path has no custom ops (inductor fuses the reference); ~1 min of C++ builds
    [pytest.param("torch", marks=pytest.mark.slow), "triton"],
)
def test_compiled_block_equals_eager(backend):
    """torch.compile (inductor, fullgraph: no graph break on the kernels) of a DiT block,
    forward and backward, equals eager."""
    from conftest import randomize, tiny_config

    from mugv_dit.layers.blocks import MUGDiTBlock

    torch._dynamo.reset()
    cfg = tiny_config(hidden_size=24, num_heads=2)
    block = randomize(MUGDiTBlock(cfg), seed=3).to(DEVICE)
    B, L, S, D = 2, 10, 4, cfg.hidden_size
    g = torch.Generator().manual_seed(61)
    x = torch.randn(B, L, D, generator=g).to(DEVICE).requires_grad_(True)
    t_mlp = torch.randn(B, 2, 6 * D, generator=g).to(DEVICE)
    use_t = _use_t(B, L, 62)
    text = torch.randn(B, S, D, generator=g).to(DEVICE)
    angles = torch.rand(1, L, D // cfg.num_heads // 2, generator=g).to(DEVICE) * 9
    cos, sin = angles.cos(), angles.sin()
    kw = dict(kernel_backend=backend)
    eager = block(x, t_mlp, use_t, cos, sin, text, **kw)
    (gx_eager,) = torch.autograd.grad(eager.square().sum(), [x])
    compiled = torch.compile(block, backend="inductor", fullgraph=True)
    out = compiled(x, t_mlp, use_t, cos, sin, text, **kw)
    (gx,) = torch.autograd.grad(out.square().sum(), [x])
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, gx_eager, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_kernels_launch_on_the_tensors_device():
    """Inputs on cuda:1 while the current device is cuda:0 give the reference result."""
    torch.cuda.set_device(0)
    g = torch.Generator().manual_seed(71)
    x = torch.randn(2, 33, 40, generator=g).to("cuda:1")
    mod = torch.randn(2, 2, 40, generator=g).to("cuda:1")
    use_t = (torch.rand(2, 33, generator=g) > 0.5).to("cuda:1")
    torch.testing.assert_close(
        modulated_layernorm(x, mod, mod, use_t, backend="triton"),
        modulated_layernorm_ref(x, mod, mod, use_t),
    )
    torch.testing.assert_close(
        gated_residual(x, x, mod, use_t, backend="triton"), gated_residual_ref(x, x, mod, use_t)
    )
    q = torch.randn(2, 33, 3, 16, generator=g).to("cuda:1")
    w = torch.ones(16, device="cuda:1")
    ang = torch.rand(1, 33, 8, device="cuda:1")
    torch.testing.assert_close(
        qk_norm_rope(q, w, ang.cos(), ang.sin(), backend="triton"),
        qk_norm_rope_ref(q, w, ang.cos(), ang.sin()),
    )


def test_model_forward_and_backward_triton_equals_torch():
    from conftest import tiny_inputs, tiny_model

    x, t, text, mask = tiny_inputs(T=2, H=4, W=4)
    x_mask = torch.tensor([[False, True], [True, True]])
    results = []
    for backend in ("torch", "triton"):
        model = tiny_model(kernel_backend=backend, depth=1)
        out = model(x, t, text, mask, x_mask=x_mask)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_triton_backend_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(1, 2, 8)
    mod = torch.zeros(1, 2, 8)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        modulated_layernorm(x, mod, mod, torch.ones(1, 2, dtype=torch.bool), backend="triton")


def test_auto_backend_resolution():
    assert resolve_kernel_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_kernel_backend("torch", torch.device("cuda")) == "torch"
    with pytest.raises(ValueError, match="not one of"):
        resolve_kernel_backend("cuda", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("B", "L", "D"), [(1, 50402, 3456), (2, 7203, 1152)], ids=["10b-720p", "1b"]
)
def test_gpu_real_shapes_bf16(B, L, D):
    dtype = torch.bfloat16
    x = _rand(B, L, D, dtype=dtype, seed=1)
    mod = _rand(B, 2, D, dtype=dtype, seed=2)
    use_t = _use_t(B, L, 3)
    _compare(
        lambda *a: modulated_layernorm(*a, backend="triton"),
        modulated_layernorm_ref, (x, mod, mod.detach().clone().requires_grad_(True), use_t), dtype,
    )  # fmt: skip
    _compare(
        lambda r, b, g, u, bi: gated_residual(r, b, g, u, bi, backend="triton"),
        gated_residual_ref, (x, _rand(B, L, D, dtype=dtype, seed=4), mod, use_t, _rand(D, dtype=dtype, seed=5)),
        dtype,
    )  # fmt: skip
    q = _rand(B, L, D // 72, 72, dtype=dtype, seed=6)
    w = _rand(72, dtype=dtype, seed=7)
    angles = torch.rand(1, L, 36, device=DEVICE) * 400
    _compare(
        lambda *a: qk_norm_rope(*a, backend="triton"), qk_norm_rope_ref,
        (q, w, angles.cos(), angles.sin()), dtype,
    )  # fmt: skip
