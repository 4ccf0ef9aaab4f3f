"""Shared fixtures: a tiny DiT size and a 1-process Megatron setup."""

from __future__ import annotations

import warnings

import pytest

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")


@pytest.fixture(scope="session")
def megatron_tp1():
    """Initialise torch.distributed (gloo, world 1) and Megatron's groups once."""
    from mugv_train.config import ParallelConfig
    from mugv_train.parallel import init_distributed

    init_distributed(ParallelConfig())
    yield
