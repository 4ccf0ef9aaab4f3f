"""Every parallel layout, on Megatron-Core's own engine over gloo, computes what one process
computes (issue 13's done-when tests).

Two processes run under mugv-testing's CUDA shim, so the step is Megatron's: DDP with the
overlapped gradient reduce (and the distributed optimizer with the overlapped parameter
gather), ``get_forward_backward_func()`` (no pipelining, 1F1B, interleaved 1F1B),
``finalize_model_grads`` and ``get_megatron_optimizer`` (Adam). The reference is one
process without the shim (a plain forward / backward and torch AdamW). Same full weights
(PP 2 and TP 2 + SP read them from a torch_dist checkpoint written by one process, i.e.
resharded by Megatron's loader), same inputs (an odd token count, so the sequence shards
need padding; a conditioning frame; non-contiguous frame indices for the 3D RoPE), two
micro-batches per step: the losses of three Adam steps and every parameter afterwards
must match (fp32 reduction-order tolerance).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from train_helpers import tiny_dit_config, tiny_inputs

LAYOUTS = {
    "tp2": dict(tensor_parallel=2),
    "tp2-sp": dict(tensor_parallel=2, sequence_parallel=True),
    "pp2-1f1b": dict(pipeline_parallel=2),
    "pp2-vpp2": dict(pipeline_parallel=2, virtual_pipeline=2),
    "cp2": dict(context_parallel=2),
    "dp2-distopt": dict(distributed_optimizer=True),
}
MICRO = 2  # micro-batches per step (the DP = 2 layout: one per rank)
DEPTH = 4  # PP 2 x VPP 2 stages of one layer


def _config(parallel=None, microbatches: int = MICRO):
    from mugv_train.config import DataConfig, OptimConfig, ParallelConfig, TrainConfig

    return TrainConfig(
        model=tiny_dit_config(depth=DEPTH),
        output_dir="unused",
        train_steps=3,
        parallel=parallel or ParallelConfig(),
        data=DataConfig(batch_size=2, microbatches=microbatches),
        optim=OptimConfig(
            lr=1e-3, min_lr=1e-3, warmup_steps=0, eps=1e-8, clip_grad=1.0, weight_decay=0.01
        ),
    )


def _micro(cfg, step: int, index: int) -> tuple[dict, torch.Tensor]:
    inputs = tiny_inputs(cfg, t=3, h=6, w=6, seed=10 * step + index)  # 27 + 2 tokens: odd
    inputs["frame_indices"] = torch.tensor([[0, 2, 3, 5, 9], [0, 1, 2, 3, 4]])
    g = torch.Generator().manual_seed(100 + 10 * step + index)
    target = torch.randn(2, cfg.in_channels, 3, 6, 6, generator=g)
    return inputs, target


def _train_steps(engine, cfg, micro_ids: list[int], steps: int = 3) -> list[float]:
    """Adam steps on ``micro_ids`` of each step's micro-batches; the mean loss of the
    whole step (over pipeline stages and DP ranks) per step."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from mugv_train.loop import _from_last_stage
    from mugv_train.objectives import flow_matching_loss

    losses = []
    for step in range(steps):
        batch = [_micro(cfg, step, i) for i in micro_ids]

        def loss_fn(out, i, batch=batch):
            inputs, target = batch[i]
            return flow_matching_loss(out, target, torch.zeros_like(target), inputs["x_mask"]), None

        engine.zero_grad()
        res = engine.forward_backward([b[0] for b in batch], loss_fn)
        loss = torch.stack([r[0] for r in res]).mean() if res else None
        loss = _from_last_stage(loss, torch.zeros(()))
        if dist.is_initialized() and ps.get_data_parallel_world_size() > 1:
            dist.all_reduce(loss, group=ps.get_data_parallel_group())
            loss /= ps.get_data_parallel_world_size()
        engine.step(1e-3)
        losses.append(loss.item())
    engine.sync_params()
    return losses


