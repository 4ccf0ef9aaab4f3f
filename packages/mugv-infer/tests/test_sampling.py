"""The flow sampler against known values (reference §D.2) and closed-form flows."""

from __future__ import annotations

import pytest
import torch

from mugv_infer import (
    CFGZeroStar,
    ClassifierFreeGuidance,
    FlowEulerSampler,
    extension_conditioning,
    frame_conditioning,
)
from mugv_testing import assert_close

# Reference §D.2: 25 steps at ratio 7.0 (720p, 14 latent frames, bf16 ratio).
OFFICIAL_TIMESTEPS_720P_5S = [
    1000, 994.08, 987.73, 980.89, 973.51, 965.52, 956.83, 947.37, 937.01, 925.62, 913.04,
    899.08, 883.50, 865.98, 846.15, 823.53, 797.47, 767.12, 731.34, 688.52, 636.36, 571.43,
    488.37, 378.38, 225.81,
]  # fmt: skip


@pytest.mark.parametrize("size", [(1280, 720), (720, 1280), (960, 960)], ids=str)
def test_official_timesteps_720p_5s(size):
    sampler = FlowEulerSampler(num_steps=25, bf16_ratio=True)
    assert sampler.shift_ratio(*size, 14) == 7.0
    ts = sampler.timesteps(*size, 14)
    assert ts.dtype == torch.float32
    assert_close(ts, torch.tensor(OFFICIAL_TIMESTEPS_720P_5S), atol=0.006, rtol=0)


def test_shift_ratio_bf16_quirk_vs_exact():
    exact = FlowEulerSampler(bf16_ratio=False)
    quirk = FlowEulerSampler(bf16_ratio=True)
    assert exact.shift_ratio(1280, 720, 14) == pytest.approx(7.016, abs=5e-4)
    assert quirk.shift_ratio(1280, 720, 10) == pytest.approx(5.906, abs=1e-3)
    assert exact.shift_ratio(1280, 720, 10) == pytest.approx(5.929, abs=1e-3)
    # No shift: the plain linear grid.
    ts = FlowEulerSampler(num_steps=4, shift=False).timesteps(64, 64, 2)
    assert ts.tolist() == [1000, 750, 500, 250]


def _point_mass_denoiser(x_data):
    """Exact velocity of the flow x_t = (1 - s) x_data + s eps towards one data point."""

    def denoiser(x, t, x_mask):
        s = (t / 1000).view(-1, 1, 1, 1, 1)
        return (x_data.repeat(x.shape[0] // x_data.shape[0], 1, 1, 1, 1) - x) / s

    return denoiser


def test_euler_follows_exact_flow_and_lands_on_data():
    torch.manual_seed(0)
    x_data = torch.randn(2, 4, 3, 4, 4, dtype=torch.float64)
    noise = torch.randn_like(x_data)
    sampler = FlowEulerSampler(num_steps=7, bf16_ratio=False)
    ts = sampler.timesteps(64, 64, 3)
    seen = []
    out = sampler.sample(
        _point_mass_denoiser(x_data),
        noise,
        height=64,
        width=64,
        guidance=None,
        callback=lambda i, t, z: seen.append(z.clone()),
    )
    # Timesteps are float32, so the path is exact to float32 precision.
    assert_close(out, x_data, dtype=torch.float32, name="final latent")
    for i, z in enumerate(seen[:-1]):
        s = ts[i + 1].double() / 1000
        assert_close(
            z, (1 - s) * x_data + s * noise, dtype=torch.float32, name=f"state after step {i}"
        )


def test_cfg_one_batch_order_and_combination():
    """The denoiser sees [cond, uncond] in one batch; v = u + w (c - u)."""
    calls = []

    def denoiser(x, t, m):
        calls.append(x.shape[0])
        b = x.shape[0] // 2
        out = torch.empty_like(x)
        out[:b] = 1.0  # conditional branch
        out[b:] = -1.0  # unconditional branch
        return out

    noise = torch.zeros(1, 2, 1, 2, 2)
    sampler = FlowEulerSampler(num_steps=1, shift=False)
    out = sampler.sample(denoiser, noise, height=16, width=16, guidance=3.0)
    assert calls == [2]
    # One step from t=1000 to 0: dt = 1, v = -1 + 3 (1 - -1) = 5.
    assert torch.all(out == 5.0)
    # guidance scale 1 skips the unconditional branch entirely.
    calls.clear()
    sampler.sample(denoiser, noise, height=16, width=16, guidance=1.0)
    assert calls == [1]


def test_cfg_zero_star_projection_and_zero_init():
    torch.manual_seed(1)
    c, u = torch.randn(2, 3, 1, 2, 2), torch.randn(2, 3, 1, 2, 2)
    g = CFGZeroStar(scale=4.0, zero_init_steps=1)
    assert torch.all(g.combine(c, u, 0, 10) == 0)
    out = g.combine(c, u, 1, 10)
    for i in range(2):
        s = (c[i] * u[i]).sum() / (u[i] * u[i]).sum()
        assert_close(out[i], s * u[i] + 4.0 * (c[i] - s * u[i]))
    # When v_uncond is the projection-free case s* = 1 it reduces to plain CFG.
    assert_close(
        CFGZeroStar(4.0).combine(u, u, 3, 10), ClassifierFreeGuidance(4.0).combine(u, u, 3, 10)
    )


def test_conditioning_frames_stay_clean_and_get_false_mask():
    torch.manual_seed(2)
    shape = (1, 4, 5, 2, 2)
    first, last = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    cond, mask = frame_conditioning(shape, {0: first, -1: last})
    assert mask.tolist() == [[True, False, False, False, True]]
    masks = []

    def denoiser(x, t, m):
        masks.append(m.clone())
        return torch.full_like(x, 3.0)

    out = FlowEulerSampler(num_steps=3).sample(
        denoiser, torch.randn(shape), height=32, width=32, guidance=2.0,
        cond_latents=cond, cond_mask=mask,
    )  # fmt: skip
    assert torch.equal(out[:, :, 0], first) and torch.equal(out[:, :, -1], last)
    assert all(m.tolist() == [[False, True, True, True, False]] * 2 for m in masks)


def test_extension_conditioning_takes_last_frames():
    clip = torch.arange(2 * 1 * 6 * 1 * 1, dtype=torch.float32).view(2, 1, 6, 1, 1)
    cond, mask = extension_conditioning(clip, context_frames=2, new_frames=3)
    assert cond.shape == (2, 1, 5, 1, 1)
    assert mask[0].tolist() == [True, True, False, False, False]
    assert torch.equal(cond[:, :, :2], clip[:, :, 4:])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: FlowEulerSampler(num_steps=0), "num_steps"),
        (lambda: frame_conditioning((1, 2, 3, 2, 2), {3: torch.zeros(1, 2, 2, 2)}), "outside"),
        (lambda: frame_conditioning((1, 2, 3, 2, 2), {0: torch.zeros(1, 3, 2, 2)}), r"\[B, C"),
        (lambda: extension_conditioning(torch.zeros(1, 2, 3, 2, 2), 4, 1), "context_frames"),
    ],
    ids=["steps", "index", "shape", "context"],
)
def test_bad_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_all_frames_conditioned_is_an_error():
    cond, mask = frame_conditioning((1, 2, 1, 2, 2), {0: torch.zeros(1, 2, 2, 2)})
    with pytest.raises(ValueError, match="nothing to generate"):
        FlowEulerSampler().sample(
            lambda x, t, m: x, torch.zeros(1, 2, 1, 2, 2), height=16, width=16,
            cond_latents=cond, cond_mask=mask,
        )  # fmt: skip
