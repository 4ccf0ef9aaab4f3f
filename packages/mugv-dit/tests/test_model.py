"""MUGDiT behaviour: shapes, determinism, checkpointing, I2V semantics, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_inputs, tiny_model

from mugv_dit import MUGDiT, timestep_embedding


def test_output_shape_and_dtype_for_each_model_dtype():
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_model(dtype=dtype)
        x, t, text, mask = tiny_inputs()
        out = model(x, t, text, mask)
        assert out.shape == (2, 8, 3, 5, 7) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_bf16_tracks_fp32():
    x, t, text, mask = tiny_inputs()
    ref = tiny_model()(x, t, text, mask)
    out = tiny_model(dtype=torch.bfloat16)(x, t, text, mask)
    err = (out - ref).norm() / ref.norm()
    assert err < 0.05, f"relative error {err:.3g} between bf16 and fp32"


def test_determinism_and_seeded_init():
    x, t, text, mask = tiny_inputs()
    model = tiny_model()
    a, b = model(x, t, text, mask), model(x, t, text, mask)
    assert torch.equal(a, b)
    torch.manual_seed(5)
    m1 = MUGDiT(model.config)
    torch.manual_seed(5)
    m2 = MUGDiT(model.config)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_gradient_checkpointing_same_loss_and_grads():
    x, t, text, mask = tiny_inputs()
    grads = []
    for ckpt in (False, True):
        model = tiny_model(gradient_checkpointing=ckpt).train()
        loss = model(x, t, text, mask).square().mean()
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, rtol=1e-6, atol=1e-7, msg=name)


def test_defaults_equal_explicit_official_arguments():
    model = tiny_model()
    x, t, text, mask = tiny_inputs()
    B, _, T = x.shape[:3]
    implicit = model(x, t, text, mask)
    explicit = model(
        x, t, text[:, None], mask,  # official [B, 1, S, E] layout
        fps=torch.full((B,), 30.0),
        x_mask=torch.ones(B, T, dtype=torch.bool),
        frame_indices=torch.arange(T + 2)[None].expand(B, -1),
    )  # fmt: skip
    torch.testing.assert_close(implicit, explicit, rtol=0, atol=0)
    assert not torch.equal(model(x, t, text, mask, fps=24.0), implicit)  # fps is used
    torch.testing.assert_close(
        model(x, t, text, mask, fps=torch.full((B, 1), 30.0)), implicit, rtol=0, atol=0
    )


def test_padding_tokens_do_not_matter():
    """Packed cross-attention uses each caption's own length: padding values are ignored."""
    model = tiny_model()
    x, t, text, mask = tiny_inputs()
    garbage = text.clone()
    garbage[~mask] = 1e3
    torch.testing.assert_close(model(x, t, garbage, mask), model(x, t, text, mask))
    longer = torch.cat([text, torch.randn(2, 3, 16)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(x, t, longer, longer_mask), model(x, t, text, mask))


def test_batch_items_are_independent():
    model = tiny_model(dtype=torch.float64)
    x, t, text, mask = tiny_inputs(dtype=torch.float64)
    both = model(x, t, text, mask)
    for b in range(2):
        one = model(x[b : b + 1], t[b : b + 1], text[b : b + 1], mask[b : b + 1])
        torch.testing.assert_close(one[0], both[b], rtol=1e-6, atol=1e-7)


def test_timestep_is_cast_to_model_dtype_before_the_sinusoid():
    model = tiny_model(dtype=torch.bfloat16)
    x, _, text, mask = tiny_inputs()
    seen = []
    model.t_embedder.mlp[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    t = torch.tensor([994.08, 37.3])
    model(x, t, text, mask)
    want = timestep_embedding(torch.cat([t.bfloat16(), torch.zeros(2, dtype=torch.bfloat16)]))
    torch.testing.assert_close(seen[0], want.bfloat16(), rtol=0, atol=0)
    # 994.08 is not representable in bf16: it is rounded to 996 (bf16 spacing 4 there)
    assert t.bfloat16()[0].item() == 996.0


def _attn_inputs(model, *args, **kwargs):
    """Inputs of block 0's self-attention (the modulated LN output) and the final norm."""
    seen = {}

    def keep(name):
        def hook(module, args):
            seen[name] = args[0]

        return hook

    h1 = model.blocks[0].attn.register_forward_pre_hook(keep("attn"))
    h2 = model.final_layer.linear.register_forward_pre_hook(keep("final"))
    model(*args, **kwargs)
    h1.remove()
    h2.remove()
    return seen["attn"], seen["final"]


@pytest.mark.parametrize(
    "conditioned", [[0], [2], [0, 2]], ids=["first-frame", "last-frame", "first-and-last"]
)
def test_i2v_conditioned_frames_and_start_end_use_t0(conditioned):
    """Tokens of clean frames and the start/end tokens are modulated with t = 0 whatever the
    timestep; generated frames follow the timestep (reference §A.4)."""
    model = tiny_model()
    x, _, text, mask = tiny_inputs()
    B, _, T, H, W = x.shape
    S = ((H + 1) // 2) * ((W + 1) // 2)  # tokens per frame
    x_mask = torch.ones(B, T, dtype=torch.bool)
    x_mask[:, conditioned] = False
    runs = {tv: _attn_inputs(model, x, torch.full((B,), tv), text, mask, x_mask=x_mask)
            for tv in (0.0, 300.0, 900.0)}  # fmt: skip
    token_frame = torch.arange(T).repeat_interleave(S)
    clean = torch.cat([torch.tensor([True]), ~x_mask[0][token_frame], torch.tensor([True])])
    for tv in (300.0, 900.0):
        a0, a = runs[0.0][0], runs[tv][0]
        # block 0's input does not depend on t: clean tokens see identical modulation
        torch.testing.assert_close(a[:, clean], a0[:, clean], rtol=0, atol=0)
        assert not torch.allclose(a[:, ~clean], a0[:, ~clean])
    # the final layer: clean frames modulated with t0_vec. Check with an explicit recompute.
    fin = runs[900.0][1]
    t_vec0 = model.t_embedder(torch.zeros(B)) + model.fps_embedder(torch.full((B,), 30.0))
    shift0 = model.final_layer.scale_shift_table[0] + t_vec0
    scale0 = model.final_layer.scale_shift_table[1] + t_vec0
    # undo the modulation on clean tokens: the result must be exactly a unit LayerNorm output
    clean_vid = clean[1:-1]
    normed = (fin[:, clean_vid] - shift0[:, None]) / (1 + scale0[:, None])
    torch.testing.assert_close(
        normed.mean(-1), torch.zeros_like(normed.mean(-1)), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        normed.var(-1, unbiased=False), torch.ones_like(normed[..., 0]), atol=2e-3, rtol=0
    )


def test_x_mask_none_means_every_frame_generated():
    model = tiny_model()
    x, t, text, mask = tiny_inputs()
    ones = torch.ones(2, 3, dtype=torch.bool)
    torch.testing.assert_close(
        model(x, t, text, mask), model(x, t, text, mask, x_mask=ones), rtol=0, atol=0
    )
    half = ones.clone()
    half[:, 0] = False
    assert not torch.allclose(model(x, t, text, mask), model(x, t, text, mask, x_mask=half))


def test_frame_indices_move_the_temporal_rope():
    """RoPE makes attention depend on position differences only: shifting every frame index
    (start and end tokens included) by a constant leaves the output unchanged, while
    stretching the frame spacing changes it."""
    model = tiny_model()
    x, t, text, mask = tiny_inputs()
    T = x.shape[2]
    base = model(x, t, text, mask, frame_indices=torch.arange(T + 2))
    torch.testing.assert_close(model(x, t, text, mask), base, rtol=0, atol=0)  # the default
    shifted = model(x, t, text, mask, frame_indices=torch.arange(T + 2) + 7)
    torch.testing.assert_close(shifted, base, rtol=1e-4, atol=1e-5)
    stretched = model(x, t, text, mask, frame_indices=2 * torch.arange(T + 2))
    assert (stretched - base).abs().max() > 1e-3


def test_rope_angles_are_position_times_frequency():
    """Hand-computed angles for K = 12 (two frequencies per axis: 1 and 10000^-1/2)."""
    from mugv_dit.layers.rope import rope_3d_freqs

    frames = torch.tensor([[3, 5, 9, 11]])  # start token, two frames, end token
    cos, sin = rope_3d_freqs((2, 2, 3), frames, head_dim=12)
    f = torch.tensor([1.0, 0.01])

    def angles(h, w, t):
        return torch.cat([h * f, w * f, t * f])

    # token order: start, frame 0 (2 x 3 grid), frame 1, end
    expected = {0: angles(0, 0, 3), 1 + 4: angles(1, 1, 5), 1 + 6 + 2: angles(0, 2, 9),
                13: angles(1, 2, 11)}  # fmt: skip
    assert cos.shape == (1, 14, 6)
    for token, a in expected.items():
        torch.testing.assert_close(cos[0, token], a.cos())
        torch.testing.assert_close(sin[0, token], a.sin())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(x=torch.randn(2, 5, 3, 4, 4)), "5 latent channels but the model expects in_channels=4"),
        (dict(x=torch.randn(2, 4, 4, 4)), r"latent video \[B, C, T, H, W\]"),
        (dict(text=torch.randn(2, 6, 15)), "text width 15 does not match the model's text_dim=16"),
        (dict(text=torch.randn(3, 6, 16)), "text batch 3 does not match the latent batch 2"),
        (dict(timestep=torch.tensor([1.0, 2.0, 3.0])), r"timestep must have shape \[B\]"),
        (dict(text_mask=torch.ones(2, 5, dtype=torch.bool)), r"text_mask must be \[B, S\]"),
        (dict(text_mask=torch.tensor([[0] * 6, [1] * 6]).bool()), r"samples \[0\] have no valid text token"),
        (dict(x_mask=torch.ones(2, 4, dtype=torch.bool)), r"x_mask must be \[B, T\]"),
        (dict(x_mask=torch.ones(2, 3)), "x_mask must be a bool tensor"),
        (dict(fps=torch.ones(3)), "fps must be a number"),
        (dict(frame_indices=torch.arange(5) + 476), "outside the temporal RoPE table"),
        (dict(frame_indices=torch.arange(4)), r"frame_indices must be \[B, T \+ 2\]"),
        (dict(x=torch.randn(2, 4, 3, 4, 4).long()), "floating-point"),
    ],
    ids=["channels", "rank", "text-width", "text-batch", "timestep-batch", "text-mask-shape",
         "empty-caption", "x-mask-shape", "x-mask-dtype", "fps-batch", "frames-beyond-rope",
         "frame-indices-shape", "int-latents"],
)  # fmt: skip
def test_bad_input_errors(change, message):
    model = tiny_model()
    x, t, text, mask = tiny_inputs(H=4, W=4)
    args = dict(x=x, timestep=t, text=text, text_mask=mask) | change
    with pytest.raises(ValueError, match=message):
        model(**args)


def test_grid_beyond_the_spatial_table():
    model = tiny_model(rope_space_positions=3)
    x, t, text, mask = tiny_inputs(H=8, W=4)
    with pytest.raises(ValueError, match="exceeds the spatial RoPE table of 3"):
        model(x, t, text, mask)


def test_device_mismatch_is_reported():
    model = tiny_model().to("meta")
    x, t, text, mask = tiny_inputs()
    with pytest.raises(ValueError, match="model is on meta"):
        model(x, t, text, mask)


def test_block_compiles_without_graph_breaks():
    """``fullgraph=True`` raises on any graph break; the eager backend skips code generation."""
    model = tiny_model()
    block = model.blocks[0]
    B, L, D = 2, 9, 24
    g = torch.Generator().manual_seed(0)
    args = (
        torch.randn(B, L, D, generator=g),
        torch.randn(B, 2, 6 * D, generator=g),
        torch.rand(B, L, generator=g) > 0.5,
        torch.ones(1, L, 6),
        torch.zeros(1, L, 6),
        torch.randn(B, 4, D, generator=g),
        torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool),
    )
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), block(*args), rtol=0, atol=0)
