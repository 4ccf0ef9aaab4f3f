"""VideoVAE: official layout, shapes, frame rules, chunking, sampling, bad input."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from vae_official_layout import DEBUG_LAYOUT_ARGS, official_vae_layout

from mugv_testing import assert_close
from mugv_vae import LATENT_SCALE, LATENT_SHIFT, SCALING_FACTOR, VAEConfig, VideoVAE

H, W = 16, 24  # debug frames: latent 2 x 3
# same maths through differently batched kernels: float32 summation-order noise only
TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convs: one intra-op thread avoids OpenMP oversubscription on a loaded 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vae() -> VideoVAE:
    torch.manual_seed(0)
    return VideoVAE(VAEConfig.preset("debug")).eval()


def clip(n: int, seed: int = 0, h: int = H, w: int = W) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, n, h, w, generator=g) * 2 - 1


# ---------------------------------------------------------------------------------------
# official layout
# ---------------------------------------------------------------------------------------


def test_mugv_preset_matches_official_layout_on_meta() -> None:
    with torch.device("meta"):
        model = VideoVAE(VAEConfig.preset("mugv"))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = official_vae_layout()
    assert sorted(set(want) - set(got)) == []
    assert sorted(set(got) - set(want)) == []
    assert {k: got[k] for k in want} == want
    # spot checks quoted from the reference text
    assert got["spatial_vae.module.encoder.conv_out.weight"] == (8, 512, 3, 3)
    assert got["spatial_vae.module.decoder.conv_in.weight"] == (512, 4, 3, 3)
    assert got["temporal_vae.encoder.conv2.conv.weight"] == (48, 512, 1, 1, 1)
    assert got["temporal_vae.decoder.conv_blocks.2.conv.weight"] == (1024, 512, 3, 3, 3)
    assert not any("quant_conv" in k and k.startswith("spatial") for k in got)
    # a strict load of a state dict in the official layout (meta tensors, assign=True)
    meta_state = {k: torch.empty(s, device="meta") for k, s in want.items()}
    model.load_state_dict(meta_state, strict=True, assign=True)


def test_mugv_parameter_count() -> None:
    with torch.device("meta"):
        model = VideoVAE(VAEConfig.preset("mugv"))
    want = sum(
        math.prod(s) for k, s in official_vae_layout().items() if k not in {"scale", "shift"}
    )
    assert sum(p.numel() for p in model.parameters()) == want == 411_752_900


def test_official_checkpoint_loads_strictly(tmp_path) -> None:
    layout = official_vae_layout(**DEBUG_LAYOUT_ARGS)
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(s, generator=g) for k, s in layout.items()}
    path = tmp_path / "vae.pt"
    torch.save(state, path)
    model = VideoVAE.from_official(path, VAEConfig.preset("debug"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    # also through from_pretrained on a file
    model2 = VideoVAE.from_pretrained(path, config=VAEConfig.preset("debug"))
    assert torch.equal(model2.logvar, state["logvar"])


def test_checkpoint_with_wrong_keys_names_them(tmp_path) -> None:
    layout = official_vae_layout(**DEBUG_LAYOUT_ARGS)
    state = {k: torch.zeros(s) for k, s in layout.items()}
    del state["temporal_vae.quant_conv.conv.bias"]
    state["spatial_vae.module.encoder.quant_conv.weight"] = torch.zeros(8, 8, 1, 1)
    path = tmp_path / "vae.pt"
    torch.save(state, path)
    with pytest.raises(KeyError) as err:
        VideoVAE.from_official(path, VAEConfig.preset("debug"))
    msg = str(err.value)
    assert "temporal_vae.quant_conv.conv.bias" in msg and "missing" in msg
    assert "spatial_vae.module.encoder.quant_conv.weight" in msg and "unexpected" in msg


def test_constants() -> None:
    assert SCALING_FACTOR == 0.18215
    assert len(LATENT_SHIFT) == len(LATENT_SCALE) == 24
    assert LATENT_SHIFT[2] == -0.796875 and LATENT_SCALE[4] == 3.3516
    model = VideoVAE(VAEConfig.preset("debug"))
    assert_close(model.scale.flatten(), torch.tensor(LATENT_SCALE))
    assert_close(model.shift.flatten(), torch.tensor(LATENT_SHIFT))
    assert model.logvar.shape == () and float(model.logvar.detach()) == 4.0


# ---------------------------------------------------------------------------------------
# shapes and frame rules
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "t"), [(1, 1), (8, 1), (9, 2), (17, 3), (73, 10), (105, 14)], ids=lambda v: str(v)
)
def test_encode_decode_shapes(vae: VideoVAE, n: int, t: int) -> None:
    x = clip(n)
    with torch.no_grad():
        z = vae.encode(x)
        assert tuple(z.shape) == (1, 24, t, H // 8, W // 8)
        assert vae.latent_shape(n, H, W) == tuple(z.shape[1:])
        # official formula (§B.6) on the replicated count
        nr = n + 7 if n % 8 == 1 else n
        assert t == 6 * (nr // 48) + math.ceil((nr % 48) / 8)
        y = vae.decode(z, num_frames=n)
        assert tuple(y.shape) == (1, 3, n, H, W)
        assert tuple(vae.decode(z).shape) == (1, 3, 8 * t, H, W)


def test_sizes_not_multiple_of_8_are_floored(vae: VideoVAE) -> None:
    assert vae.latent_shape(105, 1110, 832) == (24, 14, 138, 104)
    x = clip(8, h=22, w=17)
    with pytest.warns(UserWarning, match="not a multiple of 8"), torch.no_grad():
        z = vae.encode(x)
    assert tuple(z.shape) == (1, 24, 1, 2, 2)
    with torch.no_grad():
        assert tuple(vae.decode(z, 8).shape) == (1, 3, 8, 16, 16)


def test_n_equal_1_mod_8_replicates_first_frame(vae: VideoVAE) -> None:
    x = clip(9)
    rep = torch.cat([x[:, :, :1].expand(-1, -1, 7, -1, -1), x], dim=2)  # 16 frames
    with torch.no_grad():
        assert_close(vae.encode(x), vae.encode(rep), **TOL)
        z = vae.encode(x)
        full = vae.decode(z)  # 16 frames
        assert_close(vae.decode(z, num_frames=9), full[:, :, 7:], **TOL)


def test_other_n_are_front_padded_with_zero_features(vae: VideoVAE) -> None:
    x = clip(13)
    with torch.no_grad():
        z = vae.encode(x)
        # reference: pad the 512-channel features (not the pixels) with 3 zero frames
        feats = vae._spatial_encode(x)
        feats = torch.cat([torch.zeros_like(feats[:, :, :3]), feats], dim=2)
        ref = []
        for g in range(2):
            m = vae.temporal_vae.quant_conv(
                vae.temporal_vae.encoder(feats[:, :, 8 * g : 8 * g + 8])
            )
            ref.append(m[:, :24])
        assert_close(z, vae.normalize(torch.cat(ref, dim=2)), **TOL)
        full = vae.decode(z)
        assert_close(vae.decode(z, num_frames=13), full[:, :, 3:], **TOL)


def test_encode_image_equals_eight_repeated_frames(vae: VideoVAE) -> None:
    img = clip(1)[:, :, 0]
    with torch.no_grad():
        a = vae.encode_image(img)
        b = vae.encode(img[:, :, None].repeat(1, 1, 8, 1, 1))
        c = vae.encode(img[:, :, None])  # N = 1 replicates to the same 8 frames
    assert a.shape == (1, 24, 1, 2, 3)
    assert_close(a, b, **TOL)
    assert_close(a, c, **TOL)


def test_groups_are_encoded_independently(vae: VideoVAE) -> None:
    x = clip(24)
    y = x.clone()
    y[:, :, 8:16] = clip(8, seed=5)
    with torch.no_grad():
        za, zb = vae.encode(x), vae.encode(y)
    assert_close(za[:, :, 0], zb[:, :, 0])
    assert_close(za[:, :, 2], zb[:, :, 2])
    assert (za[:, :, 1] - zb[:, :, 1]).abs().max() > 1e-4


def test_chunked_encode_equals_full(vae: VideoVAE) -> None:
    x = clip(56)
    with torch.no_grad():
        full = vae.encode(x)
        small = VideoVAE(vae.config.replace(micro_frame_size=8, micro_batch_size=1))
        small.load_state_dict(vae.state_dict())
        big = VideoVAE(vae.config.replace(micro_frame_size=64, micro_batch_size=64))
        big.load_state_dict(vae.state_dict())
        assert_close(small.eval().encode(x), full, **TOL)
        assert_close(big.eval().encode(x), full, **TOL)


def _official_decode(vae: VideoVAE, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Reference for §B.5: chunks of 6 latents decoded alone, each chunk cropped at its front
    to min(48, remaining) frames, then the 2D decoder one frame at a time."""
    z = latents * vae.scale + vae.shift
    feats, remaining = [], num_frames
    for s in range(0, z.shape[2], 6):
        zc = z[:, :, s : s + 6]
        x = vae.temporal_vae.decoder(vae.temporal_vae.post_quant_conv(zc))
        nf = min(48, remaining)
        pad = (8 - nf % 8) % 8
        feats.append(x[:, :, pad:])
        remaining -= 48
    f = torch.cat(feats, dim=2)
    dec = vae.spatial_vae.module.decoder
    frames = [dec(f[:, :, i] / SCALING_FACTOR) for i in range(f.shape[2])]
    return torch.stack(frames, dim=2)


