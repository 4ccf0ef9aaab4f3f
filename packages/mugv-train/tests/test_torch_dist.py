"""Megatron dist_checkpointing (torch_dist): the sharded mapping, and save + resume on CPU."""

from __future__ import annotations

import json
import shutil

import torch
from train_helpers import tiny_dit_config, tiny_shards, tiny_train_config


def test_sharded_state_dict_stacks_layers_like_the_official_checkpoints(megatron_tp1):
    from megatron.core.dist_checkpointing import ShardedTensor

    from mugv_train.parallel import MegatronMUGDiT, full_state_dict, stack_layers

    cfg = tiny_dit_config(depth=3)
    model = MegatronMUGDiT(cfg)
    stacked = stack_layers(full_state_dict(model))  # reference §G.6: leading dim = depth
    sharded = model.sharded_state_dict()
    seen: dict[str, set[int]] = {}
    for name, ten in sharded.items():
        if not isinstance(ten, ShardedTensor):
            assert name.endswith("_extra_state"), name
            continue
        assert ten.key in stacked, f"{name} -> {ten.key}"
        assert ten.global_shape == tuple(stacked[ten.key].shape), ten.key
        assert ten.replica_id in (0, (0, 0, 0)), ten.key
        if ten.key.startswith("decoder.layers."):
            layer = ten.global_offset[0]
            assert name.startswith(f"decoder.layers.{layer}.")
            assert torch.equal(ten.data, stacked[ten.key][layer])
            seen.setdefault(ten.key, set()).add(layer)
        else:
            assert ten.key == name and torch.equal(ten.data, stacked[name])
    assert seen and all(layers == {0, 1, 2} for layers in seen.values())
    assert {t.key for t in sharded.values() if isinstance(t, ShardedTensor)} == set(stacked)


def test_torch_dist_checkpoint_resumes_bitwise_on_cpu(megatron_tp1, tmp_path):
    """Megatron's torch_dist writer and its engine (DDP, distributed optimizer, schedule)
    make CUDA calls that have no CPU meaning: under mugv-testing's CUDA shim the real
    writer and loader produce and read the checkpoint, model and distributed-optimizer
    state included."""
    import dataclasses

    from mugv_testing._mcore_shim import cuda_shim
    from mugv_train import CheckpointConfig, ParallelConfig, train

    with cuda_shim():
        torch.set_num_threads(1)
        shards = tiny_shards(tmp_path / "shards")
        cfg = tiny_train_config(shards, tmp_path / "out", steps=6)
        cfg = dataclasses.replace(
            cfg,
            checkpoint=CheckpointConfig(save_every=2, keep_last=2, format="torch_dist"),
            # Megatron's distributed optimizer reshards Adam state of TE / Apex optimizers;
            # its CPU fallback (torch AdamW) keeps per-parameter steps it does not save
            parallel=ParallelConfig(distributed_optimizer=False),
        )
        first = train(cfg).losses
        root = tmp_path / "out" / "checkpoints"
        step6 = root / "step_00000006"
        assert json.loads((step6 / "meta.json").read_text())["format"] == "torch_dist"
        dist_meta = json.loads((step6 / "dist" / "metadata.json").read_text())
        assert dist_meta["sharded_backend"] == "torch_dist"
        assert list((step6 / "dist").glob("*.distcp"))
        assert not (root / "step_00000002").exists()  # keep_last=2

        # lose the last checkpoint: the run resumes from step 4 (model, AdamW moments, LR,
        # data position, RNG) and recomputes steps 5-6 exactly
        shutil.rmtree(step6)
        (root / "latest").unlink()
        resumed = train(cfg).losses
        assert resumed == first
