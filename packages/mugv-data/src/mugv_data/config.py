"""Curation configuration: one typed dataclass tree with the paper's defaults.

Defaults follow the paper (reference notes §1.1): sharpness as Laplacian variance kept in
[200, 2000], aesthetics >= 4.5, motion (mean optical-flow magnitude over three evenly spaced
frame pairs) kept in [1, 20]; buckets follow the official inference settings (five aspect
ratios, 360p and 720p, frame counts = 1 mod 8 for 2-5 s clips).

Every threshold that the paper tunes per data source lives in ``SourceConfig``; a
``CurationConfig`` holds the default one plus per-source overrides (``for_source``). Configs
load from JSON or TOML files holding only what differs from the defaults.

Presets: ``paper`` (the defaults) and ``synthetic`` (thresholds for the tiny 64x48
synthetic clips of ``mugv_data.synthetic``, whose motion cannot reach the paper's range).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "AestheticConfig",
    "BalanceConfig",
    "BucketConfig",
    "CaptionConfig",
    "CurationConfig",
    "DedupConfig",
    "MotionConfig",
    "RayConfig",
    "SceneConfig",
    "SharpnessConfig",
    "SourceConfig",
]

# Official aspect-ratio table at 720p (architecture reference E), "H:W" -> (H, W) pixels.
OFFICIAL_ASPECT_RATIOS_720P: dict[str, tuple[int, int]] = {
    "9:16": (720, 1280),
    "3:4": (832, 1110),
    "1:1": (960, 960),
    "4:3": (1108, 832),
    "16:9": (1280, 720),
}


def _check_range(name: str, lo: float, hi: float) -> None:
    if lo > hi:
        raise ValueError(f"{name}: min ({lo}) must not exceed max ({hi})")


def _type_name(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def _check_value(name: str, v: Any, t: Any) -> None:
    """``v`` against the annotation ``t``: bool, int, float (finite), str, X | None,
    tuple[X, ...], tuple[X, Y], Mapping[str, X] or a config dataclass."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return
        (t,) = [a for a in args if a is not type(None)]
        return _check_value(name, v, t)
    if t is bool:
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be true or false, got {_type_name(v)}")
    elif t is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an integer, got {_type_name(v)}")
    elif t is float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError(f"{name} must be a number, got {_type_name(v)}")
        if not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v}")
    elif t is str:
        if not isinstance(v, str):
            raise TypeError(f"{name} must be a string, got {_type_name(v)}")
    elif origin is tuple:
        if not isinstance(v, tuple | list):
            raise TypeError(f"{name} must be a list, got {_type_name(v)}")
        if len(args) == 2 and args[1] is Ellipsis:
            for k, x in enumerate(v):
                _check_value(f"{name}[{k}]", x, args[0])
        else:
            if len(v) != len(args):
                raise ValueError(f"{name} must have {len(args)} values, got {list(v)}")
            for k, (x, a) in enumerate(zip(v, args)):
                _check_value(f"{name}[{k}]", x, a)
    elif origin is Mapping:
        if not isinstance(v, Mapping):
            raise TypeError(f"{name} must be a table/object, got {_type_name(v)}")
        for k, x in v.items():
            _check_value(f"{name} key", k, args[0])
            _check_value(f"{name}.{k}", x, args[1])
    elif dataclasses.is_dataclass(t) and not isinstance(v, t):
        raise TypeError(f"{name} must be a {t.__name__}, got {_type_name(v)}")


def _check_fields(obj: Any) -> None:
    """Every field of a config dataclass has its annotated type (numbers finite), so a bad
    override fails when the config is built, naming the field, not deep inside a stage."""
    section = getattr(obj, "_section", "")
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        name = f"{section}.{f.name}" if section else f.name
        _check_value(name, getattr(obj, f.name), hints[f.name])


def _at_least(name: str, v: float, lo: float) -> None:
    if v < lo:
        raise ValueError(f"{name} must be >= {lo:g}, got {v}")