def test_official_six_latent_decode_reproduced(vae: VideoVAE) -> None:
    n = 58  # 48 + 10 frames: the last chunk is padded by 6 at its front
    torch.manual_seed(3)
    z = torch.randn(1, 24, vae.latent_shape(n, H, W)[1], 2, 3)
    assert z.shape[2] == 8
    with torch.no_grad():
        got = vae.decode(z, num_frames=n)
        want = _official_decode(vae, z, n)
    assert_close(got, want, **TOL)


def test_decode_windows_are_independent(vae: VideoVAE) -> None:
    torch.manual_seed(4)
    z = torch.randn(1, 24, 8, 2, 3)
    with torch.no_grad():
        w4 = vae.decode(z, window=4)
        parts = torch.cat([vae.decode(z[:, :, :4], window=8), vae.decode(z[:, :, 4:], window=8)], 2)
        assert_close(w4, parts, **TOL)
        w1 = vae.decode(z, window=1)
        assert_close(w1[:, :, 8:16], vae.decode(z[:, :, 1:2]), **TOL)
        # windows see neighbours: a window of 8 differs from windows of 1
        assert (vae.decode(z, window=8) - w1).abs().max() > 1e-4


def test_iter_decode_concatenates_to_decode(vae: VideoVAE) -> None:
    torch.manual_seed(5)
    z = torch.randn(1, 24, 5, 2, 3)
    with torch.no_grad():
        chunks = list(vae.iter_decode(z, num_frames=37, window=2))
        assert [c.shape[2] for c in chunks] == [13, 16, 8]  # 3 pad frames at the front
        assert_close(torch.cat(chunks, 2), vae.decode(z, num_frames=37, window=2))


