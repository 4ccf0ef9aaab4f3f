"""Shared fixtures for the mugv-dit tests.

Without CUDA, the Triton kernels run through the interpreter: the switch must be set
before any kernel module is imported (they are imported lazily, on first use).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mugv_dit import DiTConfig, MUGDiT


def tiny_config(**overrides) -> DiTConfig:
    """Head dim 12 (two frequencies per RoPE axis), 2 blocks, 4 latent channels."""
    fields = dict(depth=2, hidden_size=24, num_heads=2, in_channels=4, text_dim=16)
    fields.update(overrides)
    return DiTConfig(**fields)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter a random value (the real init zeroes the output layers)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.1 * noise)
        else:
            p.copy_(std * noise)
    return model


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> MUGDiT:
    torch.manual_seed(seed)
    return randomize(MUGDiT(tiny_config(**overrides)), seed).to(dtype)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes gain nothing from 2 intra-op threads, and on the shared 2-core CI machine
    2 OpenMP threads under load make every small op stall (measured 10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_inputs(B=2, T=3, H=5, W=7, C=4, S=6, E=16, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, T, H, W, generator=gen, dtype=dtype)
    t = torch.tensor([500.0, 37.0, 999.0, 1.0][:B], dtype=dtype)
    text = torch.randn(B, S, E, generator=gen, dtype=dtype)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, S // 2 :] = False  # sample 0 has a short caption
    return x, t, text, mask