def _reference_state(tmp_path):
    from mugv_train.parallel import MegatronMUGDiT, full_state_dict

    torch.manual_seed(0)
    ref = MegatronMUGDiT(tiny_dit_config(depth=DEPTH))
    with torch.no_grad():  # away from the init, where some outputs and gradients are 0
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return ref, full_state_dict(ref)


def _main_replicas(chunks) -> list[tuple[str, tuple]]:
    """(key, global offset) of the sharded tensors this rank writes in a torch_dist save."""
    from megatron.core.dist_checkpointing import ShardedTensor

    out = []
    for chunk in chunks:
        for ten in chunk.sharded_state_dict().values():
            if isinstance(ten, ShardedTensor):
                rid = (ten.replica_id,) if isinstance(ten.replica_id, int) else ten.replica_id
                if all(r == 0 for r in rid):
                    out.append((ten.key, tuple(ten.global_offset)))
    return out


def _run_layouts(rank: int, world: int, state_path: str, dist_dir: str):
    import warnings

    warnings.filterwarnings("ignore")
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    from mugv_train._engine import MegatronEngine, build_engine
    from mugv_train.config import ParallelConfig
    from mugv_train.parallel import (
        MegatronMUGDiT,
        full_state_dict,
        init_distributed,
        load_full_state_dict,
    )

    torch.set_num_threads(1)
    state = torch.load(state_path)
    results = {}
    for name, layout in LAYOUTS.items():
        parallel = ParallelConfig(**{"distributed_optimizer": False, **layout})
        init_distributed(parallel)
        torch.manual_seed(123 + rank)  # different per rank: weights must come from the state
        chunks = [
            MegatronMUGDiT(tiny_dit_config(depth=DEPTH), parallel, vp_stage=v)
            for v in range(parallel.virtual_pipeline)
        ]
        if name in ("pp2-1f1b", "tp2-sp"):
            loaded = dist_checkpointing.load(chunks[0].sharded_state_dict(), dist_dir)
            chunks[0].load_state_dict(loaded, strict=False)
        else:
            load_full_state_dict(chunks, state)
        replicas = _main_replicas(chunks)
        if parallel.virtual_pipeline > 1:
            # gloo only: with PP = 2 the previous and the next stage are the same rank, and
            # the interleaved schedule's batched exchanges (shapes first, then tensors) to
            # one peer are matched out of order by gloo; NCCL batches them as a group.
            # Fixed shapes and Megatron's unbatched even/odd ordering run on both.
            chunks[0].config.variable_seq_lengths = False
            chunks[0].config.batch_p2p_comm = False
        dp = ps.get_data_parallel_world_size()
        cfg = _config(parallel, microbatches=MICRO // dp)
        engine = build_engine(chunks, cfg)
        assert isinstance(engine, MegatronEngine)
        ids = list(range(MICRO)) if dp == 1 else [ps.get_data_parallel_rank()]
        losses = _train_steps(engine, cfg.model, ids)
        final = {k: v.numpy() for k, v in full_state_dict(chunks).items()}
        results[name] = (losses, final, replicas)
    return results


def _save_torch_dist(model, path) -> None:
    """Megatron's torch_dist writer (its CUDA calls made CPU no-ops by the shim)."""
    from megatron.core import dist_checkpointing

    from mugv_testing._mcore_shim import cuda_shim

    path.mkdir()
    with cuda_shim():
        dist_checkpointing.save(model.sharded_state_dict(), str(path))


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(420)
def test_every_layout_on_megatrons_engine_equals_one_process(megatron_tp1, tmp_path):
    from mugv_testing import assert_close, run_distributed
    from mugv_train._engine import PlainEngine, build_engine
    from mugv_train.parallel import full_state_dict

    ref, state = _reference_state(tmp_path)
    torch.save(state, tmp_path / "state.pt")
    _save_torch_dist(ref, tmp_path / "dist")
    ref_replicas = sorted(_main_replicas([ref]))
    engine = build_engine([ref], _config())
    assert isinstance(engine, PlainEngine)  # one process without CUDA: the plain step
    ref_losses = _train_steps(engine, ref.dit_config, list(range(MICRO)))
    ref_final = full_state_dict(ref)
    assert ref_losses[0] != ref_losses[-1]  # the steps changed the model

    per_rank = run_distributed(
        _run_layouts,
        world_size=2,
        args=(str(tmp_path / "state.pt"), str(tmp_path / "dist")),
        timeout=400,
        cuda_shim=True,
    )
    for name in LAYOUTS:
        # a torch_dist save writes every tensor (slice) exactly once, e.g. the embedders
        # present on every pipeline stage only from stage 0
        written = sorted(r for results in per_rank for r in results[name][2])
        if name.startswith("pp"):
            assert written == ref_replicas, name
        for rank, results in enumerate(per_rank):
            losses, final, _ = results[name]
            assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6), (name, rank)
            if rank > 0:  # the full model is streamed to rank 0's CPU only
                assert final == {}, (name, rank)
                continue
            assert final.keys() == ref_final.keys()
            for k, v in ref_final.items():
                assert_close(torch.from_numpy(final[k]), v, rtol=1e-4, atol=1e-5,
                             name=f"{name} rank {rank} {k}")  # fmt: skip