# ---------------------------------------------------------------------------------------
# posterior
# ---------------------------------------------------------------------------------------


def test_sample_uses_cpu_generator_and_logvar_clamp(vae: VideoVAE) -> None:
    x = clip(8)
    with torch.no_grad():
        mean, logvar = vae.encode_moments(x)
        s1 = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
        s2 = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
        eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
        want = vae.normalize(mean + torch.exp(0.5 * logvar) * eps)
        assert_close(s1, s2)
        assert_close(s1, want)
        assert_close(vae.encode(x), vae.normalize(mean))
        assert (s1 - vae.encode(x)).abs().max() > 1e-3
        # longer clips: one draw per 6-latent micro-chunk, in order (official per-chunk draws)
        mean = torch.zeros(1, 24, 8, 2, 3)
        g = torch.Generator().manual_seed(9)
        want = torch.cat(
            [torch.randn(1, 24, 6, 2, 3, generator=g), torch.randn(1, 24, 2, 2, 3, generator=g)], 2
        )
        got = vae.sample_posterior(mean, torch.zeros_like(mean), torch.Generator().manual_seed(9))
        assert_close(got, want)
    clamped = VideoVAE(vae.config)
    clamped.load_state_dict(vae.state_dict())
    with torch.no_grad():
        clamped.temporal_vae.quant_conv.conv.bias[24:] = 1e4
        _, lv = clamped.encode_moments(x)
        assert torch.all(lv == 20.0)
        clamped.temporal_vae.quant_conv.conv.bias[24:] = -1e4
        assert torch.all(clamped.encode_moments(x)[1] == -30.0)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(vae: VideoVAE) -> None:
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        vae.encode(torch.zeros(1, 4, 8, H, W))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        vae.encode(torch.full((1, 3, 8, H, W), 2.0))
    with pytest.raises(ValueError, match="B, 3, N, H, W"):
        vae.encode(torch.zeros(3, 8, H, W))
    with pytest.raises(ValueError, match="at least 8 x 8"):
        vae.encode(torch.zeros(1, 3, 8, 4, W))
    with pytest.raises(TypeError, match="float"):
        vae.encode(torch.zeros(1, 3, 8, H, W, dtype=torch.uint8))
    with pytest.raises(ValueError, match="num_frames=30"):
        vae.decode(torch.zeros(1, 24, 2, 2, 3), num_frames=30)
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 4, 2, 2, 3))
    with pytest.raises(ValueError, match=r"CPU torch\.Generator"):
        cuda_gen = SimpleNamespace(device=torch.device("cuda"))  # stands in for a CUDA generator
        vae.sample_posterior(torch.zeros(1), torch.zeros(1), cuda_gen)  # type: ignore[arg-type]
    # tiny overshoot is clamped silently
    x = clip(8).clamp(-1, 1) * (1 + 5e-4)
    with torch.no_grad():
        assert_close(vae.encode(x), vae.encode(x.clamp(-1, 1)))


def test_config_checks_and_round_trip() -> None:
    cfg = VAEConfig.preset("debug", decode_window=4)
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown VAE preset"):
        VAEConfig.preset("huge")
    with pytest.raises(ValueError, match="multiple of 8"):
        VAEConfig.preset("debug", micro_frame_size=12)
    with pytest.raises(ValueError, match="unknown VAEConfig fields"):
        VAEConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="tile_latent_overlap"):
        VAEConfig.preset("debug", tile_latent_size=4, tile_latent_overlap=4)
