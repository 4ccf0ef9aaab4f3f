"""Objective maths against hand-computed values (reference §D.2, §D.4)."""

import math

import pytest
import torch

from mugv_train.objectives import (
    TaskMix,
    add_noise,
    diffusion_dpo_loss,
    diffusion_kto_loss,
    drop_captions,
    flow_matching_loss,
    per_sample_flow_loss,
    sample_tasks,
    sample_timesteps,
    shift_ratio,
    shift_timesteps,
    task_weights,
    task_x_mask,
)


def test_shift_ratio_720p_5s_matches_reference():
    # 720 x 1280 pixels, 14 latent frames: sqrt(921600 / 512^2) * sqrt(14) = 1.875 * 3.7417
    r = shift_ratio(720, 1280, 14)
    assert r.item() == pytest.approx(1.875 * math.sqrt(14), rel=1e-12)
    assert r.item() == pytest.approx(7.016, abs=1e-3)
    assert shift_ratio(512, 512, 1).item() == pytest.approx(1.0)


def test_shift_timesteps_matches_reference_table():
    # Reference §D.2: ratio 7.0, base t = 1000 (1 - i / 25) -> 994.08, 987.73, 225.81 ...
    base = torch.tensor([1000.0, 960.0, 920.0, 40.0], dtype=torch.float64)
    got = shift_timesteps(base, 7.0)
    assert got.tolist() == pytest.approx([1000.0, 994.0828, 987.7301, 225.8065], abs=1e-3)


def test_sample_timesteps_is_logit_normal_then_shifted():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    t = sample_timesteps(6, height_px=720, width_px=1280, num_latent_frames=14, generator=g1)
    n = torch.randn(6, generator=g2)
    s = torch.sigmoid(n).double()
    r = 1.875 * math.sqrt(14)
    expected = 1000 * r * s / (1 + (r - 1) * s)
    torch.testing.assert_close(t.double(), expected, rtol=1e-6, atol=1e-4)
    assert ((t > 0) & (t < 1000)).all()


def test_shift_scale_multiplies_the_ratio():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    t = sample_timesteps(
        8, height_px=48, width_px=64, num_latent_frames=3, generator=g1, shift_scale=16.0
    )
    s = torch.sigmoid(torch.randn(8, generator=g2)).double()
    r = 16.0 * math.sqrt(48 * 64 / 512**2) * math.sqrt(3)  # 0.19 -> 3.0
    torch.testing.assert_close(t.double(), 1000 * r * s / (1 + (r - 1) * s), rtol=1e-6, atol=1e-4)
    from mugv_train import ObjectiveConfig

    with pytest.raises(ValueError, match="timestep_shift_scale"):
        ObjectiveConfig(timestep_shift_scale=0.0)


def test_add_noise_hand_values_and_clean_conditioning_frames():
    x0 = torch.tensor([2.0, -1.0]).view(1, 1, 2, 1, 1)
    eps = torch.tensor([4.0, 3.0]).view(1, 1, 2, 1, 1)
    xt = add_noise(x0, eps, torch.tensor([250.0]))
    assert xt.flatten().tolist() == pytest.approx([0.75 * 2 + 0.25 * 4, 0.75 * -1 + 0.25 * 3])
    xt = add_noise(x0, eps, torch.tensor([250.0]), torch.tensor([[False, True]]))
    assert xt.flatten().tolist() == pytest.approx([2.0, 0.0])


def test_flow_loss_hand_computed():
    # sample 0: target x0 - eps = [1, 1]; velocity [3, 1]; frame 1 is a conditioning frame
    # -> mean over frame 0 only = (3 - 1)^2 = 4.
    # sample 1: target [-1, -1]; velocity [0, 1] -> (1 + 4) / 2 = 2.5; task t2i -> x 0.3.
    x0 = torch.tensor([[1.0, 2.0], [0.0, 0.0]]).view(2, 1, 2, 1, 1)
    eps = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).view(2, 1, 2, 1, 1)
    vel = torch.tensor([[3.0, 1.0], [0.0, 1.0]]).view(2, 1, 2, 1, 1)
    pred = torch.cat([vel, torch.full_like(vel, 100.0)], dim=1)  # sigma half gets no loss
    mask = torch.tensor([[True, False], [True, True]])
    per = per_sample_flow_loss(pred, x0, eps, mask)
    assert per.tolist() == pytest.approx([4.0, 2.5])
    w = task_weights(["t2v", "t2i"])
    assert w.tolist() == pytest.approx([1.0, 0.3])
    assert flow_matching_loss(pred, x0, eps, mask, w).item() == pytest.approx((4.0 + 0.75) / 2)


def test_flow_loss_rejects_mismatched_prediction():
    with pytest.raises(ValueError, match="does not match latents"):
        per_sample_flow_loss(
            torch.zeros(1, 3, 2, 1, 1), torch.zeros(1, 2, 2, 1, 1), torch.zeros(1, 2, 2, 1, 1)
        )
    with pytest.raises(ValueError, match="unknown task"):
        task_weights(["t2x"])


def test_task_masks():
    g = torch.Generator().manual_seed(0)
    m = task_x_mask(["t2v", "i2v", "i2v_last", "i2v_random", "t2i"], 4, generator=g)
    assert m[0].all() and m[4].all()
    assert m[1].tolist() == [False, True, True, True]
    assert m[2].tolist() == [True, True, True, False]
    assert int((~m[3]).sum()) == 1
    tasks = sample_tasks([1, 5, 5], TaskMix(t2v=0.0, i2v=1.0), generator=g)
    assert tasks == ["t2i", "i2v", "i2v"]
    with pytest.raises(ValueError, match="sum to 1"):
        TaskMix(t2v=0.5)


def test_caption_dropout_replaces_valid_tokens_with_null():
    text = torch.ones(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    null = torch.arange(5 * 4, dtype=torch.float32).view(5, 4)
    out, dropped = drop_captions(text, mask, null, prob=1.0)
    assert dropped.all()
    torch.testing.assert_close(out[0, :2], null[:2])
    torch.testing.assert_close(out[0, 2], text[0, 2])  # padding untouched
    out, dropped = drop_captions(text, mask, null, prob=0.0)
    assert not dropped.any() and torch.equal(out, text)


def test_dpo_loss_hand_computed_and_gradient_direction():
    mw = torch.tensor([1.0], requires_grad=True)
    ml = torch.tensor([2.0], requires_grad=True)
    rw, rl = torch.tensor([1.5]), torch.tensor([1.5])
    loss = diffusion_dpo_loss(mw, ml, rw, rl, beta=2.0)
    # d = (1 - 1.5) - (2 - 1.5) = -1; L = -log sigmoid(-0.5 * 2 * -1) = log(1 + e^-1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    loss.backward()
    assert mw.grad.item() > 0 and ml.grad.item() < 0  # push winner error down, loser up


def test_kto_loss_hand_computed():
    model = torch.tensor([1.0, 1.25])
    ref = torch.tensor([1.5, 1.5])
    good = torch.tensor([True, False])
    loss = diffusion_kto_loss(model, ref, good, beta=2.0, lambda_undesirable=2.0)
    # rewards r = 2 * (1.5 - e) = [1.0, 0.5]; z0 = max(0, mean r) = 0.75
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = ((1 - sig(1.0 - 0.75)) + 2.0 * (1 - sig(0.75 - 0.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    fixed = diffusion_kto_loss(model, ref, good, beta=2.0, reference_point=0.0)
    assert fixed.item() == pytest.approx(((1 - sig(1.0)) + (1 - sig(-0.5))) / 2, rel=1e-6)