def _no_prefetch(cfg):
    """Read synchronously, so the samples read are exactly the samples consumed."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, prefetch=0))


def _counting_reads():
    """Patch ShardStream.load to count the samples this process reads; returns the list."""
    from mugv_train.data_loading import ShardStream

    reads: list[int] = []
    real = ShardStream.load

    def load(self, j):
        reads.append(j)
        return real(self, j)

    ShardStream.load = load
    return reads


def _train_layouts(rank: int, world: int, shards: str, out: str, layouts: dict):
    """train() per layout; the losses and the sample indices this rank read."""
    import warnings
    from pathlib import Path

    warnings.filterwarnings("ignore")
    from train_helpers import tiny_train_config

    from mugv_train import ParallelConfig, train

    torch.set_num_threads(1)
    results = {}
    for name, layout in layouts.items():
        reads = _counting_reads()
        cfg = _no_prefetch(tiny_train_config(shards, Path(out) / name, steps=4))
        cfg = dataclasses.replace(cfg, parallel=ParallelConfig(**layout))
        losses = train(cfg).losses
        results[name] = (losses, list(reads))
    return results


def _one_process_reads(shards, out) -> tuple[list[float], list[int]]:
    from train_helpers import tiny_train_config

    from mugv_train import train
    from mugv_train.data_loading import ShardStream

    real = ShardStream.load
    try:
        reads = _counting_reads()
        losses = train(_no_prefetch(tiny_train_config(shards, out, steps=4))).losses
    finally:
        ShardStream.load = real
    return losses, reads


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_train_with_context_parallel_matches_one_process(megatron_tp1, tmp_path):
    """train() with CP = 2 on Megatron's engine: both ranks read the same samples, draw the
    same noise, and the reduced gradients give the single-process losses; one copy of the
    model is saved, and one optimizer shard per CP rank (the distributed optimizer)."""
    from train_helpers import tiny_shards

    from mugv_testing import run_distributed

    torch.set_num_threads(1)
    shards = tiny_shards(tmp_path / "shards", frames=3, height=6, width=6)  # 27 + 2: padded
    ref, ref_reads = _one_process_reads(shards, tmp_path / "cp1")
    per_rank = run_distributed(
        _train_layouts,
        world_size=2,
        args=(str(shards), str(tmp_path), {"cp2": dict(context_parallel=2)}),
        timeout=280,
        cuda_shim=True,
    )
    for results in per_rank:
        assert results["cp2"][0] == pytest.approx(ref, rel=1e-5, abs=1e-7)
    # one DP replica: CP rank 0 reads every sample once, CP rank 1 receives them
    assert [r["cp2"][1] for r in per_rank] == [ref_reads, []]
    step = tmp_path / "cp2" / "checkpoints" / "step_00000004"
    assert sorted(p.name for p in step.glob("*.pt")) == [
        "model_tp0_pp0.pt",
        "optim_tp0_pp0_dp0_cp0.pt",
        "optim_tp0_pp0_dp0_cp1.pt",
        "trainer_dp0.pt",
    ]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(400)
def test_each_sample_is_read_once_per_replica_with_tp2_and_pp2(megatron_tp1, tmp_path):
    """train() with TP = 2 and with PP = 2 (one DP replica of two ranks): only the first
    rank reads samples, each exactly as often as one process reads it, the other receives
    them by broadcast, and the losses equal one process's."""
    from train_helpers import tiny_shards

    from mugv_testing import run_distributed

    torch.set_num_threads(1)
    shards = tiny_shards(tmp_path / "shards")
    ref, ref_reads = _one_process_reads(shards, tmp_path / "one")
    assert ref_reads  # the reference read its samples
    layouts = {"tp2": dict(tensor_parallel=2), "pp2": dict(pipeline_parallel=2)}
    per_rank = run_distributed(
        _train_layouts, world_size=2, args=(str(shards), str(tmp_path), layouts),
        timeout=380, cuda_shim=True,
    )  # fmt: skip
    for name in layouts:
        for results in per_rank:
            assert results[name][0] == pytest.approx(ref, rel=1e-5, abs=1e-7), name
        assert [r[name][1] for r in per_rank] == [ref_reads, []], name


