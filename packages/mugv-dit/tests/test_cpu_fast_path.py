"""The float32 "torch"-backend fast path against the reference ops.

``MUGDiTBlock`` in float32 with ``kernel_backend="torch"`` runs ``_forward_fp32`` (one-hot
bmm for the per-token t/t0 modulation, addcmul, ``qk_norm_rope_fp32``); any other dtype
runs the reference ops of ``kernels/reference.py``. The independent reference is the same
block in float64 (reference path): the fast path must match it, output and every gradient,
to float32 rounding. ``qk_norm_rope_fp32`` (hand-written backward) is checked against
``qk_norm_rope_ref`` in float32 and with ``torch.autograd.gradcheck`` in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize, tiny_config, tiny_inputs, tiny_model

from mugv_dit.kernels.reference import qk_norm_rope_ref
from mugv_dit.layers.blocks import MUGDiTBlock
from mugv_dit.layers.rope import qk_norm_rope_fp32

# float32 against float64: rounding of a few reductions over D / K
TOL = dict(rtol=2e-5, atol=2e-5)


def _use_t(B: int, L: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(B, L, generator=g) > 0.4  # generated (t) and clean (t0) tokens mixed
    u[:, 0] = False
    u[:, -1] = True
    return u


def _randn(*shape: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    scale = max(float(b.abs().max()), 1.0)
    err = float((a.double() - b.double()).abs().max())
    assert err <= TOL["atol"] * scale + TOL["rtol"] * scale, f"{what}: max-abs error {err:.3g}"


@pytest.mark.parametrize(
    ("B", "L", "heads", "head_dim", "S", "cos_batch"),
    [
        pytest.param(2, 37, 2, 12, 5, 1, id="B2-L37-N2-K12-shared-rope"),
        pytest.param(3, 23, 5, 6, 7, 3, id="B3-L23-N5-K6-per-sample-rope"),
        pytest.param(1, 63, 3, 18, 4, 1, id="B1-L63-N3-K18"),
    ],
)
def test_block_fast_path_equals_reference_path(B, L, heads, head_dim, S, cos_batch):
    D = heads * head_dim
    cfg = tiny_config(hidden_size=D, num_heads=heads)
    torch.manual_seed(0)
    block = randomize(MUGDiTBlock(cfg), seed=1, std=0.3)
    ref = copy.deepcopy(block).double()

    x = _randn(B, L, D, seed=2)
    t_mlp = _randn(B, 2, 6 * D, seed=3) * 0.5
    use_t = _use_t(B, L, seed=4)
    angles = _randn(cos_batch, L, head_dim // 2, seed=5) * 3
    cos, sin = angles.cos(), angles.sin()
    text = _randn(B, S, D, seed=6)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, S // 2 :] = False
    g_out = _randn(B, L, D, seed=7)

    def run(mod, dtype):
        xi, ti, te = (v.to(dtype, copy=True).requires_grad_(True) for v in (x, t_mlp, text))
        out = mod(xi, ti, use_t, cos.to(dtype), sin.to(dtype), te, mask, kernel_backend="torch")
        out.backward(g_out.to(dtype))
        grads = {"x": xi.grad, "t_mlp": ti.grad, "text": te.grad}
        grads.update({n: p.grad for n, p in mod.named_parameters()})
        return out, grads

    out, grads = run(block, torch.float32)
    out_ref, grads_ref = run(ref, torch.float64)
    assert out.dtype == torch.float32
    _assert_close(out, out_ref, "output")
    assert grads.keys() == grads_ref.keys()
    for name, g in grads.items():
        assert g is not None and grads_ref[name] is not None, name
        _assert_close(g, grads_ref[name], f"grad {name}")


def test_model_fast_path_equals_float64_reference():
    """The whole DiT (i2v: conditioning frames use t0), float32 fast path vs float64."""
    model = tiny_model(seed=3)
    ref = copy.deepcopy(model).double()
    x, t, text, mask = tiny_inputs(T=3, H=5, W=7)
    x_mask = torch.tensor([[False, True, True], [True, True, True]])

    def run(m, dtype):
        m.zero_grad(set_to_none=True)
        out = m(x.to(dtype), t.to(dtype), text.to(dtype), mask, x_mask=x_mask)
        out.square().mean().backward()
        return out, {n: p.grad for n, p in m.named_parameters()}

    out, grads = run(model, torch.float32)
    out_ref, grads_ref = run(ref, torch.float64)
    _assert_close(out, out_ref, "output")
    for name, g in grads.items():
        if grads_ref[name] is None:
            assert g is None, name
            continue
        _assert_close(g, grads_ref[name], f"grad {name}")


@pytest.mark.parametrize(
    ("B", "L", "N", "K", "cos_batch", "strided"),
    [
        pytest.param(2, 17, 3, 12, 1, True, id="qkv-view-N3-K12"),
        pytest.param(3, 11, 5, 6, 3, False, id="contiguous-N5-K6-per-sample"),
        pytest.param(1, 63, 7, 18, 1, True, id="L63-N7-K18"),
    ],
)
def test_qk_norm_rope_fp32_equals_reference(B, L, N, K, cos_batch, strided):
    if strided:  # q as the attention layer sees it: a view into the fused qkv output
        x = _randn(B, L, 3, N, K, seed=1)[:, :, 1].requires_grad_(True)
    else:
        x = _randn(B, L, N, K, seed=1).requires_grad_(True)
    w = (1 + 0.1 * _randn(K, seed=2)).requires_grad_(True)
    angles = _randn(cos_batch, L, K // 2, seed=3) * 3
    cos, sin = angles.cos(), angles.sin()
    g = _randn(B, L, N, K, seed=4)

    out = qk_norm_rope_fp32(x, w, cos, sin, 1e-6)
    dx, dw = torch.autograd.grad(out, (x, w), g)
    out_ref = qk_norm_rope_ref(x, w, cos, sin, 1e-6)
    dx_ref, dw_ref = torch.autograd.grad(out_ref, (x, w), g)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-5, atol=5e-5)


def test_qk_norm_rope_fp32_gradcheck_float64():
    x = _randn(2, 5, 3, 6, seed=1, dtype=torch.float64).requires_grad_(True)
    w = (1 + 0.1 * _randn(6, seed=2, dtype=torch.float64)).requires_grad_(True)
    angles = _randn(1, 5, 3, seed=3, dtype=torch.float64) * 3
    cos, sin = angles.cos(), angles.sin()
    assert torch.autograd.gradcheck(lambda a, b: qk_norm_rope_fp32(a, b, cos, sin, 1e-6), (x, w))
    # and the float64 function is the reference's maths
    torch.testing.assert_close(
        qk_norm_rope_fp32(x, w, cos, sin, 1e-6), qk_norm_rope_ref(x, w, cos, sin, 1e-6)
    )


def test_trailing_text_padding_is_skipped_exactly():
    """Caption positions padded in every sample are cut before the text MLP; the reference
    is each sample run alone on its valid tokens only (no mask: the unmasked attention
    path), and the padded values must not matter."""
    model = tiny_model(seed=4)
    x, t, text, _ = tiny_inputs(S=9)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, :5] = True  # positions 5..8 are padding in both samples
    junk = text.clone()
    junk[0, 3:] = 1e3
    junk[1, 5:] = -1e3
    out = model(x, t, text, mask)
    torch.testing.assert_close(model(x, t, junk, mask), out, rtol=0, atol=0)
    for b, n in ((0, 3), (1, 5)):
        alone = model(x[b : b + 1], t[b : b + 1], text[b : b + 1, :n])
        torch.testing.assert_close(out[b : b + 1], alone, rtol=1e-5, atol=1e-5)
