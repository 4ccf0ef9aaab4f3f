"""Speed paths of the VAE layers against the plain formulation.

``CausalConv3d.forward`` pads through the conv (no padded copy) and runs a one-frame input
between symmetric zero pads as a 2D conv with the middle time tap; the plain formulation,
``F.pad`` with the official time/space zeros then an unpadded ``conv3d``, is the reference.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from mugv_vae._layers import CausalConv3d


def _plain(m: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
    s = m.space_pad
    xp = F.pad(x, (s, s, s, s, *m.time_pad))
    return F.conv3d(xp, m.conv.weight, m.conv.bias, m.conv.stride)


_CONVS = [
    ("k3-s1", 3, (1, 1, 1), True),
    ("k3-s1-nobias", 3, (1, 1, 1), False),
    ("k3-time-stride2", 3, (2, 1, 1), True),
    ("k1", 1, (1, 1, 1), True),
]
# one frame padded (0, 1) by the stride-2 conv is shorter than its kernel: invalid for both
_CASES = [
    pytest.param(k, stride, bias, t, id=f"{name}-T{t}")
    for name, k, stride, bias in _CONVS
    for t in (1, 2, 5, 8)
    if not (t == 1 and stride[0] == 2)
]


@pytest.mark.parametrize(("k", "stride", "bias", "frames"), _CASES)
def test_causal_conv3d_equals_pad_then_conv(k, stride, bias, frames):
    torch.manual_seed(0)
    m = CausalConv3d(5, 7, k, stride=stride, bias=bias)
    x = torch.randn(2, 5, frames, 9, 11)
    x.requires_grad_(True)
    out = m(x)
    ref = _plain(m, x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (x, m.conv.weight), g)
    grads_ref = torch.autograd.grad(ref, (x, m.conv.weight), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def _debug_vae(**fields):
    from mugv_vae import VAEConfig, VideoVAE

    torch.manual_seed(0)
    model = VideoVAE(VAEConfig.preset("debug").replace(**fields)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # noise on every weight: no zero-initialised layer hides a path
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize(
    ("frames", "fields"),
    [
        pytest.param(9, {}, id="N9"),
        pytest.param(17, {"micro_frame_size": 8}, id="N17-chunks-of-8"),
        pytest.param(9, {"tile_latent_size": 2, "tile_latent_overlap": 1}, id="N9-exact-tiles"),
        pytest.param(
            9,
            {"tile_latent_size": 3, "tile_latent_overlap": 1, "tile_mode": "blend"},
            id="N9-blend-tiles",
        ),
    ],
)
def test_replicated_first_frame_runs_the_trunk_once(frames, fields):
    """N = 1 (mod 8): the trunk runs once for frame 0 and its features are replicated; the
    reference is the clip with the 7 copies of frame 0 put in front as pixels (N + 7 = 0
    mod 8, so no replication), which the model encodes frame by frame."""
    model = _debug_vae(**fields)
    g = torch.Generator().manual_seed(2)
    video = torch.rand(1, 3, frames, 24, 24, generator=g) * 2 - 1
    padded = torch.cat([video[:, :, :1].expand(-1, -1, 7, -1, -1), video], dim=2)
    with torch.no_grad():
        mean, logvar = model.encode_moments(video)
        mean_ref, logvar_ref = model.encode_moments(padded)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logvar, logvar_ref, rtol=1e-5, atol=1e-5)
    if "tile_latent_size" not in fields:  # trunk_features is untiled
        torch.testing.assert_close(
            model.trunk_features(video), model.trunk_features(padded), rtol=1e-5, atol=1e-5
        )


# ---------------------------------------------------------------------------------------
# exact tiling: tiles sized by an element budget, GroupNorm statistics merged per tile
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "edge"), [(10, 4), (40, 32), (8, 8), (7, 100), (33, 5)])
def test_spans_are_balanced_and_cover(n, edge):
    from mugv_vae._tiled import _spans

    spans = _spans(n, edge)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    sizes = [e - s for s, e in spans]
    assert max(sizes) <= edge and max(sizes) - min(sizes) <= 1
    assert len(spans) == -(-n // edge)


def test_tiles_respect_the_budget_or_the_scaled_edge():
    from mugv_vae._tiled import TiledRunner

    cpu = torch.device("cpu")
    runner = TiledRunner(4, (10, 20), cpu, cpu, budget=4 * 256 * 32 * 32)
    # a narrow full-resolution map: the scaled edge (32 px) decides
    for y0, y1, x0, x1 in runner._tiles(80, 160, per_pixel=4 * 256):
        assert y1 - y0 <= 32 and x1 - x0 <= 32
    # a latent-resolution map that fits the budget: one tile
    assert runner._tiles(10, 20, per_pixel=2 * 8 * 256) == [(0, 10, 0, 20)]
    # in between: tiles larger than the scaled edge, each within the budget
    tiles = runner._tiles(40, 80, per_pixel=4 * 512)
    assert 1 < len(tiles) < len(TiledRunner(4, (10, 20), cpu, cpu)._tiles(40, 80))
    assert all((y1 - y0) * (x1 - x0) * 4 * 512 <= runner.budget for y0, y1, x0, x1 in tiles)


def test_group_norm_statistics_merged_over_tiles_equal_float64():
    from mugv_vae._tiled import TiledRunner

    cpu = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 5, 13, 17, generator=g) * 3 + 2  # [B, C, T, H, W]
    norm = torch.nn.GroupNorm(4, 8)
    mean, var = TiledRunner(2, (3, 4), cpu, cpu).gn_stats(x, norm)  # many small tiles
    ref = x.double().reshape(3, 4, -1)
    torch.testing.assert_close(mean, ref.mean(-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var, ref.var(-1, correction=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("budget", ["scaled-edge-only", "default"])
def test_exact_tiling_equals_untiled_with_and_without_the_budget(budget, monkeypatch):
    """Both tile plans (every layer at the scaled edge; low-resolution layers in few tiles)
    against the untiled model, encode and decode."""
    from mugv_vae import _tiled

    if budget == "scaled-edge-only":
        init = _tiled.TiledRunner.__init__

        def no_budget(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.budget = 0

        monkeypatch.setattr(_tiled.TiledRunner, "__init__", no_budget)
    base = _debug_vae()
    tiled = _debug_vae(tile_latent_size=2, tile_latent_overlap=1)
    g = torch.Generator().manual_seed(3)
    video = torch.rand(1, 3, 8, 24, 24, generator=g) * 2 - 1
    with torch.no_grad():
        z = base.encode(video)
        zt = tiled.encode(video)
        y = base.decode(z, 8)
        yt = tiled.decode(z, 8)
    for got, ref in ((zt, z), (yt, y)):
        err = float((got - ref).abs().max())
        assert err <= 1e-4 * float(ref.abs().max()), err
