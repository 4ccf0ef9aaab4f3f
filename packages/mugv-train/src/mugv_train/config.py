"""`TrainConfig`: one typed configuration of a training run, built from small sections.

Recipes (``mugv_train.recipes``) are functions returning a ``TrainConfig``; the CLI applies
``key.sub=value`` overrides with :func:`apply_overrides`. Variants use ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mugv_dit import DiTConfig
from mugv_train.objectives import TASK_LOSS_WEIGHTS, TaskMix


@dataclass(frozen=True)
class ParallelConfig:
    """How the model is split. world = TP x CP x PP x DP (DP is what is left)."""

    tensor_parallel: int = 1
    """TP degree: heads and MLP columns split inside a node."""
    sequence_parallel: bool = False
    """With TP > 1: norms, modulation and residuals run on 1/TP of the tokens (reference
    §G.4 trains with TP 4 + SP). A no-op at TP 1."""
    context_parallel: int = 1
    """CP degree: the token sequence is cut into CP chunks; self-attention all-gathers K/V."""
    pipeline_parallel: int = 1
    """PP degree: the layer stack is cut into PP stages (Megatron's 1F1B schedule)."""
    virtual_pipeline: int = 1
    """Virtual stages per pipeline rank (Megatron's interleaved 1F1B schedule, a smaller
    bubble): each rank holds this many chunks of depth / (PP x VPP) layers. Needs PP > 1."""
    transformer_impl: Literal["local", "transformer_engine"] = "local"
    """Layer spec backend: Megatron local layers (CPU and GPU) or Transformer Engine (GPU)."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recompute: none, selective (core attention) or full (every block)."""
    distributed_optimizer: bool = True
    """On CUDA: Megatron's DDP and distributed optimizer (optimizer state sharded over DP
    ranks). On CPU (gloo) the loop uses torch AdamW with its own gradient reduction."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute dtype: fp32, or bf16 autocast with fp32 master weights."""
    fp8: bool = False
    """FP8 GEMMs through Transformer Engine (GPU, transformer_engine only)."""

    def __post_init__(self) -> None:
        for name in (
            "tensor_parallel",
            "context_parallel",
            "pipeline_parallel",
            "virtual_pipeline",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"ParallelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.fp8 and self.transformer_impl != "transformer_engine":
            raise ValueError("fp8 needs transformer_impl='transformer_engine'")
        if self.virtual_pipeline > 1 and self.pipeline_parallel == 1:
            raise ValueError(
                f"virtual_pipeline={self.virtual_pipeline} needs pipeline_parallel > 1; "
                "set parallel.pipeline_parallel or virtual_pipeline=1"
            )

    @property
    def model_parallel(self) -> int:
        """Ranks that hold one copy of the model: TP x CP x PP."""
        return self.tensor_parallel * self.context_parallel * self.pipeline_parallel


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and the learning-rate schedule (official fine-tune defaults, reference §G.5)."""

    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int = 100
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    """Shape after warmup, decaying from lr to min_lr over the remaining steps."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-10
    weight_decay: float = 0.0
    clip_grad: float = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(
                f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass(frozen=True)
class DataConfig:
    """Where the shards are and how batches are formed."""

    shards: str = ""
    """Root folder of mugv-data shards (a path; several roots separated by ',')."""
    batch_size: int = 1
    """Samples per micro-batch on one DP rank (same bucket within a batch)."""
    microbatches: int = 1
    """Micro-batches per step and DP rank: gradient accumulation, and the number of
    micro-batches in flight in the pipeline schedule (bubble (PP-1)/(m+PP-1))."""
    max_tokens: int = 0
    """If > 0: cap on video tokens per micro-batch; batches are shrunk to fit (token balance)."""
    image_share: tuple[float, float] = (0.0, 0.0)
    """Share of one-frame samples at the start and at the end of the run (linearly annealed)."""
    prefetch: int = 2
    """Batches prepared ahead by a background thread (0 = synchronous)."""
    null_text_tokens: int = 300
    """Length of the null caption embedding for caption dropout."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.microbatches < 1:
            raise ValueError(f"microbatches must be >= 1, got {self.microbatches}")
        a, b = self.image_share
        if not (0 <= a <= 1 and 0 <= b <= 1):
            raise ValueError(f"image_share values must be in [0, 1], got {self.image_share}")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What is optimised: the flow loss (pretraining, SFT) or a preference loss."""

    kind: Literal["flow", "dpo", "kto"] = "flow"
    task_mix: TaskMix = field(default_factory=TaskMix)
    task_weights: dict[str, float] = field(default_factory=lambda: dict(TASK_LOSS_WEIGHTS))
    caption_dropout: float = 0.0
    """Probability of replacing a caption by the null embedding (classifier-free guidance)."""
    timestep_shift: bool = True
    """Shift logit-normal timesteps by the resolution/length ratio r (official: on)."""
    timestep_shift_scale: float = 1.0
    """Extra factor on r (mugv-infer's ``FlowEulerSampler.shift_scale``; official: 1). Tiny
    clips have r < 1, which moves training towards clean latents; a scale that lifts r
    above 1 trains the high-noise steps where layout and motion are decided."""
    beta: float = 500.0
    """DPO / KTO temperature on the mean squared velocity error."""
    sft_weight: float = 1.0
    """Weight of the flow (SFT) loss added to a preference loss as a regulariser."""
    kto_lambda_desirable: float = 1.0
    kto_lambda_undesirable: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")
        if self.timestep_shift_scale <= 0:
            raise ValueError(f"timestep_shift_scale must be > 0, got {self.timestep_shift_scale}")
        if self.kind != "flow" and self.beta <= 0:
            raise ValueError(f"beta must be > 0 for {self.kind}, got {self.beta}")


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters on the block linears (official: r 64, alpha 32, reference §G.5)."""

    rank: int = 64
    alpha: float = 32.0
    targets: tuple[str, ...] = (
        "linear_qkv",
        "linear_proj",
        "linear_q",
        "linear_kv",
        "linear_fc1",
        "linear_fc2",
    )


@dataclass(frozen=True)
class EMAConfig:
    """Online EMA of the weights (official --ema-decay 0.9999, --ema-interval 1)."""

    decay: float = 0.9999
    interval: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {self.decay}")


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often checkpoints are written."""

    save_every: int = 100
    keep_last: int = 3
    """Older step folders are deleted once a newer one is complete (0 = keep all)."""
    format: Literal["auto", "torch_dist", "cpu"] = "auto"
    """torch_dist (Megatron dist_checkpointing, GPU) or cpu (per-rank torch files); auto
    picks torch_dist on CUDA."""
    async_save: bool = False
    """Write torch_dist checkpoints in the background (GPU)."""
    resume: bool = True
    """Resume from the newest complete checkpoint in ``<output_dir>/checkpoints`` if any."""


@dataclass(frozen=True)
class LogConfig:
    log_every: int = 10
    tensorboard: bool = True
    wandb: bool = False
    progress: bool = True
    """tqdm progress bar on rank 0."""


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run. ``output_dir`` receives checkpoints, logs and exports."""

    model: DiTConfig
    output_dir: str
    train_steps: int
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    lora: LoRAConfig | None = None
    ema: EMAConfig | None = None
    init_from: str = ""
    """Weights to start from: a mugv-dit pretrained folder (``save_pretrained`` layout) or
    empty for a fresh mugv-dit initialisation."""
    reference_from: str = ""
    """Frozen reference model for DPO/KTO (mugv-dit folder); empty = the initial weights."""
    seed: int = 6309
    max_nonfinite_steps: int = 5
    """Stop with an error after this many consecutive steps with a NaN/inf loss."""
    name: str = "run"

    def __post_init__(self) -> None:
        if self.train_steps < 1:
            raise ValueError(f"train_steps must be >= 1, got {self.train_steps}")
        if not self.output_dir:
            raise ValueError("TrainConfig.output_dir is required (checkpoints and logs go there)")
        if self.model.num_heads % self.parallel.tensor_parallel:
            raise ValueError(
                f"{self.model.num_heads} heads cannot be split over tensor_parallel="
                f"{self.parallel.tensor_parallel}; pick a TP degree dividing the head count"
            )
        stages = self.parallel.pipeline_parallel * self.parallel.virtual_pipeline
        if self.model.depth % stages:
            raise ValueError(
                f"depth {self.model.depth} is not divisible by pipeline_parallel x "
                f"virtual_pipeline = {stages}; pick degrees whose product divides the depth"
            )

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model"] = self.model.to_dict()
        return data

    def to_json(self, path: str | Path) -> None:
        from mugv_train._io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, default=list))


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "parallel": ParallelConfig,
    "optim": OptimConfig,
    "objective": ObjectiveConfig,
    "checkpoint": CheckpointConfig,
    "log": LogConfig,
    "lora": LoRAConfig,
    "ema": EMAConfig,
}


def _coerce(current: Any, text: str) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, tuple):
        return tuple(type(current[0])(v) if current else v for v in text.split(","))
    return text


def apply_overrides(config: TrainConfig, overrides: list[str] | dict[str, str]) -> TrainConfig:
    """Apply ``section.field=value`` (or ``field=value`` for top-level fields) overrides.

    Example: ``["train_steps=50", "optim.lr=3e-4", "model.depth=4", "parallel.tensor_parallel=2"]``.
    """
    items = (
        overrides.items() if isinstance(overrides, dict) else (o.split("=", 1) for o in overrides)
    )
    for item in items:
        if len(item) != 2:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, text = item
        parts = key.split(".")
        if len(parts) == 1:
            names = {f.name for f in dataclasses.fields(config)}
            if key not in names:
                raise ValueError(f"unknown setting {key!r}; top-level settings: {sorted(names)}")
            config = dataclasses.replace(config, **{key: _coerce(getattr(config, key), text)})
            continue
        if len(parts) != 2:
            raise ValueError(f"override key {key!r} must be 'field' or 'section.field'")
        section_name, fld = parts
        section = getattr(config, section_name, None)
        if section_name == "model":
            config = dataclasses.replace(
                config,
                model=config.model.replace(**{fld: _coerce(getattr(config.model, fld), text)}),
            )
            continue
        if section_name not in _SECTIONS:
            raise ValueError(
                f"unknown section {section_name!r}; sections: model, {', '.join(_SECTIONS)}"
            )
        if section is None:
            section = _SECTIONS[section_name]()
        names = {f.name for f in dataclasses.fields(section)}
        if fld not in names:
            raise ValueError(f"unknown setting {key!r}; {section_name} has {sorted(names)}")
        section = dataclasses.replace(section, **{fld: _coerce(getattr(section, fld), text)})
        config = dataclasses.replace(config, **{section_name: section})
    return config
