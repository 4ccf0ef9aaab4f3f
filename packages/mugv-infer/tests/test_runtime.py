"""Step cache and CPU offload (the parallel primitives are tested in test_pipeline.py,
in the same spawned processes as the parallel pipeline: process start-up dominates)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mugv_infer import (
    BlockOffload,
    ComponentOffload,
    FlowEulerSampler,
    StepCache,
    enable_block_offload,
)


def _smooth_denoiser(calls):
    def denoiser(x, t, m):
        calls.append(int(t[0]))
        return -x * (1 + t.view(-1, 1, 1, 1, 1) / 2000)

    return denoiser


def test_step_cache_threshold_zero_is_exact_and_knob_skips():
    noise = torch.randn(1, 2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    sampler = FlowEulerSampler(num_steps=20)
    calls: list[int] = []
    ref = sampler.sample(_smooth_denoiser(calls), noise, height=64, width=64, guidance=2.0)
    assert len(calls) == 20
    exact = StepCache(threshold=0.0)
    calls.clear()
    out = sampler.sample(
        _smooth_denoiser(calls), noise, height=64, width=64, guidance=2.0, step_cache=exact
    )
    assert torch.equal(out, ref) and len(calls) == 20 and exact.skipped_steps == []
    loose = StepCache(threshold=0.5, warmup_steps=2, final_steps=1)
    calls.clear()
    out = sampler.sample(
        _smooth_denoiser(calls), noise, height=64, width=64, guidance=2.0, step_cache=loose
    )
    assert loose.skipped_steps and len(calls) == 20 - len(loose.skipped_steps)
    assert {0, 1, 19} <= set(loose.computed_steps)
    assert not torch.equal(out, ref)
    # Looser knob, more skips.
    looser = StepCache(threshold=2.0)
    sampler.sample(
        _smooth_denoiser([]), noise, height=64, width=64, guidance=2.0, step_cache=looser
    )
    assert len(looser.skipped_steps) > len(loose.skipped_steps)


class _Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
        self.head = nn.Linear(8, 2)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = h + torch.tanh(b(h))
        return self.head(h) * self.scale


def test_block_offload_same_output_and_one_block_resident():
    model = _Blocks()
    x = torch.randn(3, 4)
    ref = model(x)
    offload = enable_block_offload(model, "cpu", prefetch=0)
    seen = []
    for i, b in enumerate(model.blocks):
        b.register_forward_pre_hook(lambda m, a, i=i: seen.append((i, offload.resident())))
    assert torch.equal(model(x), ref)
    assert seen == [(i, [i]) for i in range(4)]
    assert offload.resident() == [] and offload.max_resident == 1
    with_prefetch = BlockOffload(_Blocks(), list(model.blocks), "cpu", prefetch=1)
    assert with_prefetch.prefetch == 1
    with pytest.raises(ValueError, match="blocks"):
        enable_block_offload(nn.Linear(2, 2), "cpu")


def test_component_offload_one_component_on_device():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    off = ComponentOffload("cpu")
    off.add(a)
    off.add(b)
    with off.on_device(a):
        assert off.is_on_device(a) and not off.is_on_device(b)
    assert not off.is_on_device(a)
    with pytest.raises(ValueError, match="add"), off.on_device(nn.Linear(1, 1)):
        pass
