"""Losses: known values and properties."""

from __future__ import annotations

import pytest
import torch

from mugv_testing import assert_close
from mugv_vae import (
    LPIPS,
    PatchDiscriminator3D,
    VAELoss,
    adaptive_l1,
    hinge_d_loss,
    hinge_g_loss,
    kl_loss,
    saliency_weights,
)

TINY = (4, 4, 8, 8, 8)


def test_kl_known_values() -> None:
    z = torch.zeros(2, 24, 1, 2, 2)
    assert float(kl_loss(z, z)) == 0.0
    # mean 1, logvar 0: 0.5 per element, 96 elements per sample
    assert_close(kl_loss(z + 1, z), torch.tensor(48.0))
    # mean 0, logvar log 2: 0.5 * (2 - 1 - ln 2) per element
    lv = torch.full_like(z, float(torch.log(torch.tensor(2.0))))
    assert_close(kl_loss(z, lv), torch.tensor(96 * 0.5 * (1 - 0.6931471805599453)), rtol=1e-5)


def test_hinge_known_values() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # relu(1 - real) = [0, 0.5] -> 0.25; relu(1 + fake) = [0, 1] -> 0.5
    assert_close(hinge_d_loss(real, fake), torch.tensor(0.375))
    assert_close(hinge_g_loss(fake), torch.tensor(1.0))


def test_adaptive_l1_static_clip_is_plain_l1_and_motion_gets_weight() -> None:
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 3, 1, 16, 16, generator=g) * 2 - 1
    static = frame.expand(-1, -1, 4, -1, -1).contiguous()
    recon = static + 0.1 * torch.randn(static.shape, generator=g)
    # no temporal change: s = 0, weights 1 everywhere -> plain l1
    assert_close(adaptive_l1(recon, static), (recon - static).abs().mean())
    moving = static.clone()
    moving[:, :, 2:, 4:8, 4:8] = 1.0  # a square appears at frame 2: edges change in time
    w = saliency_weights(moving)
    assert w.shape == (1, 1, 4, 16, 16)
    assert float(w.min()) >= 1.0
    assert_close(w.mean() - 1, torch.tensor(1.0), rtol=1e-5)  # s / mean(s) has mean 1
    assert float(w[0, 0, 1, 3:9, 3:9].max()) > float(w[0, 0, 1, 12:, 12:].max())
    assert_close(saliency_weights(moving[:, :, :1]), torch.ones(1, 1, 1, 16, 16))


def _lpips_file(tmp_path) -> tuple[LPIPS, object]:
    torch.manual_seed(0)
    net = LPIPS(TINY)
    with torch.no_grad():
        for k in range(5):
            getattr(net, f"lin{k}").model[1].weight.abs_()
    path = tmp_path / "lpips.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_lpips_loads_from_a_path_and_is_a_distance(tmp_path) -> None:
    net, path = _lpips_file(tmp_path)
    loaded = LPIPS.from_file(path, TINY)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert "net.features.0.weight" in net.state_dict() and "lin4.model.1.weight" in net.state_dict()
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    b = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert_close(loaded(a, a), torch.zeros(2), atol=1e-7)
    d = loaded(a, b)
    assert d.shape == (2,) and bool((d > 0).all())
    assert_close(loaded(a, b), loaded(b, a), rtol=1e-5)
    video = torch.stack([a, b], dim=2)  # [2, 3, 2, H, W]
    assert loaded(video, video.flip(2)).shape == (2,)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        LPIPS.from_file(tmp_path / "missing.pt")
    with pytest.raises(KeyError, match="shape mismatches"):
        LPIPS.from_file(path)  # VGG16 widths do not match the tiny file


def test_discriminator_and_combined_loss(tmp_path) -> None:
    disc = PatchDiscriminator3D(channels=8, layers=3)
    video = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    logits = disc(video)
    assert logits.shape[:2] == (2, 1) and logits.ndim == 5
    net, _ = _lpips_file(tmp_path)
    loss = VAELoss(lpips=net)
    mean = torch.zeros(2, 24, 1, 4, 4, requires_grad=True)
    recon = (video + 0.1).requires_grad_(True)
    total, parts = loss(recon, video, mean, torch.zeros_like(mean), logits_fake=logits)
    w = loss.weights
    want = w.l1 * parts["l1"] + w.mse * parts["mse"] + w.perceptual * parts["perceptual"]
    want += w.kl * parts["kl"] + w.gan * parts["gan"]
    assert abs(parts["total"] - want) < 1e-5
    assert abs(parts["l1"] - 0.1) < 1e-5 and abs(parts["mse"] - 0.01) < 1e-6
    total.backward()
    assert recon.grad is not None and disc.main[0].weight.grad is not None
