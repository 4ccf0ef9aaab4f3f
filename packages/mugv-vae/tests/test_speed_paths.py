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
