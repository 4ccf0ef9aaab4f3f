"""`DiTConfig`: the one configuration of MUG-DiT, with the named presets.

Sizes follow the official training repo's table (architecture reference §A.1): every
preset has head dim 72 and 56 blocks, except ``debug`` (2 blocks, converter table).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

AttentionBackend = Literal["sdpa", "flash", "xformers"]
KernelBackend = Literal["auto", "torch", "triton"]

_ATTENTION_BACKENDS = ("sdpa", "flash", "xformers")
_KERNEL_BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class DiTConfig:
    """Architecture and runtime choices of a MUG-DiT model.

    Only ``depth``, ``hidden_size`` and ``num_heads`` are required; every other field
    defaults to the official MUG-V 10B value (reference §A).
    """

    depth: int
    """Number of `MUGDiTBlock`s (56 for every released size)."""
    hidden_size: int
    """Token width D."""
    num_heads: int
    """Attention heads N; the head dim K = hidden_size / num_heads must be a multiple of 6."""
    mlp_ratio: float = 4.0
    """MLP hidden width = mlp_ratio * hidden_size (GELU, tanh approximation)."""
    in_channels: int = 24
    """Latent channels C of the VAE."""
    text_dim: int = 4096
    """Width E of the text embeddings (T5-XXL d_model)."""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """Patch (t, h, w); the official code uses (1, 2, 2) (reference §H.1)."""
    learn_sigma: bool = True
    """Output 2C channels (the unused learned-sigma half), as the official final layer does."""
    frequency_embedding_size: int = 256
    """Width of the sinusoidal timestep / fps embedding."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rope_space_positions: int = 384
    """Rows of the spatial RoPE table (patch-grid height and width must be below this)."""
    rope_time_positions: int = 480
    """Rows of the temporal RoPE table (frame indices must be below this; ~1 min of video)."""
    norm_eps: float = 1e-6
    """eps of the AdaLN LayerNorms, the cross-attention LayerNorm and the final norm."""
    qk_norm_eps: float = 1e-6
    """eps of the q/k RMSNorms."""
    caption_norm_eps: float = 1e-6
    """eps of the text embedder's pre/post LayerNorms (1e-6 at inference, 1e-5 in the
    Megatron training code, reference §H.6)."""
    default_fps: float = 30.0
    """fps fed to the fps embedder when ``forward(fps=None)``: the official pipeline passes 30."""
    initializer_range: float = 0.02
    """std of the normal initialisers (start/end tokens, embedders)."""
    attention_backend: AttentionBackend = "sdpa"
    """Attention implementation: torch SDPA (any device), flash-attn or xformers (CUDA only)."""
    kernel_backend: KernelBackend = "auto"
    """Fused element-wise ops: "auto" = Triton on CUDA tensors, torch reference otherwise."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Free-form metadata carried through ``config.json`` (ignored by the model)."""

    def __post_init__(self) -> None:
        if isinstance(self.patch_size, list):
            object.__setattr__(self, "patch_size", tuple(self.patch_size))
        _check_fields(self)
        for name in ("depth", "hidden_size", "num_heads", "in_channels", "text_dim"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"DiTConfig.{name} must be a positive int, got {value!r}")
        for name in (
            "mlp_ratio", "rope_theta", "norm_eps", "qk_norm_eps", "caption_norm_eps", "default_fps",
            "rope_space_positions", "rope_time_positions", "frequency_embedding_size",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"DiTConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.initializer_range < 0:
            raise ValueError(
                f"DiTConfig.initializer_range must be >= 0, got {self.initializer_range}"
            )
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(
                f"DiTConfig.patch_size must be three positive ints, got {self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.head_dim % 6:
            raise ValueError(
                f"head dim {self.head_dim} (hidden_size / num_heads) must be a multiple of 6: "
                "3D RoPE splits it into three equal axes of complex pairs"
            )
        if self.mlp_hidden_size <= 0:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} gives an empty MLP")
        if self.frequency_embedding_size % 2:
            raise ValueError("frequency_embedding_size must be even (cos and sin halves)")
        if self.attention_backend not in _ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend {self.attention_backend!r} is not one of {_ATTENTION_BACKENDS}"
            )
        if self.kernel_backend not in _KERNEL_BACKENDS:
            raise ValueError(
                f"kernel_backend {self.kernel_backend!r} is not one of {_KERNEL_BACKENDS}"
            )

    # -- derived sizes -------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch_size
        return pt * ph * pw

    # -- presets and (de)serialisation ---------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DiTConfig:
        """A named size (``debug``, ``1b``, ``2b``, ``4b``, ``10b``, ``18b``) with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown DiT preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes: Any) -> DiTConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["patch_size"] = list(self.patch_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiTConfig:
        """Inverse of :meth:`to_dict`; unknown fields and bad values raise naming them."""
        if not isinstance(data, dict):
            raise TypeError(f"a DiTConfig must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"config has unknown fields {unknown}; a DiTConfig has {sorted(names)}"
            )
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in data
        )
        if missing:
            raise ValueError(f"config lacks the required DiTConfig fields {missing}")
        return cls(**data)


def _accepts(value: Any, hint: Any, strict: bool = True) -> bool:
    """Whether ``value`` fits ``hint``; ``strict=False`` only checks the kind (a NaN is a
    float, "fast" is a string, a 2-tuple is a tuple), telling a ValueError from a TypeError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, a, strict) for a in args)
    if origin is Literal:
        return any((value == a or not strict) and type(value) is type(a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        real = isinstance(value, int | float) and not isinstance(value, bool)
        return real and (math.isfinite(value) or not strict)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(value) != len(args):
            return not strict and all(_accepts(v, args[0], strict) for v in value)
        return all(_accepts(v, a, strict) for v, a in zip(value, args, strict=True))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, origin or hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is float:
        return "a finite number"
    if origin is tuple:
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    return getattr(origin or hint, "__name__", str(hint))


def _check_fields(config: DiTConfig) -> None:
    """Every field against its annotation: a TypeError naming the field, value and type."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _accepts(value, hints[f.name]):
            error = ValueError if _accepts(value, hints[f.name], strict=False) else TypeError
            raise error(
                f"DiTConfig.{f.name} must be {_describe(hints[f.name])}, got {value!r} "
                f"({type(value).__name__})"
            )


def _size(hidden: int, heads: int, depth: int = 56) -> DiTConfig:
    return DiTConfig(depth=depth, hidden_size=hidden, num_heads=heads)


PRESETS: dict[str, DiTConfig] = {
    "debug": _size(288, 4, depth=2),
    "1b": _size(1152, 16),
    "2b": _size(1728, 24),
    "4b": _size(2304, 32),
    "10b": _size(3456, 48),
    "18b": _size(4608, 64),
}
"""Named sizes. 2b is the width the paper expands to 10b from (3456 = 2 x 1728)."""
