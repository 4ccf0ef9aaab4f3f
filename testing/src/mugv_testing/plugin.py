"""pytest plugin: markers, GPU skipping and a default timeout for distributed tests."""

from __future__ import annotations

import pytest

DISTRIBUTED_TIMEOUT_S = 300


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    config.addinivalue_line(
        "markers", "distributed: starts several processes (gloo on CPU); always has a timeout"
    )
    config.addinivalue_line("markers", "slow: takes more than ~30 s on 2 CPU cores")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    has_cuda = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(
                pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
            )
        if "distributed" in item.keywords and item.get_closest_marker("timeout") is None:
            # A hung collective must fail the test, never the whole CI run.
            item.add_marker(pytest.mark.timeout(DISTRIBUTED_TIMEOUT_S))
