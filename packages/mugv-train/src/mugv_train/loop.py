"""`train(config)`: the training loop, the same code on a CPU and on a GPU cluster.

One step (per data-parallel replica): take its bucketed micro-batches (read by one rank of
the replica and broadcast to the others), draw tasks, timesteps and noise from a generator
seeded by (seed, step, DP rank, micro-batch) (so a resumed run draws the same numbers),
noise the latents, then Megatron's engine (``_engine.py``): the pipeline schedule's forward
and backward of the objective, ``finalize_model_grads``, the (distributed) optimizer step
with clipping; then the EMA update, logging and checkpoints. Layout, backend and the
checkpoint to resume are checked before anything is built.
A NaN/inf loss skips the step (counted); ``max_nonfinite_steps`` in a row stop the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mugv_train._engine import build_engine, cuda_calls_work, forward_only
from mugv_train.checkpointing import (
    CheckpointError,
    CheckpointMismatchError,
    check_checkpoint_meta,
    latest_checkpoint,
    load_checkpoint,
    load_torch_dist,
    save_checkpoint,
    save_torch_dist,
)
from mugv_train.config import TrainConfig
from mugv_train.data_loading import (
    Batch,
    Prefetcher,
    ReplicaBatches,
    ShardStream,
    open_shard_roots,
)
from mugv_train.ema import OnlineEMA
from mugv_train.flops import dit_flops_per_sample, peak_flops
from mugv_train.objectives import (
    add_noise,
    diffusion_dpo_loss,
    diffusion_kto_loss,
    drop_captions,
    per_sample_flow_loss,
    sample_tasks,
    sample_timesteps,
    task_weights,
    task_x_mask,
)
from mugv_train.parallel import (
    MegatronMUGDiT,
    dit_to_megatron,
    full_state_dict,
    init_distributed,
    load_full_state_dict,
    megatron_to_dit,
    seed_everything,
)
from mugv_train.parallel._checks import check_backend, check_layout
from mugv_train.parallel._loading import init_sharded, load_sharded, resolve_streamable
from mugv_train.parallel._model import load_stage_state_dict, stage_state_dict
from mugv_train.parallel._state import (
    cp_rank_and_size,
    data_parallel_group,
    data_parallel_rank_and_size,
    pp_rank_and_size,
    tp_rank_and_size,
)
from mugv_train.schedules import lr_at


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps produced a NaN or inf loss."""