@dataclass(frozen=True)
class SceneConfig:
    """Scene splitting: PySceneDetect for hard cuts plus a gradual-transition detector."""

    cut_threshold: float = 27.0
    """ContentDetector threshold (mean HSV change between consecutive frames, 0-255)."""
    gradual: bool = True
    """Detect fades and dissolves (colour-histogram + edge-structure change over a window)."""
    gradual_window_s: float = 0.33
    """Lag between the frames compared by the gradual detector, in seconds."""
    gradual_threshold: float = 0.25
    """Minimum transition score (0-1 scale) for a gradual transition, regardless of history."""
    gradual_sigma: float = 3.0
    """Temporal threshold: a score must also exceed median + sigma x robust std of the video."""
    min_clip_s: float = 2.0
    """Scenes shorter than this are dropped ("too short")."""
    max_clip_s: float = 5.0
    """Longer scenes are cut into consecutive clips of at most this length."""
    analysis_max_side: int = 256
    """Frames are downscaled to this longer side for scene detection."""

    _section = "scenes"

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.cut_threshold <= 0 or self.gradual_window_s <= 0:
            raise ValueError(
                "scenes.cut_threshold and scenes.gradual_window_s must be > 0, got "
                f"{self.cut_threshold} and {self.gradual_window_s}"
            )
        if not 0 <= self.gradual_threshold <= 1:
            raise ValueError(
                f"scenes.gradual_threshold must be in [0, 1], got {self.gradual_threshold}"
            )
        _at_least("scenes.gradual_sigma", self.gradual_sigma, 0)
        _at_least("scenes.analysis_max_side", self.analysis_max_side, 16)
        _check_range("scenes.min_clip_s/max_clip_s", self.min_clip_s, self.max_clip_s)
        if self.min_clip_s <= 0:
            raise ValueError("scenes.min_clip_s must be > 0")


@dataclass(frozen=True)
class SharpnessConfig:
    """OpenCV Laplacian variance of the grey frame, averaged over sampled frames."""

    enabled: bool = True
    min: float = 200.0
    max: float = 2000.0
    num_frames: int = 5

    _section = "sharpness"

    def __post_init__(self) -> None:
        _check_fields(self)
        _at_least("sharpness.num_frames", self.num_frames, 1)
        _check_range("sharpness", self.min, self.max)


@dataclass(frozen=True)
class MotionConfig:
    """Mean optical-flow magnitude (pixels/frame) over three evenly spaced frame pairs."""

    enabled: bool = True
    min: float = 1.0
    max: float = 20.0
    backend: str = "farneback"
    """``farneback`` (OpenCV, works offline) or ``raft`` (torchvision RAFT, needs weights)."""
    raft_weights: str | None = None
    """Path to a torchvision ``raft_large`` or ``raft_small`` state dict (``.pth``) for
    ``backend = "raft"``; frames with a side under 128 px are upscaled for RAFT."""
    max_side: int | None = None
    """Resize frames to this longer side before flow (magnitudes scale with size); None = native."""

    _section = "motion"

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.max_side is not None:
            _at_least("motion.max_side", self.max_side, 8)
        _check_range("motion", self.min, self.max)
        if self.backend not in ("farneback", "raft"):
            raise ValueError(f"motion.backend must be 'farneback' or 'raft', got {self.backend!r}")
        if self.backend == "raft" and not self.raft_weights:
            raise ValueError("motion.backend='raft' needs motion.raft_weights (a .pth path)")


@dataclass(frozen=True)
class AestheticConfig:
    """LAION-style predictor: CLIP image embedding (L2-normalised) + MLP head."""

    enabled: bool = False
    """Off unless weights are given: the predictor needs CLIP and head weights."""
    min: float = 4.5
    clip_model: str | None = None
    """A transformers CLIP model folder or Hub id (image tower + projection)."""
    head_weights: str | None = None
    """MLP head weights: a local .safetensors/.pth path or ``hf://org/repo/file``."""
    num_frames: int = 3

    _section = "aesthetic"

    def __post_init__(self) -> None:
        _check_fields(self)
        _at_least("aesthetic.num_frames", self.num_frames, 1)
        if self.enabled and not (self.clip_model and self.head_weights):
            raise ValueError(
                "aesthetic.enabled needs aesthetic.clip_model and aesthetic.head_weights"
            )


@dataclass(frozen=True)
class CaptionConfig:
    """Vision-language model stages: captioner and artifact filter (transformers backend)."""

    model: str | None = None
    """A transformers image-text-to-text model folder or Hub id (e.g. Qwen2-VL); None = off."""
    caption: bool = True
    """Generate captions (otherwise only side-car captions are used)."""
    artifact_filter: bool = False
    """Ask the model whether the clip has overlays, borders, speed changes or shake."""
    num_frames: int = 4
    max_new_tokens: int = 96
    caption_prompt: str = (
        "Describe this video clip in detail: the main subjects and their appearance, the "
        "motion, the camera and the background."
    )
    artifact_prompt: str = (
        "Does this video clip contain text overlays, large borders, special effects, "
        "speed-altered footage or camera shake? Answer yes or no."
    )
    backend: str = "transformers"
    """``transformers`` (batched ``generate``) or ``vllm`` (needs vLLM installed)."""
    on_unparsable: str = "drop"
    """What happens to a clip whose model answer does not parse (an artifact answer that is
    neither yes nor no, an empty caption): ``drop`` (stage ``artifact`` / ``caption``, the
    answer in the reason) or ``keep`` (the answer is kept in ``model_note``)."""

    _section = "captions"

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.backend not in ("transformers", "vllm"):
            raise ValueError(
                f"captions.backend must be 'transformers' or 'vllm', got {self.backend!r}"
            )
        if self.on_unparsable not in ("drop", "keep"):
            raise ValueError(
                f"captions.on_unparsable must be 'drop' or 'keep', got {self.on_unparsable!r}"
            )
        if self.num_frames < 1 or self.max_new_tokens < 1:
            raise ValueError("captions.num_frames and captions.max_new_tokens must be >= 1")


