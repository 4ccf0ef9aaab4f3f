"""Weights read shard by shard (issue 13): each rank reads only its layers' tensors and its
tensor-parallel slices, equal to converting the full state and slicing it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from train_helpers import tiny_dit_config


@pytest.fixture(scope="module")
def dit():
    from mugv_dit import MUGDiT

    torch.manual_seed(0)
    model = MUGDiT(tiny_dit_config(depth=4, num_heads=4))
    with torch.no_grad():  # no zero / one tensors: a wrong slice cannot pass by chance
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _sources(dit, tmp_path):
    folder = dit.save_pretrained(tmp_path / "folder", max_shard_size="40KB")
    assert len(list(folder.glob("*.safetensors"))) > 1  # diffusers' sharded layout
    official = tmp_path / "official"
    official.mkdir()
    torch.save(dit.state_dict(), official / "dit.pt")
    return {"mugv-dit folder": folder, "official dit.pt": official / "dit.pt"}


def test_tp_slices_equal_the_converted_full_state_sliced(dit, tmp_path):
    from mugv_train.parallel import dit_to_megatron, shard_for_tensor_parallel
    from mugv_train.parallel._loading import read_megatron_shard

    full = dit_to_megatron(dit.state_dict(), dit.config.num_heads)
    for name, source in _sources(dit, tmp_path).items():
        for size in (1, 2, 4):
            for rank in range(size):
                got = read_megatron_shard(
                    source, full, num_heads=dit.config.num_heads, tp_rank=rank, tp_size=size
                )
                want = shard_for_tensor_parallel(full, rank, size)
                assert got.keys() == want.keys()
                for k, v in want.items():
                    assert torch.equal(got[k], v), (name, size, rank, k)


def test_a_stage_reads_only_its_layers(dit, tmp_path, monkeypatch):
    from mugv_train.parallel import dit_to_megatron
    from mugv_train.parallel._loading import _Source, read_megatron_shard

    read = []
    real = _Source.read

    def spy(self, key, rows=None, cols=None):
        read.append(key)
        return real(self, key, rows, cols)

    monkeypatch.setattr(_Source, "read", spy)
    full = dit_to_megatron(dit.state_dict(), dit.config.num_heads)
    layer2 = [k for k in full if k.startswith("decoder.layers.2.")]
    folder = _sources(dit, tmp_path)["mugv-dit folder"]
    read_megatron_shard(folder, layer2, num_heads=4, tp_rank=1, tp_size=2)
    assert read and all(k.startswith("blocks.2.") for k in read)
    # one read per tensor, q/k/v and k/v weight and bias one row range per group: + 2 x 2 + 2 x 1
    assert len(read) == len(layer2) + 6


def test_load_sharded_equals_loading_the_full_state(megatron_tp1, dit, tmp_path):
    from mugv_train.parallel import MegatronMUGDiT, dit_to_megatron, full_state_dict
    from mugv_train.parallel._loading import load_sharded

    full = dit_to_megatron(dit.state_dict(), dit.config.num_heads)
    for name, source in _sources(dit, tmp_path).items():
        model = MegatronMUGDiT(dit.config)
        load_sharded(model, source, dit.config)
        got = full_state_dict(model)
        assert got.keys() == {k for k in full if not k.startswith("context_embedder.drop")}
        for k, v in got.items():
            assert torch.equal(v, full[k]), (name, k)
        deeper = dataclasses.replace(dit.config, depth=6)
        with pytest.raises(ValueError, match=r"(depth|blocks).*Fix model\.\* or init_from"):
            load_sharded(MegatronMUGDiT(deeper), source, deeper)


def test_fresh_init_replayed_per_tensor_equals_mugv_dits_init(megatron_tp1, monkeypatch):
    """The fresh initialisation computed tensor by tensor (recorded on the meta device,
    replayed from the seed) is bitwise mugv-dit's ``MUGDiT(config)`` under that seed."""
    from mugv_dit import MUGDiT
    from mugv_train.parallel import MegatronMUGDiT, dit_to_megatron, full_state_dict
    from mugv_train.parallel._loading import init_sharded

    cfg = tiny_dit_config(depth=4, num_heads=4)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        want = dit_to_megatron(MUGDiT(cfg).state_dict(), cfg.num_heads)
    model = MegatronMUGDiT(cfg, init_weights=False)
    before = torch.get_rng_state()
    assert init_sharded(model, cfg, seed=11)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is untouched
    got = full_state_dict(model)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(got[k], v), k

    # in-place draws through ``.data`` are replayed on the parameter itself
    real_init = MUGDiT.initialize_weights

    def via_data(self):
        real_init(self)
        self.start_token.data.normal_(0.0, 5.0)

    monkeypatch.setattr(MUGDiT, "initialize_weights", via_data)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        start = MUGDiT(cfg).start_token.detach().clone()
    model = MegatronMUGDiT(cfg, init_weights=False)
    assert init_sharded(model, cfg, seed=11)
    assert torch.equal(model.start_token.detach(), start)

    # an initialisation that copies values in cannot be replayed: the caller builds in full
    def copies(self):
        for p in self.parameters():
            p.data.copy_(torch.ones_like(p))

    monkeypatch.setattr(MUGDiT, "initialize_weights", copies)
    assert not init_sharded(MegatronMUGDiT(cfg, init_weights=False), cfg, seed=11)


def test_hub_id_is_read_shard_by_shard_from_the_cache(megatron_tp1, dit, tmp_path, monkeypatch):
    """A Hub id as ``init_from`` (offline, a cache in the standard layout): resolved to the
    cached files and read shard by shard, equal to the converted full state sliced; the
    full-model loader is never called."""
    from huggingface_hub import constants

    from mugv_dit import MUGDiT
    from mugv_testing import build_hf_cache
    from mugv_train import loop
    from mugv_train.config import TrainConfig
    from mugv_train.parallel import (
        MegatronMUGDiT,
        dit_to_megatron,
        full_state_dict,
        shard_for_tensor_parallel,
    )
    from mugv_train.parallel._loading import read_megatron_shard, resolve_streamable

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    src = _sources(dit, tmp_path)
    folder = src["mugv-dit folder"]
    build_hf_cache(cache, "org/dit-diffusers", {f.name: f for f in folder.iterdir()})
    build_hf_cache(cache, "org/dit-official", {"dit.pt": src["official dit.pt"]})

    def no_full_load(*args, **kwargs):
        raise AssertionError("the full model was loaded")

    monkeypatch.setattr(MUGDiT, "from_pretrained", classmethod(no_full_load))
    full = dit_to_megatron(dit.state_dict(), dit.config.num_heads)
    config = TrainConfig(model=dit.config, output_dir=str(tmp_path / "run"), train_steps=1)
    for repo in ("org/dit-diffusers", "org/dit-official"):
        local = resolve_streamable(repo)
        assert local is not None and str(cache) in local, (repo, local)
        for rank in range(2):
            got = read_megatron_shard(local, full, num_heads=4, tp_rank=rank, tp_size=2)
            want = shard_for_tensor_parallel(full, rank, 2)
            assert got.keys() == want.keys()
            for k, v in want.items():
                assert torch.equal(got[k], v), (repo, rank, k)
        model = MegatronMUGDiT(dit.config, init_weights=False)
        loop._load_initial([model], config, repo)
        for k, v in full_state_dict(model).items():
            assert torch.equal(v, full[k]), (repo, k)
    with pytest.raises(FileNotFoundError, match="org/absent"):
        resolve_streamable("org/absent")  # offline and not cached: mugv-dit's error