@dataclass
class TrainResult:
    """What a finished run returns (rank 0 holds the full history)."""

    output_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    export_dir: Path | None = None
    ema_export_dir: Path | None = None
    skipped_nonfinite: int = 0
    skipped_corrupt: int = 0

    @property
    def losses(self) -> list[float]:
        return [h["loss"] for h in self.history]

    def plot(self, path: str | Path | None = None):
        """Plot the loss curve with matplotlib; saves to ``path`` if given. Returns the figure."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([h["step"] for h in self.history], self.losses, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def _initial_dit_state(config: TrainConfig) -> dict[str, torch.Tensor]:
    """mugv-dit state dict to start from: a pretrained folder or a fresh mugv-dit init."""
    from mugv_dit import MUGDiT

    if config.init_from:
        dit = MUGDiT.from_pretrained(config.init_from)
        if dit.config.replace(extra={}) != config.model.replace(extra={}):
            raise ValueError(
                f"init_from {config.init_from} holds a {dit.config.hidden_size}-wide, "
                f"{dit.config.depth}-deep model; the run expects {config.model.hidden_size} x "
                f"{config.model.depth}. Fix model.* or init_from."
            )
        return dit.state_dict()
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        return MUGDiT(config.model).state_dict()


def _load_initial(chunks: list[MegatronMUGDiT], config: TrainConfig, source: str) -> None:
    """Weights of this rank's chunks, shard by shard: a local mugv-dit folder or official
    ``dit.pt`` (only this rank's layers and TP slices are read, :func:`load_sharded`); a
    fresh init (``source`` empty; mugv-dit's initialisation from ``config.seed``, replayed
    one tensor at a time, :func:`init_sharded`). A Hub id is resolved to its files in the
    Hugging Face cache (honouring ``HF_HUB_OFFLINE``) and read from there shard by shard the
    same way; only a format the shard reader does not know is loaded in full, then sharded."""
    local = resolve_streamable(source) if source else None
    if local is not None:
        load_sharded(chunks, local, config.model)
        return
    if not source and init_sharded(chunks, config.model, config.seed):
        return
    state = _initial_dit_state(dataclasses.replace(config, init_from=source))
    load_full_state_dict(chunks, dit_to_megatron(state, config.model.num_heads))


class _Logger:
    def __init__(self, config: TrainConfig, rank: int) -> None:
        self.rank, self.tb, self.wandb, self.bar = rank, None, None, None
        if rank != 0:
            return
        if config.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(config.output_dir) / "tensorboard"))
        if config.log.wandb:
            import wandb

            self.wandb = wandb.init(project="mugv-train", name=config.name, config=config.to_dict())

    def progress(self, config: TrainConfig, start: int):
        if self.rank == 0 and config.log.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=config.train_steps, initial=start, desc=config.name, unit="step")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def tick(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _prepare(
    batch: Batch,
    config: TrainConfig,
    step: int,
    dp_rank: int,
    null_text: torch.Tensor,
    micro: int = 0,
):
    """Tasks, masks, timesteps, noise and the noisy input for one micro-batch.

    Drawn from a generator seeded by (seed, step, DP rank, micro-batch): every pipeline
    stage, TP and CP rank of a DP rank draws the same numbers (reference §D.4), and a
    resumed run draws what the uninterrupted run drew."""
    key = (config.seed, step, dp_rank) if micro == 0 else (config.seed, step, dp_rank, micro)
    g = torch.Generator().manual_seed(hash(key) % 2**63)
    x0 = batch.latent
    b, _, t = x0.shape[:3]
    tasks = sample_tasks([t] * b, config.objective.task_mix, generator=g)
    x_mask = task_x_mask(tasks, t, generator=g)
    timesteps = sample_timesteps(
        b,
        height_px=batch.height,
        width_px=batch.width,
        num_latent_frames=float(t),
        generator=g,
        shift=config.objective.timestep_shift,
        shift_scale=config.objective.timestep_shift_scale,
    )
    noise = torch.randn(x0.shape, generator=g)
    text, _ = drop_captions(
        batch.text, batch.text_mask, null_text, config.objective.caption_dropout, generator=g
    )
    return dict(
        x0=x0, noise=noise, tasks=tasks, x_mask=x_mask, timesteps=timesteps, text=text,
        xt=add_noise(x0, noise, timesteps, x_mask),
    )  # fmt: skip


def _autocast(config: TrainConfig, device: torch.device):
    """bf16 autocast for the one-process CPU step (Megatron's engine uses Float16Module)."""
    from mugv_train._engine import cuda_calls_work

    if config.parallel.precision == "bf16" and not cuda_calls_work():
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _objective(
    pred: torch.Tensor,
    ref_err: torch.Tensor | None,
    batch: Batch,
    prep: dict,
    config: TrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar loss and the per-sample flow losses [B] from the predicted velocity."""
    x0, noise, mask = prep["x0"].to(device), prep["noise"].to(device), prep["x_mask"].to(device)
    per_sample = per_sample_flow_loss(pred, x0, noise, mask)
    weights = task_weights(prep["tasks"], config.objective.task_weights).to(device)
    sft = (per_sample * weights).mean()
    kind = config.objective.kind
    if kind == "flow":
        return sft, per_sample.detach()
    if kind == "dpo":
        # a DPO batch holds pairs: even rows preferred, odd rows rejected (same prompt)
        pref = diffusion_dpo_loss(
            per_sample[0::2], per_sample[1::2], ref_err[0::2], ref_err[1::2], config.objective.beta
        )
        sft = per_sample[0::2].mean()
    else:
        good = torch.tensor([bool(v) for v in batch.extra["label"]], device=device)
        pref = diffusion_kto_loss(
            per_sample, ref_err, good, config.objective.beta,
            lambda_desirable=config.objective.kto_lambda_desirable,
            lambda_undesirable=config.objective.kto_lambda_undesirable,
        )  # fmt: skip
        sft = per_sample[good].mean() if good.any() else per_sample.sum() * 0
    return pref + config.objective.sft_weight * sft, per_sample.detach()


def _check_batch(batch: Batch, config: TrainConfig) -> None:
    kind = config.objective.kind
    if kind == "dpo" and batch.latent.shape[0] % 2:
        raise ValueError(
            "a DPO micro-batch must hold (preferred, rejected) pairs: use an even batch_size"
        )
    if kind == "kto" and "label" not in batch.extra:
        raise ValueError("KTO needs a boolean 'label' column in the shards (True = desirable)")


def _from_last_stage(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` of the last pipeline stage on every stage (for logging and the NaN check)."""
    from megatron.core import parallel_state as ps

    if ps.get_pipeline_model_parallel_world_size() == 1:
        return tensor
    buf = tensor.contiguous() if ps.is_pipeline_last_stage() else torch.empty_like(like)
    dist.broadcast(
        buf,
        src=ps.get_pipeline_model_parallel_last_rank(),
        group=ps.get_pipeline_model_parallel_group(),
    )
    return buf


def _forward_backward(
    engine, ref_chunks, batches: list[Batch], preps: list[dict], config: TrainConfig, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of a step's micro-batches through Megatron's schedule.

    Returns the mean loss over the micro-batches and the per-sample flow losses (all
    micro-batches concatenated) on every rank (sent from the last pipeline stage); the
    gradients are reduced (``finalize_model_grads``) and ready for the optimizer.
    """
    for batch in batches:
        _check_batch(batch, config)
    inputs = [
        dict(
            x=prep["xt"].to(device),
            timestep=prep["timesteps"].to(device),
            text=prep["text"].to(device),
            text_mask=batch.text_mask.to(device),
            fps=batch.fps.to(device),
            x_mask=prep["x_mask"].to(device),
        )
        for batch, prep in zip(batches, preps, strict=True)
    ]
    autocast = _autocast(config, device)
    ref_err: list[torch.Tensor | None] = [None] * len(batches)
    if ref_chunks is not None:

        def ref_loss(out, i):
            x0, noise, mask = (preps[i][k].to(device) for k in ("x0", "noise", "x_mask"))
            return per_sample_flow_loss(out.float(), x0, noise, mask), None

        with autocast():
            res = forward_only(ref_chunks, inputs, ref_loss)
        ref_err = [r[0] for r in res] or ref_err
    with autocast():
        res = engine.forward_backward(
            inputs,
            lambda out, i: _objective(
                out.float(), ref_err[i], batches[i], preps[i], config, device
            ),
        )
    total = sum(batch.latent.shape[0] for batch in batches)
    loss = torch.stack([r[0] for r in res]).mean() if res else None
    per_sample = torch.cat([r[1] for r in res]) if res else None
    loss = _from_last_stage(loss, torch.zeros((), device=device))
    per_sample = _from_last_stage(per_sample, torch.zeros(total, device=device))
    return loss, per_sample


#: File an export folder carries the caption-dropout null embedding in (key ``null_text``).
NULL_TEXT_FILE = "null_text.safetensors"


def null_text_embedding(config: TrainConfig) -> torch.Tensor:
    """The null caption [null_text_tokens, text_dim] that caption dropout substitutes.

    Like the official ``drop_emb`` (reference §G.3) it is randn / sqrt(E), fixed (not
    trained), drawn from ``config.seed``, so every rank and every resume gets the same one.
    A model trained with caption dropout saw exactly this as its unconditional text; the
    exports carry it (``NULL_TEXT_FILE``) for classifier-free guidance at inference.
    """
    return torch.randn(
        config.data.null_text_tokens,
        config.model.text_dim,
        generator=torch.Generator().manual_seed(config.seed),
    ) / math.sqrt(config.model.text_dim)


def export_mugv_dit(
    model: MegatronMUGDiT,
    out_dir: Path,
    state: dict[str, torch.Tensor] | None = None,
    null_text: torch.Tensor | None = None,
) -> Path:
    """Write the model (or ``state``, a full Megatron state dict) in the mugv-dit layout.

    ``null_text``: the caption-dropout null embedding, written next to the weights as
    ``NULL_TEXT_FILE`` (the unconditional branch of classifier-free guidance).
    """
    from safetensors.torch import save_file

    from mugv_dit import MUGDiT

    full = full_state_dict(model) if state is None else state
    dit = MUGDiT(model.dit_config)
    dit.load_state_dict(megatron_to_dit(full, model.dit_config.num_heads))
    path = Path(dit.save_pretrained(out_dir))
    if null_text is not None:
        tmp = path / f".{NULL_TEXT_FILE}.tmp"
        save_file({"null_text": null_text.detach().float().contiguous().cpu()}, str(tmp))
        os.replace(tmp, path / NULL_TEXT_FILE)
    return path


def _build_chunks(config: TrainConfig, device: torch.device) -> list[MegatronMUGDiT]:
    """This rank's model chunks (one per virtual pipeline stage): its TP shards of its
    stages' layers only, left uninitialised (the initial weights are loaded next)."""
    return [
        MegatronMUGDiT(config.model, config.parallel, vp_stage=v, init_weights=False).to(device)
        for v in range(config.parallel.virtual_pipeline)
    ]


def _replica_batches(stream: ShardStream, config: TrainConfig) -> ReplicaBatches:
    """This DP replica's micro-batches: read (and prefetched) on its pipeline-first,
    TP/CP-rank-0 rank only, then broadcast over the pipeline group (among the TP/CP-rank-0
    ranks) and over the TP x CP group, so each sample is read once per replica."""
    from megatron.core import parallel_state as ps

    tp_cp = ps.get_tensor_and_context_parallel_group()
    tp_cp_rank = ps.get_tensor_and_context_parallel_rank()
    hops = []
    if ps.get_pipeline_model_parallel_world_size() > 1 and tp_cp_rank == 0:
        hops.append(
            (ps.get_pipeline_model_parallel_group(), ps.get_pipeline_model_parallel_first_rank())
        )
    if ps.get_tensor_and_context_parallel_world_size() > 1:
        hops.append((tp_cp, dist.get_global_rank(tp_cp, 0)))
    reads = tp_cp_rank == 0 and ps.is_pipeline_first_stage(ignore_virtual=True)
    source = Prefetcher(iter(stream), config.data.prefetch) if reads else None
    return ReplicaBatches(source, hops)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) the training described by ``config``. Call it from torchrun or plain Python."""
    out = Path(config.output_dir)
    # the layout and the backend, checked before any process group, model or data
    check_backend(config.parallel)
    check_layout(config.model, config.parallel, microbatches=config.data.microbatches)
    rank, _ = init_distributed(config.parallel)
    tp_rank, _ = tp_rank_and_size()
    pp_rank, _ = pp_rank_and_size()
    cp_rank, _ = cp_rank_and_size()
    dp_rank, dp_size = data_parallel_rank_and_size()
    seed_everything(config.seed)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    # the checkpoint to resume from must fit this layout: checked before the model is built
    ckpt_root = out / "checkpoints"
    meta = {
        "model": config.model.to_dict(),
        "tensor_parallel": config.parallel.tensor_parallel,
        "pipeline_parallel": config.parallel.pipeline_parallel,
        "virtual_pipeline": config.parallel.virtual_pipeline,
        "context_parallel": config.parallel.context_parallel,
        "data_parallel": dp_size,
        "distributed_optimizer": cuda_calls_work() and config.parallel.distributed_optimizer,
        "lora": dataclasses.asdict(config.lora) if config.lora else None,
    }
    latest = latest_checkpoint(ckpt_root) if config.checkpoint.resume else None
    if latest is not None:
        check_checkpoint_meta(latest, meta, ema=config.ema is not None)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        config.to_json(out / "config.json")

    # model: this rank's TP shards of its stages, then their initial weights
    chunks = _build_chunks(config, device)
    _load_initial(chunks, config, config.init_from)
    ref_chunks = None
    if config.objective.kind != "flow":
        ref_chunks = _build_chunks(config, device)
        _load_initial(ref_chunks, config, config.reference_from or config.init_from)
        for chunk in ref_chunks:
            chunk.requires_grad_(False).eval()
    if config.lora is not None:
        from mugv_train.lora import add_lora

        for chunk in chunks:
            add_lora(chunk, config.lora)
    engine = build_engine(chunks, config)
    if ref_chunks is not None and config.parallel.precision == "bf16":
        from mugv_train._engine import MegatronEngine

        if isinstance(engine, MegatronEngine):
            from megatron.core.transformer.module import Float16Module

            ref_chunks = [Float16Module(c.config, c) for c in ref_chunks]
    stage = torch.nn.ModuleList(chunks)  # this rank's parameters (EMA, checkpoints)
    fmt = config.checkpoint.format
    if fmt == "auto":
        fmt = "torch_dist" if device.type == "cuda" and config.lora is None else "cpu"
        if config.parallel.virtual_pipeline > 1:
            fmt = "cpu"
    if fmt == "torch_dist" and config.lora is not None and config.parallel.tensor_parallel > 1:
        raise ValueError(
            "LoRA adapters are not described for torch_dist resharding; use "
            "checkpoint.format=cpu with LoRA and tensor_parallel > 1"
        )
    if fmt == "torch_dist" and config.parallel.virtual_pipeline > 1:
        raise ValueError(
            "checkpoint.format=torch_dist is not wired for virtual pipeline stages; use "
            "checkpoint.format=cpu with parallel.virtual_pipeline > 1"
        )
    async_queue = None
    if fmt == "torch_dist" and config.checkpoint.async_save:
        if device.type != "cuda":
            raise ValueError(
                "checkpoint.async_save needs CUDA (Megatron's async writer); set it to false on CPU"
            )
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        async_queue = AsyncCallsQueue()

    def sharded_state(is_loading: bool = False) -> dict[str, Any]:
        model_sd = chunks[0].sharded_state_dict()
        return {"model": model_sd, "optimizer": engine.sharded_state_dict(model_sd, is_loading)}

    ema = OnlineEMA(stage, config.ema.decay, config.ema.interval) if config.ema else None

    stream = ShardStream(
        open_shard_roots(config.data.shards), config.data, dp_rank=dp_rank, dp_size=dp_size,
        seed=config.seed, total_steps=config.train_steps * config.data.microbatches,
    )  # fmt: skip
    null_text = null_text_embedding(config)

    # resume
    history: list[dict[str, float]] = []
    start, skipped_nonfinite, skipped_corrupt = 0, 0, 0
    if latest is not None:
        ck = load_checkpoint(
            latest, tp_rank=tp_rank, pp_rank=pp_rank, dp_rank=dp_rank, cp_rank=cp_rank,
            expect=meta, ema=ema is not None,
        )  # fmt: skip
        if ck["meta"].get("format") == "torch_dist":
            loaded = load_torch_dist(latest, sharded_state(is_loading=True))
            chunks[0].load_state_dict(loaded["model"], strict=False)
            engine.load_sharded_state_dict(loaded["optimizer"])
        else:
            what = f"{latest} (model of TP {tp_rank} PP {pp_rank})"
            if not isinstance(ck["model"], dict):
                raise CheckpointError(f"{what} is not a state dict")
            missing, unexpected = load_stage_state_dict(chunks, ck["model"])
            if missing or unexpected:
                raise CheckpointMismatchError(what, missing, unexpected)
            engine.load_state_dict(ck["optim"])
        tr = ck["trainer"]
        start, history = tr["step"], tr["history"]
        skipped_nonfinite, skipped_corrupt = tr["skipped_nonfinite"], tr["skipped_corrupt"]
        stream.load_state_dict(tr["data"])
        torch.set_rng_state(tr["rng_cpu"])
        if ema is not None:
            ema.load_state_dict(ck["ema"])

    batches = _replica_batches(stream, config)
    log = _Logger(config, rank)
    log.progress(config, start)
    peak = peak_flops(device)
    nonfinite_in_row = 0
    t_last, samples_acc, tokens_acc, flops_acc = time.perf_counter(), 0, 0, 0.0

    def checkpoint(step: int) -> None:
        engine.sync_params()  # the distributed optimizer's overlapped gather, finished now
        trainer_state = {
            "step": step, "history": history, "data": data_state,
            "skipped_nonfinite": skipped_nonfinite, "skipped_corrupt": skipped_corrupt,
            "rng_cpu": torch.get_rng_state(),
        }  # fmt: skip
        ema_state = ema.state_dict() if ema else None
        if fmt == "torch_dist":
            save_torch_dist(
                ckpt_root, step, sharded_state=sharded_state(), trainer_state=trainer_state,
                meta={**meta, "name": config.name}, tp_rank=tp_rank, pp_rank=pp_rank,
                cp_rank=cp_rank, dp_rank=dp_rank, keep_last=config.checkpoint.keep_last,
                async_queue=async_queue, ema_state=ema_state,
            )  # fmt: skip
            return
        save_checkpoint(
            ckpt_root, step,
            model_state=stage_state_dict(chunks),
            optim_state=engine.state_dict(),
            trainer_state=trainer_state, ema_state=ema_state,
            meta={**meta, "name": config.name}, tp_rank=tp_rank, pp_rank=pp_rank,
            cp_rank=cp_rank, dp_rank=dp_rank,
            keep_last=config.checkpoint.keep_last,
        )  # fmt: skip

    data_state = stream.state_dict()
    try:
        for step in range(start, config.train_steps):
            if async_queue is not None:  # commit background saves that have finished
                async_queue.maybe_finalize_async_calls(blocking=False)
            micro = [next(batches) for _ in range(engine.microbatches)]
            data_state = micro[-1].state
            skipped_corrupt += sum(b.skipped for b in micro)
            preps = [_prepare(b, config, step, dp_rank, null_text, i) for i, b in enumerate(micro)]
            lr = lr_at(step, config.train_steps, config.optim)
            engine.zero_grad()
            loss, per_sample = _forward_backward(engine, ref_chunks, micro, preps, config, device)
            finite = torch.tensor([1.0 if torch.isfinite(loss).item() else 0.0], device=device)
            if dist.get_world_size() > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:
                skipped_nonfinite += 1
                nonfinite_in_row += 1
                if nonfinite_in_row >= config.max_nonfinite_steps:
                    raise NonFiniteLossError(
                        f"{nonfinite_in_row} consecutive steps had a NaN/inf loss (last at step {step}); "
                        "lower optim.lr, check the data, or resume from an earlier checkpoint"
                    )
                engine.zero_grad()
                continue
            nonfinite_in_row = 0
            grad_norm = engine.step(lr)
            if ema is not None:
                engine.sync_params()
                ema.update(stage, step)

            # metrics: mean loss over DP ranks, per task
            stats = torch.tensor([loss.item(), 1.0], device=device)
            if dp_size > 1:
                dist.all_reduce(stats, group=data_parallel_group())
            mean_loss = (stats[0] / stats[1]).item()
            for batch in micro:
                b = batch.latent.shape[0]
                samples_acc += b * dp_size
                tokens_acc += batch.num_tokens * dp_size
                flops_acc += dp_size * b * dit_flops_per_sample(
                    config.model, batch.num_tokens // b,
                    int(batch.text_mask.sum(1).float().mean()),
                    recompute=config.parallel.recompute == "full",
                )  # fmt: skip
            record = {"step": step + 1, "loss": mean_loss, "lr": lr, "grad_norm": grad_norm}
            tasks = [tk for prep in preps for tk in prep["tasks"]]
            for task in sorted(set(tasks)):
                sel = [i for i, tk in enumerate(tasks) if tk == task]
                record[f"loss/{task}"] = per_sample[sel].mean().item()
            history.append(record)
            log.tick(mean_loss)
            if (step + 1) % config.log.log_every == 0 or step + 1 == config.train_steps:
                now = time.perf_counter()
                dt = max(now - t_last, 1e-9)
                world = dist.get_world_size()
                scalars = {
                    "loss": mean_loss, "lr": lr, "grad_norm": grad_norm,
                    "samples_per_s": samples_acc / dt, "tokens_per_s": tokens_acc / dt,
                    "mfu": flops_acc / dt / (peak * world) if peak else 0.0,
                    "skipped/nonfinite": skipped_nonfinite, "skipped/corrupt": skipped_corrupt,
                    **{k: v for k, v in record.items() if k.startswith("loss/")},
                }  # fmt: skip
                if device.type == "cuda":
                    scalars["memory/max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
                else:
                    import psutil

                    scalars["memory/rss_gib"] = psutil.Process().memory_info().rss / 2**30
                log.scalars(step + 1, scalars)
                t_last, samples_acc, tokens_acc, flops_acc = now, 0, 0, 0.0
            if (step + 1) % config.checkpoint.save_every == 0 or step + 1 == config.train_steps:
                checkpoint(step + 1)
        if async_queue is not None:
            async_queue.maybe_finalize_async_calls(blocking=True)
            async_queue.close()
    finally:
        log.close()

    # export in the mugv-dit layout (merging LoRA adapters first)
    engine.sync_params()
    if config.lora is not None:
        from mugv_train.lora import merged_state_dict

        full = merged_state_dict(chunks)
    else:
        full = full_state_dict(chunks)
    exported_null = null_text if config.objective.caption_dropout > 0 else None
    result = TrainResult(
        out, history, skipped_nonfinite=skipped_nonfinite, skipped_corrupt=skipped_corrupt
    )
    if rank == 0:
        result.export_dir = export_mugv_dit(chunks[0], out / "export", full, exported_null)
        (out / "history.json").write_text(json.dumps(history))
    if ema is not None:
        stage_sd = stage.state_dict()
        with torch.no_grad():
            backup = {k: stage_sd[k].clone() for k in ema.shadow}
            for k, v in ema.shadow.items():
                stage_sd[k].copy_(v.to(stage_sd[k].dtype))
            ema_full = full_state_dict(chunks)
            for k, v in backup.items():
                stage_sd[k].copy_(v)
        if rank == 0:
            result.ema_export_dir = export_mugv_dit(
                chunks[0], out / "export_ema", ema_full, exported_null
            )
    return result


def run_info(config: TrainConfig) -> dict[str, Any]:
    """A short summary of a config (for the CLI's dry run)."""
    return {"name": config.name, "steps": config.train_steps, "model": config.model.to_dict()}
