"""Tiled encode/decode vs untiled.

Stated tolerance (README "Tiling"): ``tile_mode="exact"`` (layer-by-layer tiles, global
two-pass GroupNorm) matches untiled output within max-abs error 1e-4 x max|untiled| and
>= 80 dB PSNR on the random-init debug model, for encode and decode (measured ~120 dB, i.e.
float rounding). ``tile_mode="blend"``: with statistic-free norms its blending equals the
untiled result to float precision; with the real norms (per-tile statistics), at 64 x 64 px,
tile 6 / overlap 4, encode stays >= 17 dB and decode >= 12 dB (measured 20.4 / 13.8 dB).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from mugv_testing import assert_close
from mugv_vae import VAEConfig, VideoVAE
from mugv_vae._encoding import plan_tiles, tile_starts, tile_weight


@pytest.fixture(autouse=True)
def _one_thread():
    """Many small convs: one thread avoids OpenMP oversubscription on a loaded 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pair(
    tile: int, overlap: int, stat_free: bool, mode: str = "blend"
) -> tuple[VideoVAE, VideoVAE]:
    torch.manual_seed(0)
    base = VideoVAE(VAEConfig.preset("debug")).eval()
    tiled = VideoVAE(
        base.config.replace(tile_latent_size=tile, tile_latent_overlap=overlap, tile_mode=mode)
    )
    tiled.load_state_dict(base.state_dict())
    tiled.eval()
    if stat_free:  # eps >> variance: GroupNorm becomes a fixed affine map, no statistics
        for m in (*base.modules(), *tiled.modules()):
            if isinstance(m, torch.nn.GroupNorm):
                m.eps = 1e6
    return base, tiled


def _video(h: int, w: int, n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    small = torch.rand(1, 3, 2, 8, 8, generator=g)
    return torch.nn.functional.interpolate(small, size=(n, h, w), mode="trilinear") * 2 - 1


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / float(((a - b) ** 2).mean()))


@pytest.mark.parametrize("mode", ["blend", "exact"])
@pytest.mark.parametrize(("h", "w"), [(64, 64), (56, 80)], ids=["64x64", "56x80"])
def test_tiled_equals_untiled_without_norm_statistics(h: int, w: int, mode: str) -> None:
    base, tiled = _pair(tile=5, overlap=3, stat_free=True, mode=mode)
    x = _video(h, w)
    with torch.no_grad():
        z = base.encode(x)
        assert_close(tiled.encode(x), z, rtol=1e-3, atol=1e-6 * float(z.abs().max()))
        y = base.decode(z, num_frames=8)
        assert_close(tiled.decode(z, num_frames=8), y, rtol=1e-3, atol=1e-6 * float(y.abs().max()))


def test_tile_covering_the_frame_is_exact() -> None:
    base, tiled = _pair(tile=8, overlap=2, stat_free=False)
    x = _video(64, 64)
    with torch.no_grad():
        z = base.encode(x)
        assert torch.equal(tiled.encode(x), z)
        assert torch.equal(tiled.decode(z), base.decode(z))


@pytest.mark.parametrize(
    ("h", "w", "n", "tile"),
    [(64, 64, 8, 3), (56, 80, 9, 2), (60, 44, 17, 4)],
    ids=["64x64-8f-t3", "56x80-9f-t2", "60x44-17f-t4-not-mult-8"],
)
def test_exact_tiling_matches_untiled(h: int, w: int, n: int, tile: int) -> None:
    base, tiled = _pair(tile=tile, overlap=1, stat_free=False, mode="exact")
    x = _video(h, w, n)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 60 x 44 is not a multiple of 8 (documented)
        z = base.encode(x)
        zt = tiled.encode(x)
        y = base.decode(z, num_frames=n)
        yt = tiled.decode(z, num_frames=n)
    assert zt.shape == z.shape and yt.shape == y.shape
    for got, ref, name in ((zt, z, "encode"), (yt, y, "decode")):
        err = float((got - ref).abs().max())
        assert err <= 1e-4 * float(ref.abs().max()), f"{name}: max-abs error {err:.3g}"
        assert _psnr(got, ref) >= 80.0, f"{name}: {_psnr(got, ref):.1f} dB"


def test_exact_tiling_parks_activations_on_the_given_device() -> None:
    base, tiled = _pair(tile=3, overlap=1, stat_free=False, mode="exact")
    tiled.config = tiled.config.replace(tile_park_device="cpu")
    x = _video(48, 40)
    with torch.no_grad():
        z = base.encode(x)
        assert_close(tiled.encode(x), z, rtol=1e-4, atol=1e-5 * float(z.abs().max()))


def test_tile_mode_is_validated() -> None:
    with pytest.raises(ValueError, match="tile_mode"):
        VAEConfig.preset("debug", tile_latent_size=4, tile_latent_overlap=1, tile_mode="tiles")


def test_blend_tiling_within_stated_psnr_of_untiled() -> None:
    base, tiled = _pair(tile=6, overlap=4, stat_free=False, mode="blend")
    x = _video(64, 64)
    with torch.no_grad():
        z = base.encode(x)
        assert _psnr(tiled.encode(x), z) >= 17.0
        assert _psnr(tiled.decode(z), base.decode(z)) >= 12.0


def test_tile_plan_covers_and_weights_are_positive() -> None:
    assert tile_starts(10, 4, 2) == [0, 2, 4, 6]
    assert tile_starts(3, 4, 2) == [0]
    tiles = plan_tiles(1110, 832, 32, 8)  # official 3:4 size, not a multiple of 8
    assert max(t.y1 for t in tiles) == 138 and max(t.py1 for t in tiles) == 1110
    cover = torch.zeros(138, 104)
    for t in tiles:
        wt = tile_weight(
            t, t.y1 - t.y0, t.x1 - t.x0, 8, device=torch.device("cpu"), dtype=torch.float32
        )
        assert wt.min() > 0 and wt.max() <= 1
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert cover.min() >= 1


@pytest.mark.gpu
def test_exact_tiling_on_cuda_with_activations_parked_on_cpu() -> None:
    base, tiled = _pair(tile=3, overlap=1, stat_free=False, mode="exact")
    base, tiled = base.cuda(), tiled.cuda()
    tiled.config = tiled.config.replace(tile_park_device="cpu")
    x = _video(48, 40, 9).cuda()
    with torch.no_grad():
        z = base.encode(x)
        zt = tiled.encode(x)
        y = base.decode(z, num_frames=9)
        yt = tiled.decode(z, num_frames=9)
    assert zt.device.type == "cuda" and yt.device.type == "cuda"
    # cuDNN may use TF32 and other algorithms per shape: a looser bound than on CPU
    assert _psnr(zt, z) >= 60.0 and _psnr(yt, y) >= 60.0
