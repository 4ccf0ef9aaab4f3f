"""Training recipes: functions returning a :class:`TrainConfig` (paper §4.2, reference §G.5).

Every recipe takes the shard root(s) and output folder plus keyword overrides of the
top-level fields; finer changes use :func:`mugv_train.config.apply_overrides`. Names say
what each was set up for; the paper discloses no step counts or learning rates for the
pretraining stages, so those are the official fine-tune defaults (lr 1e-5 constant,
AdamW (0.9, 0.999), eps 1e-10, clip 1.0, bf16) unless a stage needs otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from mugv_dit import DiTConfig
from mugv_train.config import (
    CheckpointConfig,
    DataConfig,
    EMAConfig,
    LogConfig,
    LoRAConfig,
    ObjectiveConfig,
    OptimConfig,
    ParallelConfig,
    TrainConfig,
)
from mugv_train.objectives import TaskMix

_GPU_PARALLEL = ParallelConfig(
    tensor_parallel=4,
    sequence_parallel=True,  # TP 4 + SP as in the official launch scripts (reference §G.4)
    transformer_impl="transformer_engine",
    recompute="full",
    precision="bf16",
)
_FINETUNE_OPTIM = OptimConfig(lr=1e-5, min_lr=1e-5, warmup_steps=100, schedule="constant")


def debug(shards: str, output_dir: str, **overrides) -> TrainConfig:
    """CPU smoke training of the ``debug`` DiT (2 blocks, 288 wide) with a 384-d text
    encoder (e.g. all-MiniLM-L6-v2). Loss falls within a few hundred steps on small shards."""
    return TrainConfig(
        model=DiTConfig.preset("debug", text_dim=384),
        output_dir=output_dir,
        train_steps=300,
        data=DataConfig(shards=shards, batch_size=2, prefetch=2, null_text_tokens=77),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=20, schedule="cosine", eps=1e-8),
        objective=ObjectiveConfig(task_mix=TaskMix(t2v=0.8, i2v=0.2), caption_dropout=0.1),
        checkpoint=CheckpointConfig(save_every=100, keep_last=2),
        log=LogConfig(log_every=10),
        ema=EMAConfig(decay=0.99),
        seed=0,
        name="debug",
        **overrides,
    )


def stage1(shards: str, output_dir: str, **overrides) -> TrainConfig:
    """Stage 1 (paper §4.2.2): images + 360p short video; the image share anneals from 0.7
    to 0.1 so that video dominates by the end. T2V only (frame masking starts in stage 2)."""
    return TrainConfig(
        model=DiTConfig.preset("10b"),
        output_dir=output_dir,
        train_steps=100_000,
        data=DataConfig(shards=shards, batch_size=1, image_share=(0.7, 0.1), max_tokens=12_000),
        parallel=_GPU_PARALLEL,
        optim=OptimConfig(lr=1e-4, min_lr=1e-4, warmup_steps=1000, schedule="constant"),
        objective=ObjectiveConfig(task_mix=TaskMix(t2v=1.0), caption_dropout=0.1),
        checkpoint=CheckpointConfig(save_every=1000, keep_last=5, async_save=True),
        name="stage1",
        **overrides,
    )


def stage2(shards: str, output_dir: str, **overrides) -> TrainConfig:
    """Stage 2: 360p video, clips growing 2 s -> 5 s (give shards of both lengths); first-
    frame masking introduced (I2V share 0.3, paper §3.7)."""
    return dataclasses.replace(
        stage1(shards, output_dir),
        data=DataConfig(shards=shards, batch_size=1, max_tokens=12_000),
        objective=ObjectiveConfig(
            task_mix=TaskMix(t2v=0.6, i2v=0.3, i2v_random=0.05, i2v_last=0.05), caption_dropout=0.1
        ),
        name="stage2",
        **overrides,
    )


def stage3(shards: str, output_dir: str, **overrides) -> TrainConfig:
    """Stage 3: 720p, 5 s clips (50,402 tokens per sample), curated from ~12M videos."""
    return dataclasses.replace(
        stage2(shards, output_dir),
        data=DataConfig(shards=shards, batch_size=1),
        optim=OptimConfig(lr=5e-5, min_lr=5e-5, warmup_steps=500, schedule="constant"),
        train_steps=20_000,
        name="stage3",
        **overrides,
    )


def sft(shards: str, output_dir: str, **overrides) -> TrainConfig:
    """Annealed SFT on ~0.3M curated clips (paper §4.2.3): the LR decays linearly to 0;
    checkpoints are kept for the post-hoc EMA (``mugv-train post-ema``)."""
    return dataclasses.replace(
        stage3(shards, output_dir),
        optim=OptimConfig(lr=1e-5, min_lr=0.0, warmup_steps=100, schedule="linear"),
        checkpoint=CheckpointConfig(save_every=500, keep_last=0),
        train_steps=10_000,
        name="sft",
        **overrides,
    )


def dpo(shards: str, output_dir: str, **overrides) -> TrainConfig:
    """Diffusion-DPO on pairwise motion-quality labels: micro-batches are (preferred,
    rejected) pairs, the SFT loss on the preferred sample is kept as a regulariser."""
    return dataclasses.replace(
        sft(shards, output_dir),
        data=DataConfig(shards=shards, batch_size=2),
        objective=ObjectiveConfig(
            kind="dpo", beta=500.0, sft_weight=1.0, task_mix=TaskMix(t2v=0.5, i2v=0.5)
        ),
        optim=_FINETUNE_OPTIM,
        train_steps=2_000,
        name="dpo",
        **overrides,
    )


def kto(shards: str, output_dir: str, **overrides) -> TrainConfig:
    """Diffusion-KTO on binary good/bad labels (a boolean ``label`` shard column)."""
    return dataclasses.replace(
        dpo(shards, output_dir),
        data=DataConfig(shards=shards, batch_size=1),
        objective=ObjectiveConfig(
            kind="kto", beta=500.0, sft_weight=1.0, task_mix=TaskMix(t2v=0.5, i2v=0.5)
        ),
        name="kto",
        **overrides,
    )


def lora(shards: str, output_dir: str, **overrides) -> TrainConfig:
    """LoRA fine-tuning: rank 64, alpha 32 on qkv, proj, q, kv, fc1, fc2 (reference §G.5)."""
    return dataclasses.replace(
        sft(shards, output_dir),
        lora=LoRAConfig(rank=64, alpha=32.0),
        parallel=dataclasses.replace(_GPU_PARALLEL, transformer_impl="local"),
        optim=OptimConfig(lr=1e-4, min_lr=1e-4, warmup_steps=50, schedule="constant"),
        train_steps=2_000,
        name="lora",
        **overrides,
    )


RECIPES: dict[str, Callable[..., TrainConfig]] = {
    "debug": debug,
    "stage1": stage1,
    "stage2": stage2,
    "stage3": stage3,
    "sft": sft,
    "dpo": dpo,
    "kto": kto,
    "lora": lora,
}

__all__ = ["RECIPES", "debug", "dpo", "kto", "lora", "sft", "stage1", "stage2", "stage3"]
