"""`DiTConfig`: the one configuration of MUG-DiT, with the named presets.

Sizes follow the official training repo's table (architecture reference §A.1): every
preset has head dim 72 and 56 blocks, except ``debug`` (2 blocks, converter table).
"""

from __future__ import annotations

import dataclasses
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
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        for name in ("depth", "hidden_size", "num_heads", "in_channels", "text_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DiTConfig.{name} must be a positive int, got {value!r}")
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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"config has unknown fields {unknown}; a DiTConfig has {sorted(names)}"
            )
        return cls(**data)


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
