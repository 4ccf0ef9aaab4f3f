"""Speed paths of the VAE layers against the plain formulation.

``CausalConv3d.forward`` pads through the conv (no padded copy) and runs a one-frame input
between symmetric zero pads as a 2D conv with the middle time tap; the plain formulation,
``F.pad`` with the official time/space zeros then an unpadded ``conv3d``, is the reference.
"""

from __future__ import annotations

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