class _Interrupted(Exception):
    pass


def _resume_layouts(rank: int, world: int, shards: str, root: str):
    """Per layout: an uninterrupted run; a run that dies right after its step-4 checkpoint;
    its resume. Returns the losses and every EMA shard file of the final checkpoints."""
    import warnings
    from pathlib import Path

    warnings.filterwarnings("ignore")
    from train_helpers import tiny_train_config

    import mugv_train.loop as loop
    from mugv_train import EMAConfig, ParallelConfig, train

    torch.set_num_threads(1)
    real_lr_at = loop.lr_at
    out = {}
    for name, layout in {"tp2": dict(tensor_parallel=2), "pp2": dict(pipeline_parallel=2)}.items():
        cfg = tiny_train_config(shards, Path(root) / name / "ref", steps=6,
                                ema=EMAConfig(decay=0.7),
                                parallel=ParallelConfig(**layout))  # fmt: skip
        ref = train(cfg).losses

        def dies_after_step_4(step, total, optim):
            if step == 4:  # the step-4 checkpoint is complete; the process dies mid-step 5
                raise _Interrupted
            return real_lr_at(step, total, optim)

        killed = dataclasses.replace(cfg, output_dir=str(Path(root) / name / "killed"))
        loop.lr_at = dies_after_step_4
        try:
            train(killed)
        except _Interrupted:
            pass
        finally:
            loop.lr_at = real_lr_at
        resumed = train(killed).losses
        ema = {}
        for run in ("ref", "killed"):
            step = Path(root) / name / run / "checkpoints" / "step_00000006"
            ema[run] = {p.name: p.read_bytes() for p in sorted(step.glob("ema_*.pt"))}
        out[name] = (ref, resumed, ema)
    return out


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(400)
def test_interrupt_and_resume_is_bitwise_with_tp2_and_pp2_and_ema(tmp_path):
    """Resume after a crash with TP = 2 and with PP = 2 (Megatron's engine, EMA on): the
    resumed losses are bitwise the uninterrupted run's, and every rank's EMA shard (each TP
    rank's own shard, each stage's own layers) is bitwise unchanged."""
    from train_helpers import tiny_shards

    from mugv_testing import run_distributed

    shards = tiny_shards(tmp_path / "shards")
    per_rank = run_distributed(
        _resume_layouts, world_size=2, args=(str(shards), str(tmp_path)), timeout=380,
        cuda_shim=True,
    )  # fmt: skip
    for results in per_rank:
        for name, (ref, resumed, ema) in results.items():
            assert resumed == ref, name  # bitwise
            expected = {"tp2": ["ema_tp0_pp0.pt", "ema_tp1_pp0.pt"],
                        "pp2": ["ema_tp0_pp0.pt", "ema_tp0_pp1.pt"]}[name]  # fmt: skip
            assert sorted(ema["ref"]) == expected
            assert ema["killed"] == ema["ref"], name
