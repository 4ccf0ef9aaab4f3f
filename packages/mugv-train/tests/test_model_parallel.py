"""PP = 2, CP = 2 and TP = 2 + SP over gloo compute what one process computes.

Same full weights (PP 2 and TP 2 + SP read them from a torch_dist checkpoint written by
one process, i.e. resharded by Megatron's loader; CP 2 from the full state dict), same inputs (an odd token count, so the sequence shards need padding;
a conditioning frame; non-contiguous frame indices for the 3D RoPE): the outputs, the
losses of three SGD steps and every parameter afterwards (i.e. the gradients, including
the ones reduced over TP / CP / PP) must match the single-process model.
"""

from __future__ import annotations

import pytest
import torch
from train_helpers import tiny_dit_config, tiny_inputs

LAYOUTS = {
    "pp2": dict(pipeline_parallel=2),
    "cp2": dict(context_parallel=2),
    "tp2-sp": dict(tensor_parallel=2, sequence_parallel=True),
}


def _inputs(cfg, step: int) -> dict:
    inputs = tiny_inputs(cfg, t=3, h=6, w=6, seed=step)  # 27 tokens + start/end = 29: odd
    inputs["frame_indices"] = torch.tensor([[0, 2, 3, 5, 9], [0, 1, 2, 3, 4]])
    return inputs


def _train_steps(model, steps: int = 3):
    """SGD steps through the pipeline schedule; returns losses, first output, full state."""
    from megatron.core import parallel_state as ps

    from mugv_train.objectives import flow_matching_loss
    from mugv_train.parallel import (
        broadcast_from_last_stage,
        finalize_grads,
        full_state_dict,
        run_pipeline,
    )

    opt = torch.optim.SGD([p for p in model.parameters()], lr=0.05)
    losses, first_out = [], None
    for step in range(steps):
        inputs = _inputs(model.dit_config, step)
        target = torch.randn(
            2,
            model.dit_config.in_channels,
            3,
            6,
            6,
            generator=torch.Generator().manual_seed(100 + step),
        )

        def loss_fn(out, _i, inputs=inputs, target=target):
            return flow_matching_loss(out, target, torch.zeros_like(target), inputs["x_mask"]), (
                out.detach()
            )

        opt.zero_grad(set_to_none=True)
        res = run_pipeline(model, [inputs], loss_fn)
        loss = broadcast_from_last_stage(res[0][0] if res else None, torch.zeros(()))
        if first_out is None and ps.is_pipeline_last_stage():
            first_out = res[0][1].numpy()
        finalize_grads(model, sequence_parallel=model.parallel.sequence_parallel)
        opt.step()
        losses.append(loss.item())
    return losses, first_out, {k: v.numpy() for k, v in full_state_dict(model).items()}


def _main_replicas(model) -> list[tuple[str, tuple]]:
    """(key, global offset) of the sharded tensors this rank writes in a torch_dist save."""
    from megatron.core.dist_checkpointing import ShardedTensor

    out = []
    for ten in model.sharded_state_dict().values():
        if isinstance(ten, ShardedTensor):
            rid = (ten.replica_id,) if isinstance(ten.replica_id, int) else ten.replica_id
            if all(r == 0 for r in rid):
                out.append((ten.key, tuple(ten.global_offset)))
    return out


def _run_layouts(rank: int, world: int, state_path: str, dist_dir: str):
    import warnings

    warnings.filterwarnings("ignore")
    from megatron.core import dist_checkpointing

    from mugv_train.config import ParallelConfig
    from mugv_train.parallel import MegatronMUGDiT, init_distributed, load_full_state_dict

    torch.set_num_threads(1)
    state = torch.load(state_path)
    results = {}
    for name, layout in LAYOUTS.items():
        parallel = ParallelConfig(**layout)
        init_distributed(parallel)
        torch.manual_seed(123 + rank)  # different per rank: weights must come from the state
        model = MegatronMUGDiT(tiny_dit_config(), parallel)
        if name == "cp2":
            load_full_state_dict(model, state)
        else:
            loaded = dist_checkpointing.load(model.sharded_state_dict(), dist_dir)
            model.load_state_dict(loaded, strict=False)
        replicas = _main_replicas(model)
        results[name] = (*_train_steps(model), replicas)
    return results


