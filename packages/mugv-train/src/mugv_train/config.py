"""`TrainConfig`: one typed configuration of a training run, built from small sections.

Recipes (``mugv_train.recipes``) are functions returning a ``TrainConfig``; the CLI applies
``key.sub=value`` overrides with :func:`apply_overrides`. Variants use ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mugv_dit import DiTConfig
from mugv_train.objectives import TASK_LOSS_WEIGHTS, TaskMix


# -- field checks ----------------------------------------------------------------------------
def _accepts(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the kind ``hint`` names (values and ranges are checked apart)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, a) for a in args)
    if origin is Literal:
        return isinstance(value, str)  # the choice itself is a ValueError
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_accepts(v, args[0]) for v in value)
        return len(value) == len(args) and all(
            _accepts(v, a) for v, a in zip(value, args, strict=True)
        )
    if origin is dict:
        k, v = args
        return isinstance(value, dict) and all(
            _accepts(a, k) and _accepts(b, v) for a, b in value.items()
        )
    return isinstance(value, origin or hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "None"
    if hint is float:
        return "a number"
    if hint is int:
        return "an int"
    if hint is bool:
        return "a bool (true/false)"
    if hint is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            plural = {str: "strings", int: "ints", float: "numbers"}.get(args[0])
            return f"a tuple of {plural or _describe(args[0]) + ' values'}"
        return f"a tuple of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin is dict:
        return f"a dict of {_describe(args[0])} -> {_describe(args[1])}"
    return f"a {getattr(origin or hint, '__name__', str(hint))}"


def _coerce_field(value: Any, hint: Any) -> Any:
    """Harmless conversions: a path for a string, a list for a tuple, an int for a float."""
    origin = typing.get_origin(hint)
    if hint is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, list):
        value = tuple(value)
    if origin is tuple and isinstance(value, tuple):
        args = typing.get_args(hint)
        inner = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(inner) == len(value):
            return tuple(_coerce_field(v, a) for v, a in zip(value, inner, strict=True))
    if origin is dict and isinstance(value, dict):
        vt = typing.get_args(hint)[1]
        return {k: _coerce_field(v, vt) for k, v in value.items()}
    return value


def _finite_numbers(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(_finite_numbers(v) for v in value)
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    return True


def check_parallel_divides(
    num_heads: int,
    depth: int,
    tensor_parallel: int,
    pipeline_parallel: int,
    virtual_pipeline: int,
    error: type[ValueError] = ValueError,
) -> None:
    """The one definition of the heads-vs-TP and depth-vs-PP x VPP checks (used by
    :class:`TrainConfig` and by :func:`mugv_train.parallel._checks.check_layout`): raise
    ``error`` naming the value and the fix."""
    if num_heads % tensor_parallel:
        raise error(
            f"model.num_heads={num_heads} is not divisible by parallel.tensor_parallel="
            f"{tensor_parallel}: each TP rank holds whole heads; use a tensor_parallel that "
            f"divides {num_heads}"
        )
    stages = pipeline_parallel * virtual_pipeline
    if depth % stages:
        raise error(
            f"model.depth={depth} is not divisible by pipeline_parallel x virtual_pipeline = "
            f"{pipeline_parallel} x {virtual_pipeline} = {stages}: every virtual stage holds "
            f"the same number of layers; choose pipeline_parallel x virtual_pipeline dividing "
            f"{depth}"
        )


def _check_fields(obj: Any) -> None:
    """Every field of a config dataclass against its annotation.

    A value of the wrong kind is a TypeError naming the field, the value and the kind
    wanted; a NaN/inf number or a choice outside a ``Literal`` is a ValueError.
    """
    cls = type(obj).__name__
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        hint = hints[f.name]
        value = _coerce_field(getattr(obj, f.name), hint)
        object.__setattr__(obj, f.name, value)
        if not _accepts(value, hint):
            raise TypeError(
                f"{cls}.{f.name} must be {_describe(hint)}, got {value!r} ({type(value).__name__})"
            )
        if not _finite_numbers(value):
            raise ValueError(f"{cls}.{f.name} must hold finite numbers, got {value!r}")
        literal = next(
            (a for a in (hint, *typing.get_args(hint)) if typing.get_origin(a) is Literal), None
        )
        if literal is not None and isinstance(value, str) and value not in literal.__args__:
            raise ValueError(
                f"{cls}.{f.name} must be one of {', '.join(map(repr, literal.__args__))}, "
                f"got {value!r}"
            )


def _at_least(obj: Any, name: str, low: float, what: str = "") -> None:
    value = getattr(obj, name)
    if value < low:
        hint = f" ({what})" if what else ""
        raise ValueError(f"{type(obj).__name__}.{name} must be >= {low}{hint}, got {value!r}")


def _above(obj: Any, name: str, low: float, what: str = "") -> None:
    value = getattr(obj, name)
    if not value > low:
        hint = f" ({what})" if what else ""
        raise ValueError(f"{type(obj).__name__}.{name} must be > {low}{hint}, got {value!r}")


def _within(obj: Any, name: str, low: float, high: float, what: str = "") -> None:
    value = getattr(obj, name)
    if not low <= value <= high:
        hint = f" ({what})" if what else ""
        raise ValueError(
            f"{type(obj).__name__}.{name} must be in [{low}, {high}]{hint}, got {value!r}"
        )


@dataclass(frozen=True)
class ParallelConfig:
    """How the model is split. world = TP x CP x PP x DP (DP is what is left)."""

    tensor_parallel: int = 1
    """TP degree: heads and MLP columns split inside a node."""
    sequence_parallel: bool = False
    """With TP > 1: norms, modulation and residuals run on 1/TP of the tokens (reference
    §G.4 trains with TP 4 + SP). A no-op at TP 1."""
    context_parallel: int = 1
    """CP degree: the token sequence is cut into CP chunks. Local spec: self-attention
    all-gathers K/V (Megatron's mapping, the CPU reference path); Transformer Engine spec:
    TE's attention exchanges K/V itself (``cp_comm_type``)."""
    cp_comm_type: Literal["p2p", "all_gather", "a2a"] = "p2p"
    """Transformer Engine's context-parallel communication in self-attention: ring ``p2p``
    (overlapped with compute), ``all_gather`` of K/V, or ``a2a`` (Ulysses all-to-all over
    heads). Ignored by the local spec and at CP 1."""
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
        _check_fields(self)
        for name in (
            "tensor_parallel",
            "context_parallel",
            "pipeline_parallel",
            "virtual_pipeline",
        ):
            _at_least(self, name, 1, "a parallel degree; 1 = not split")
        if self.fp8 and self.transformer_impl != "transformer_engine":
            raise ValueError(
                "ParallelConfig.fp8 needs transformer_impl='transformer_engine'; set "
                "parallel.transformer_impl=transformer_engine or parallel.fp8=false"
            )
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
        _check_fields(self)
        _above(self, "lr", 0.0, "the peak learning rate")
        _at_least(self, "min_lr", 0.0, "the final learning rate")
        if self.min_lr > self.lr:
            raise ValueError(
                f"OptimConfig.min_lr {self.min_lr} is above lr {self.lr}; need 0 <= min_lr <= lr"
            )
        _at_least(self, "warmup_steps", 0)
        for i, beta in enumerate(self.betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(
                    f"OptimConfig.betas must be in [0, 1) (Adam's decay rates, official "
                    f"(0.9, 0.999)), got betas[{i}]={beta}"
                )
        _above(self, "eps", 0.0, "Adam's epsilon, official 1e-10")
        _at_least(self, "weight_decay", 0.0)
        _at_least(self, "clip_grad", 0.0, "0 = no clipping")


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
        _check_fields(self)
        _at_least(self, "batch_size", 1)
        _at_least(self, "microbatches", 1)
        _at_least(self, "max_tokens", 0, "0 = no cap")
        _at_least(self, "prefetch", 0, "0 = synchronous")
        _at_least(self, "null_text_tokens", 1)
        a, b = self.image_share
        if not (0 <= a <= 1 and 0 <= b <= 1):
            raise ValueError(
                f"DataConfig.image_share values must be in [0, 1] (shares at the start and "
                f"the end of the run), got {self.image_share}"
            )


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
        _check_fields(self)
        unknown = sorted(set(self.task_weights) - set(TASK_LOSS_WEIGHTS))
        if unknown:
            raise ValueError(
                f"ObjectiveConfig.task_weights has unknown tasks {unknown}; the tasks are "
                f"{list(TASK_LOSS_WEIGHTS)}"
            )
        if any(w < 0 for w in self.task_weights.values()):
            raise ValueError(f"ObjectiveConfig.task_weights must be >= 0, got {self.task_weights}")
        _within(self, "caption_dropout", 0.0, 1.0, "a probability")
        _above(self, "timestep_shift_scale", 0.0)
        if self.kind != "flow":
            _above(self, "beta", 0.0, f"the {self.kind} temperature")
        _at_least(self, "sft_weight", 0.0)
        _at_least(self, "kto_lambda_desirable", 0.0)
        _at_least(self, "kto_lambda_undesirable", 0.0)


#: The block linears LoRA can adapt (Megatron names, see ``mugv_train.lora``).
LORA_TARGETS = (
    "linear_qkv",
    "linear_proj",
    "linear_q",
    "linear_kv",
    "linear_fc1",
    "linear_fc2",
)


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters on the block linears (official: r 64, alpha 32, reference §G.5)."""

    rank: int = 64
    alpha: float = 32.0
    targets: tuple[str, ...] = LORA_TARGETS
    """Block linears that get adapters (Megatron names)."""

    def __post_init__(self) -> None:
        _check_fields(self)
        _at_least(self, "rank", 1, "the adapter rank r; official 64")
        _above(self, "alpha", 0.0, "the scale is alpha / rank; official 32")
        if not self.targets:
            raise ValueError(f"LoRAConfig.targets is empty; choose from {list(LORA_TARGETS)}")
        unknown = sorted(set(self.targets) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(
                f"LoRAConfig.targets has unknown linears {unknown}; choose from "
                f"{list(LORA_TARGETS)}"
            )


@dataclass(frozen=True)
class EMAConfig:
    """Online EMA of the weights (official --ema-decay 0.9999, --ema-interval 1)."""

    decay: float = 0.9999
    interval: int = 1

    def __post_init__(self) -> None:
        _check_fields(self)
        if not 0.0 < self.decay < 1.0:
            raise ValueError(
                f"EMAConfig.decay must be in (0, 1) (official 0.9999), got {self.decay}"
            )
        _at_least(self, "interval", 1, "steps between EMA updates")


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

    def __post_init__(self) -> None:
        _check_fields(self)
        _at_least(self, "save_every", 1, "steps between checkpoints")
        _at_least(self, "keep_last", 0, "0 = keep all")


@dataclass(frozen=True)
class LogConfig:
    log_every: int = 10
    tensorboard: bool = True
    wandb: bool = False
    progress: bool = True
    """tqdm progress bar on rank 0."""

    def __post_init__(self) -> None:
        _check_fields(self)
        _at_least(self, "log_every", 1, "steps between logged scalars")


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
        _check_fields(self)
        _at_least(self, "train_steps", 1)
        if not self.output_dir.strip():
            raise ValueError("TrainConfig.output_dir is required (checkpoints and logs go there)")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"TrainConfig.seed must be in [0, 2**63), got {self.seed}")
        _at_least(self, "max_nonfinite_steps", 1)
        if not self.name.strip():
            raise ValueError("TrainConfig.name must be a non-empty string (names the run)")
        check_parallel_divides(
            self.model.num_heads,
            self.model.depth,
            self.parallel.tensor_parallel,
            self.parallel.pipeline_parallel,
            self.parallel.virtual_pipeline,
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


_OPTIONAL_SECTIONS = ("lora", "ema")


def _parse(text: str, hint: Any, key: str) -> Any:
    """An override's text as a value of the field's annotation (checked again by the config)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null", ""):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"override {key}={text!r}: expected true or false")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"override {key}={text!r}: expected an int") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"override {key}={text!r}: expected a number") from None
    if origin is tuple:
        items = [t.strip() for t in text.split(",")] if text.strip() else []
        inner = [args[0]] * len(items) if args and args[-1] is Ellipsis else list(args)
        if len(inner) != len(items):
            raise ValueError(
                f"override {key}={text!r}: expected {len(inner)} comma-separated values"
            )
        return tuple(_parse(t, a, key) for t, a in zip(items, inner, strict=True))
    if origin is dict or (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise ValueError(
                f"override {key}={text!r}: expected a JSON object, e.g. {key}='{{\"t2v\": 1.0}}'"
            )
        if origin is dict:
            return data
        try:
            return hint(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"override {key}={text!r}: {exc}") from None
    return text


def _hints(cls: type) -> dict[str, Any]:
    return {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}


def _rebuild(obj: Any, changes: dict[str, Any], keys: dict[str, str]) -> Any:
    """``dataclasses.replace(obj, **changes)``, naming the overrides in its errors."""
    try:
        return dataclasses.replace(obj, **changes)
    except (TypeError, ValueError) as exc:
        if not keys:
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in keys.items())
        error = TypeError if isinstance(exc, TypeError) else ValueError
        raise error(f"override {given}: {exc}") from None


def apply_overrides(config: TrainConfig, overrides: list[str] | dict[str, Any]) -> TrainConfig:
    """Apply ``section.field=value`` (or ``field=value`` for top-level fields) overrides.

    Example: ``["train_steps=50", "optim.lr=3e-4", "model.depth=4", "parallel.tensor_parallel=2"]``.
    Values are parsed by the field's type (``true``/``false``, ints, numbers, comma-separated
    tuples, JSON objects for dicts); ``lora=none`` / ``ema=none`` turn a section off. Every
    override is checked (unknown keys, wrong types, bad values) before the config is built;
    errors are a ValueError / TypeError naming the override and the fix.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if isinstance(overrides, dict):
        items = [(str(k), v) for k, v in overrides.items()]
    elif isinstance(overrides, list | tuple):
        items = []
        for o in overrides:
            if not isinstance(o, str):
                raise TypeError(f"an override must be a 'key=value' string, got {o!r}")
            key, sep, text = o.partition("=")
            if not sep or not key.strip():
                raise ValueError(
                    f"override {o!r} is not of the form key=value (e.g. optim.lr=1e-4)"
                )
            items.append((key.strip(), text))
    else:
        raise TypeError(
            f"overrides must be a list of 'key=value' strings or a dict, got {type(overrides).__name__}"
        )
    sections = ["model", *_SECTIONS]
    top_hints = _hints(TrainConfig)
    top: dict[str, Any] = {}
    per_section: dict[str, dict[str, Any]] = {}
    given: dict[str, dict[str, str]] = {}
    for key, text in items:
        parts = key.split(".")
        if len(parts) == 1:
            if key in _OPTIONAL_SECTIONS:
                if not isinstance(text, str) or text.strip().lower() not in ("none", "null"):
                    raise ValueError(
                        f"override {key}={text!r}: '{key}' is a section; set {key}.FIELD=VALUE, "
                        f"or {key}=none to turn it off"
                    )
                top[key] = None
                per_section.pop(key, None)
                continue
            if key in sections:
                raise ValueError(
                    f"override {key}={text!r}: '{key}' is a section; set {key}.FIELD=VALUE"
                )
            if key not in top_hints:
                raise ValueError(
                    f"unknown setting {key!r}; top-level settings: "
                    f"{sorted(set(top_hints) - set(sections))}, sections: {sections}"
                )
            top[key] = _parse(text, top_hints[key], key) if isinstance(text, str) else text
            given.setdefault("", {})[key] = text
            continue
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"override key {key!r} must be 'field' or 'section.field'")
        section_name, fld = parts
        if section_name not in sections:
            raise ValueError(
                f"unknown section {section_name!r} in override {key!r}; sections: "
                f"{', '.join(sections)}"
            )
        cls = DiTConfig if section_name == "model" else _SECTIONS[section_name]
        hints = _hints(cls)
        if fld not in hints:
            raise ValueError(f"unknown setting {key!r}; {section_name} has {sorted(hints)}")
        value = _parse(text, hints[fld], key) if isinstance(text, str) else text
        per_section.setdefault(section_name, {})[fld] = value
        given.setdefault(section_name, {})[key] = text
        if section_name in _OPTIONAL_SECTIONS:
            top.pop(section_name, None)  # `lora=none lora.rank=8`: the later one wins
    changes = dict(top)
    for name, fields_ in per_section.items():
        current = getattr(config, name)
        if current is None:  # an optional section turned on by its first override
            current = _SECTIONS[name]()
        changes[name] = _rebuild(current, fields_, given[name])
    return _rebuild(config, changes, given.get("", {}))
