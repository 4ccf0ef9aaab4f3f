"""Shared fixtures: one synthetic set and one curation run per test session."""

from __future__ import annotations

import pytest

from mugv_data import CurationConfig, curate
from mugv_data.synthetic import make_synthetic_set


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return root, {v.name: v for v in make_synthetic_set(root)}


@pytest.fixture(scope="session")
def synthetic_config():
    return CurationConfig.preset("synthetic")


@pytest.fixture(scope="session")
def curated(synthetic_set, synthetic_config, tmp_path_factory):
    root, truth = synthetic_set
    out = tmp_path_factory.mktemp("curated")
    result = curate(root, out, synthetic_config)
    return result, truth