def _save_torch_dist(model, path, monkeypatch) -> None:
    """Megatron's torch_dist writer, with its two CPU-meaningless CUDA calls made no-ops
    (see test_torch_dist.py)."""
    from megatron.core import dist_checkpointing

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")
    path.mkdir()
    dist_checkpointing.save(model.sharded_state_dict(), str(path))


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_pp2_cp2_and_tp2_sp_equal_one_process(megatron_tp1, tmp_path, monkeypatch):
    from mugv_testing import assert_close, run_distributed
    from mugv_train.parallel import MegatronMUGDiT, full_state_dict

    torch.manual_seed(0)
    ref = MegatronMUGDiT(tiny_dit_config())
    with torch.no_grad():  # the init zeroes some outputs: randomise everything
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.save(full_state_dict(ref), tmp_path / "state.pt")
    _save_torch_dist(ref, tmp_path / "dist", monkeypatch)
    ref_replicas = sorted(_main_replicas(ref))
    ref_losses, ref_out, ref_final = _train_steps(ref)
    assert ref_losses[0] != ref_losses[-1]  # the steps changed the model

    per_rank = run_distributed(
        _run_layouts,
        world_size=2,
        args=(str(tmp_path / "state.pt"), str(tmp_path / "dist")),
        timeout=300,
    )
    for name in LAYOUTS:
        # a torch_dist save would write every tensor (slice) exactly once, e.g. the
        # embedders present on both pipeline stages only from stage 0
        written = sorted(r for results in per_rank for r in results[name][3])
        if name != "tp2-sp":  # TP splits some tensors into two slices
            assert written == ref_replicas, name
        else:
            assert sorted({k for k, _ in written}) == sorted({k for k, _ in ref_replicas})
            assert len(written) == len(set(written))
        for rank, results in enumerate(per_rank):
            losses, out, final, _ = results[name]
            assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6), (name, rank)
            if out is not None:  # the last pipeline stage (every rank without PP)
                assert_close(torch.from_numpy(out), torch.from_numpy(ref_out), rtol=1e-5,
                             atol=1e-5, name=f"{name} output")  # fmt: skip
            assert final.keys() == ref_final.keys()
            for k, v in ref_final.items():
                assert_close(torch.from_numpy(final[k]), torch.from_numpy(v), rtol=1e-4,
                             atol=1e-5, name=f"{name} rank {rank} {k}")  # fmt: skip


def _train_cp2(rank: int, world: int, shards: str, out: str):
    import dataclasses
    import warnings

    warnings.filterwarnings("ignore")
    from train_helpers import tiny_train_config

    from mugv_train import ParallelConfig, train

    torch.set_num_threads(1)
    cfg = tiny_train_config(shards, out, steps=4)
    cfg = dataclasses.replace(cfg, parallel=ParallelConfig(context_parallel=2))
    return train(cfg).losses


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_train_with_context_parallel_matches_one_process(megatron_tp1, tmp_path):
    """train() with CP = 2: both ranks read the same samples, draw the same noise, and
    the finalised gradients give the single-process losses; one copy of the model is saved."""
    from train_helpers import tiny_shards, tiny_train_config

    from mugv_testing import run_distributed
    from mugv_train import train

    torch.set_num_threads(1)
    shards = tiny_shards(tmp_path / "shards", frames=3, height=6, width=6)  # 27 + 2: padded
    ref = train(tiny_train_config(shards, tmp_path / "cp1", steps=4)).losses
    per_rank = run_distributed(
        _train_cp2, world_size=2, args=(str(shards), str(tmp_path / "cp2")), timeout=280
    )
    for losses in per_rank:
        assert losses == pytest.approx(ref, rel=1e-5, abs=1e-7)
    step = tmp_path / "cp2" / "checkpoints" / "step_00000004"
    assert sorted(p.name for p in step.glob("*.pt")) == [
        "model_tp0_pp0.pt",
        "optim_tp0_pp0.pt",
        "trainer_dp0.pt",
    ]