@dataclass(frozen=True)
class SourceConfig:
    """Everything the paper tunes per data source."""

    scenes: SceneConfig = field(default_factory=SceneConfig)
    sharpness: SharpnessConfig = field(default_factory=SharpnessConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    aesthetic: AestheticConfig = field(default_factory=AestheticConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)


@dataclass(frozen=True)
class DedupConfig:
    """Near-duplicate removal with 64-bit perceptual (DCT) hashes of sampled frames."""

    enabled: bool = True
    num_frames: int = 3
    max_distance: float = 6.0
    """Mean Hamming distance (of 64 bits) per sampled frame at or below which clips match."""
    max_duration_ratio: float = 1.25
    """Clips whose durations differ by more than this ratio are never duplicates."""

    _section = "dedup"

    def __post_init__(self) -> None:
        _check_fields(self)
        _at_least("dedup.num_frames", self.num_frames, 1)
        if not 0 <= self.max_distance <= 64:
            raise ValueError(f"dedup.max_distance must be in [0, 64] bits, got {self.max_distance}")
        _at_least("dedup.max_duration_ratio", self.max_duration_ratio, 1)


@dataclass(frozen=True)
class BalanceConfig:
    """Entity tags from captions and stratified sampling weights."""

    alpha: float = 0.5
    """Weight = (count of the clip's rarest tag) ** -alpha, normalised to mean 1; 1 = equalise."""
    stopwords: tuple[str, ...] = (
        "a", "an", "the", "of", "on", "in", "at", "to", "and", "or", "with", "across", "over",
        "is", "are", "its", "his", "her", "their", "this", "that", "from", "by", "into", "for",
    )  # fmt: skip

    _section = "balance"

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.alpha < 0:
            raise ValueError("balance.alpha must be >= 0")


@dataclass(frozen=True)
class BucketConfig:
    """Resolution x aspect-ratio x duration buckets that fit the DiT."""

    resolutions: Mapping[str, float] = field(default_factory=lambda: {"360p": 0.5, "720p": 1.0})
    """Tier name -> scale applied to the ``aspect_ratios`` table (720p = the table itself)."""
    aspect_ratios: Mapping[str, tuple[int, int]] = field(
        default_factory=lambda: dict(OFFICIAL_ASPECT_RATIOS_720P)
    )
    """Name ("H:W") -> (H, W) pixels at scale 1; tiers scale it and round to ``multiple``.

    The official 3:4 and 4:3 rows (1110 and 1108 px) are not multiples of 8 (reference
    §H.9), so rounding makes them 1104 px."""
    durations_s: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0)
    fps: float = 24.0
    """Frame rate clips are resampled to for encoding (the official data prep uses 24)."""
    multiple: int = 16
    """Bucket sizes are multiples of this (VAE 8x and DiT 2x2 patch)."""
    allow_upscale: bool = False
    """If False, a clip only fits tiers whose pixel count is at most its own."""

    _section = "buckets"

    def __post_init__(self) -> None:
        _check_fields(self)
        if not self.resolutions or not self.aspect_ratios or not self.durations_s:
            raise ValueError("buckets need at least one resolution, aspect ratio and duration")
        if self.fps <= 0:
            raise ValueError(f"buckets.fps must be > 0, got {self.fps}")
        _at_least("buckets.multiple", self.multiple, 1)
        for what, vals in (
            ("durations_s", self.durations_s),
            ("resolutions", self.resolutions.values()),
            ("aspect_ratios", [x for hw in self.aspect_ratios.values() for x in hw]),
        ):
            if any(v <= 0 for v in vals):
                raise ValueError(f"buckets.{what} must all be > 0, got {list(vals)}")

    def frame_counts(self) -> tuple[int, ...]:
        """Pixel frame counts of the duration buckets: 8k + 1 closest to duration x fps."""
        return tuple(8 * max(0, round((d * self.fps - 1) / 8)) + 1 for d in self.durations_s)

    def sizes(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Tier -> aspect-ratio name -> (H, W) in pixels."""
        out: dict[str, dict[str, tuple[int, int]]] = {}
        m = self.multiple
        for tier, s in self.resolutions.items():
            out[tier] = {
                ar: (max(m, round(h * s / m) * m), max(m, round(w * s / m) * m))
                for ar, (h, w) in self.aspect_ratios.items()
            }
        return out


@dataclass(frozen=True)
class RayConfig:
    """How the Ray engine runs (never changes results, so not part of the fingerprint)."""

    address: str | None = None
    """A running cluster (``host:port``, ``ray://host:port`` or ``auto``); None = the
    ``RAY_ADDRESS`` environment variable if set, else a local Ray started with
    ``num_cpus``. An address that cannot be reached is an error, never a fallback."""
    num_cpus: int | None = None
    """CPUs of a local Ray (None = ``CurationConfig.workers``)."""
    videos_per_block: int = 4
    """Videos per Ray Data block: the unit of CPU tasks, of streaming and of loss on a kill."""
    model_actors: int = 1
    """Model-stage actors (each loads the models once, on its own device)."""
    model_gpus: float = 0.0
    """GPUs per model-stage actor (0 = CPU actors); fractions share a GPU."""
    model_cpus: float = 1.0
    """CPUs per model-stage actor."""

    _section = "ray"

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.videos_per_block < 1 or self.model_actors < 1:
            raise ValueError("ray.videos_per_block and ray.model_actors must be >= 1")
        if self.model_gpus < 0 or self.model_cpus < 0:
            raise ValueError("ray.model_gpus and ray.model_cpus must be >= 0")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError("ray.num_cpus must be >= 1 (or None)")


_SECTIONS = {
    "scenes": SceneConfig,
    "sharpness": SharpnessConfig,
    "motion": MotionConfig,
    "aesthetic": AestheticConfig,
    "captions": CaptionConfig,
}


@dataclass(frozen=True)
class CurationConfig:
    """The whole curation run. Build with ``CurationConfig()``, a preset or ``from_file``."""

    default: SourceConfig = field(default_factory=SourceConfig)
    sources: Mapping[str, SourceConfig] = field(default_factory=dict)
    """Per-source settings (keyed by the ``source`` of an input); others use ``default``."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)
    workers: int = 1
    """Local engine processes (1 = in this process)."""
    model_batch_size: int = 8
    """Clips per model forward (aesthetics, RAFT, VLM) in either engine."""
    model_device: str | None = None
    """Device of the model stages (None = ``cuda`` when the process sees a GPU, else ``cpu``;
    a Ray actor sees only the GPUs Ray gave it)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray engine settings (``engine="ray"``)."""
    extract_clips: bool = False
    """Write each kept clip to ``<out>/clips/<clip_id>.mp4`` (packet copy where possible)."""
    video_extensions: tuple[str, ...] = (
        ".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".flv", ".wmv",
        ".3gp",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.model_batch_size < 1:
            raise ValueError(f"model_batch_size must be >= 1, got {self.model_batch_size}")
        bad = [e for e in self.video_extensions if not e.startswith(".")]
        if bad:
            raise ValueError(f"video_extensions must start with '.', got {bad}")

    def for_source(self, source: str) -> SourceConfig:
        return self.sources.get(source, self.default)

    # -- presets -------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str) -> CurationConfig:
        presets = {"paper": _paper, "synthetic": _synthetic}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    # -- (de)serialisation ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(dataclasses.asdict(self))

    def fingerprint(self) -> str:
        """Hash of everything that changes per-video results (not the engine settings:
        ``workers``, ``model_batch_size``, ``model_device``, ``ray``)."""
        d = self.to_dict()
        for k in ("workers", "model_batch_size", "model_device", "ray"):
            d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: CurationConfig | None = None) -> CurationConfig:
        """Overlay a (partial) dict onto ``base`` (default: the paper preset).

        Keys: ``default`` (sections of ``SourceConfig``), ``sources.<name>`` (overlaid on
        ``default``), ``dedup``, ``balance``, ``buckets``, ``workers``, ``preset``.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"a curation config must be a table/object, got {_type_name(d)}")
        d = dict(d)
        preset = d.pop("preset", None)
        if preset is not None and base is not None:
            raise ValueError(
                f"config names preset {preset!r} and a base config is given too; drop one"
            )
        cfg = base or (cls.preset(preset) if preset is not None else cls())
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; valid: {sorted(known)}")
        default = _overlay_source(cfg.default, d.get("default", {}), "default")
        sources = dict(cfg.sources)
        if not isinstance(d.get("sources", {}), Mapping):
            raise TypeError(
                "config section 'sources' must be a table/object of source names, got "
                f"{_type_name(d['sources'])}"
            )
        for name, sub in d.get("sources", {}).items():
            sources[name] = _overlay_source(sources.get(name, default), sub, f"sources.{name}")
        kw: dict[str, Any] = {"default": default, "sources": sources}
        for name, _typ in (
            ("dedup", DedupConfig),
            ("balance", BalanceConfig),
            ("buckets", BucketConfig),
            ("ray", RayConfig),
        ):
            if name in d:
                kw[name] = _overlay(getattr(cfg, name), d[name], name)
        for name in (
            "workers",
            "video_extensions",
            "extract_clips",
            "model_batch_size",
            "model_device",
        ):
            if name in d:
                v = d[name]
                kw[name] = tuple(v) if name == "video_extensions" and isinstance(v, list) else v
        return replace(cfg, **kw)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> CurationConfig:
        """Load a JSON (``.json``) or TOML (``.toml``) file of overrides."""
        return cls.from_dict(read_config_file(path))


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The overrides in a JSON or TOML config file; errors name the file and the problem."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file not found: {p}")
    if not p.is_file():
        raise ValueError(f"config {p} is not a regular file")
    if p.suffix not in (".json", ".toml"):
        raise ValueError(f"config file must be .json or .toml, got {p.name}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"config file {p} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    if p.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {p} is not valid TOML: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {p} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {p} must hold a JSON object, got {type(data).__name__}")
    return data


def _to_jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_to_jsonable(v) for v in x]
    return x


def _overlay(obj: Any, d: Mapping[str, Any], where: str) -> Any:
    if not isinstance(d, Mapping):
        raise ValueError(f"config section {where!r} must be a table/object, got {d!r}")
    names = {f.name: f for f in fields(obj)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in {where!r}; valid: {sorted(names)}")
    kw = {}
    for k, v in d.items():
        cur = getattr(obj, k)
        if isinstance(cur, tuple) and isinstance(v, list):
            v = tuple(v)
        if k == "aspect_ratios" and isinstance(v, Mapping):
            v = {name: tuple(hw) if isinstance(hw, list) else hw for name, hw in v.items()}
        kw[k] = v
    try:
        return replace(obj, **kw)
    except (TypeError, ValueError) as e:
        # Name the field where it was given: "sources.web.sharpness.min", not "sharpness.min".
        msg, section = str(e), getattr(obj, "_section", "")
        if section and where != section and msg.startswith(section):
            msg = where + msg[len(section) :]
        raise type(e)(msg) from None


def _overlay_source(src: SourceConfig, d: Mapping[str, Any], where: str) -> SourceConfig:
    if not isinstance(d, Mapping):
        raise TypeError(
            f"config section {where!r} must be a table/object of sections, got {_type_name(d)}"
        )
    unknown = set(d) - set(_SECTIONS)
    if unknown:
        raise ValueError(
            f"unknown sections {sorted(unknown)} in {where!r}; valid: {sorted(_SECTIONS)}"
        )
    kw = {name: _overlay(getattr(src, name), sub, f"{where}.{name}") for name, sub in d.items()}
    return replace(src, **kw)


def _paper() -> CurationConfig:
    return CurationConfig()


def _synthetic() -> CurationConfig:
    """Thresholds for the 64x48 synthetic clips: 0.5-3 s clips, flow in [0.5, 2.5] px/frame.

    Farneback flow on 64x48 frames saturates near 4 px/frame, so "too fast" has to mean
    "above 2.5" (the synthetic fast clip measures ~3.3, plain clips 1.3-1.8); sharpness keeps the paper's range (the synthetic texture is calibrated to it).
    """
    default = SourceConfig(
        # Panning high-contrast texture scores up to ~28 between consecutive 64x48 frames
        # while the synthetic cuts score > 45: 35 separates them.
        scenes=SceneConfig(cut_threshold=35.0, min_clip_s=0.5, max_clip_s=3.0),
        motion=MotionConfig(min=0.5, max=2.5),
    )
    buckets = BucketConfig(
        resolutions={"tiny": 1.0},
        aspect_ratios={"3:4": (48, 64), "1:1": (48, 48), "4:3": (64, 48)},
        durations_s=(0.5, 1.0, 1.5),
        fps=16.0,
        multiple=16,
    )
    return CurationConfig(default=default, buckets=buckets)
