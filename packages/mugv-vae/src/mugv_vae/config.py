"""`VAEConfig`: the one typed config of the MUG-V video VAE, with the named presets.

The official topology (architecture reference §B.1): an SDXL-VAE 2D trunk cut at its
512-channel mid-block, then a MAGVIT-style temporal 3D-conv network mapping 512 channels
to 24 latent channels with 8x temporal compression. ``preset("debug")`` keeps the same
topology with tiny widths for tests and the quickstart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

#: The fixed factor applied to the 2D trunk's output before the temporal stage (§B.1).
#: The SDXL config's own 0.13025 is deliberately not used.
SCALING_FACTOR: float = 0.18215

#: Per-channel latent mean (``shift``) of the official VAE, channels 0..23 (§B.6).
LATENT_SHIFT: tuple[float, ...] = (
    -0.0194091796875, 0.09619140625, -0.796875, 0.1591796875, -0.2578125, 0.359375,
    -0.3203125, -0.287109375, -0.0069580078125, 0.3046875, 0.310546875, -0.451171875,
    -0.1728515625, 0.369140625, 0.2177734375, -3.075599670410156e-05, 0.1630859375,
    -0.267578125, -0.1962890625, -0.1298828125, -0.28515625, -0.515625, 0.5859375,
    -0.34375,
)  # fmt: skip

#: Per-channel latent standard deviation (``scale``) of the official VAE (§B.6).
LATENT_SCALE: tuple[float, ...] = (
    0.8817, 0.6523, 0.9152, 1.2117, 3.3516, 0.7528, 0.8177, 0.8637, 0.9075, 2.8875,
    0.8980, 1.1202, 1.0003, 2.5163, 0.6652, 1.2573, 0.7279, 1.0777, 1.5159, 0.8680,
    1.1859, 1.0484, 2.4750, 1.5881,
)  # fmt: skip

#: Frames per latent frame (temporal compression), and pixels per latent row/column.
TIME_FACTOR = 8
SPACE_FACTOR = 8


@dataclass(frozen=True)
class VAEConfig:
    """Topology and run-time chunking of the video VAE.

    Fields fall in three groups: the 2D trunk (``block_out_channels`` ...), the temporal
    network (``temporal_filters`` ...) and run-time behaviour (``micro_batch_size`` ...).
    The run-time fields change memory and speed, never the state-dict layout.
    """

    # -- 2D trunk (diffusers AutoencoderKL names) ---------------------------------------
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    """Output channels of the four down blocks; the last one is the trunk's feature width."""
    layers_per_block: int = 2
    """ResNet blocks per encoder down block (the decoder up blocks have one more)."""
    norm_num_groups: int = 32
    """GroupNorm groups of the 2D trunk."""
    spatial_latent_channels: int = 4
    """Latent channels of the original image VAE; only shapes the unused ``encoder.conv_out``
    and ``decoder.conv_in`` kept for state-dict compatibility."""

    # -- temporal 3D network (keys ``temporal_vae.*``) ----------------------------------
    latent_channels: int = 24
    """Latent channels seen by the DiT."""
    temporal_filters: int = 128
    """Base width of the temporal network."""
    temporal_num_res_blocks: int = 4
    """ResBlocks per level and in the middle stack."""
    temporal_channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    """Width multiplier per level."""
    temporal_norm_num_groups: int = 32
    """GroupNorm groups of the temporal network."""

    # -- constants ----------------------------------------------------------------------
    scaling_factor: float = SCALING_FACTOR
    """Multiplies the 2D trunk output before the temporal stage (divides before decoding)."""
    latent_shift: tuple[float, ...] = LATENT_SHIFT
    """Default per-channel mean (buffer ``shift``; a checkpoint overrides it)."""
    latent_scale: tuple[float, ...] = LATENT_SCALE
    """Default per-channel std (buffer ``scale``; a checkpoint overrides it)."""
    logvar_init: float = 4.0
    """Initial value of the scalar ``logvar`` parameter (unused at inference)."""
    logvar_clamp: tuple[float, float] = (-30.0, 20.0)
    """Clamp applied to the posterior log-variance (§B.3)."""

    # -- run-time behaviour (memory / speed only) ---------------------------------------
    micro_batch_size: int = 4
    """Frames per call of the 2D trunk (official: 4)."""
    micro_frame_size: int = 48
    """Frames per temporal encode chunk (official: 48). Frame counts that are not a multiple
    of 8 are zero-padded at the front of the final chunk, as the official code does."""
    decode_window: int = 6
    """Latent frames decoded together (official: 6). Windows do not see each other."""
    tile_latent_size: int | None = None
    """Spatial tile edge in latent pixels for tiled encode/decode; ``None`` disables tiling.
    Exact tiling scales it to each layer's resolution (8x at full pixel resolution) and lets
    narrower, lower-resolution layers take larger tiles up to the same element count as the
    decoder's full-resolution tile (``micro_batch_size`` x ``block_out_channels[1]`` x
    (8 x tile)^2), so peak memory still follows the tile."""
    tile_latent_overlap: int = 4
    """Overlap between neighbouring tiles in latent pixels (``tile_mode="blend"`` only)."""
    tile_mode: str = "exact"
    """``"exact"``: layer-by-layer tiles with global GroupNorm statistics, equal to the
    untiled result up to float rounding. ``"blend"``: each tile runs the whole network alone
    and overlaps are blended linearly (one pass, cheaper, but per-tile norm statistics make
    it differ from untiled output)."""
    tile_park_device: str | None = None
    """Where ``"exact"`` tiling keeps full activations between layers (e.g. ``"cpu"`` to
    bound accelerator memory by the tile); ``None`` keeps them on the model's device."""
    channels_last: bool = False
    """Run the 2D trunk in channels-last memory format (helps cuDNN convs on GPU)."""

    def __post_init__(self) -> None:
        check_fields(self)
        for name in (
            "layers_per_block", "norm_num_groups", "spatial_latent_channels", "latent_channels",
            "temporal_filters", "temporal_num_res_blocks", "temporal_norm_num_groups",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"VAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("block_out_channels", "temporal_channel_multipliers"):
            if min(getattr(self, name), default=1) < 1:
                raise ValueError(f"VAEConfig.{name} must be positive, got {getattr(self, name)}")
        if self.scaling_factor <= 0 or min(self.latent_scale, default=1.0) <= 0:
            raise ValueError(
                f"VAEConfig.scaling_factor and latent_scale must be > 0, got "
                f"{self.scaling_factor} and {self.latent_scale}"
            )
        if self.logvar_clamp[0] >= self.logvar_clamp[1]:
            raise ValueError(f"VAEConfig.logvar_clamp must be (low, high), got {self.logvar_clamp}")
        nb = len(self.block_out_channels)
        if nb != 4:
            raise ValueError(
                f"block_out_channels must have 4 entries (8x spatial = 3 downsamplers), got {nb}"
            )
        if len(self.temporal_channel_multipliers) != 4:
            raise ValueError("temporal_channel_multipliers must have 4 entries (8x in time)")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"block_out_channels {self.block_out_channels} must be divisible by "
                    f"norm_num_groups={self.norm_num_groups}"
                )
        for m in self.temporal_channel_multipliers:
            if (self.temporal_filters * m) % self.temporal_norm_num_groups:
                raise ValueError(
                    f"temporal widths {self.temporal_filters}x{m} must be divisible by "
                    f"temporal_norm_num_groups={self.temporal_norm_num_groups}"
                )
        if self.block_out_channels[-1] % self.temporal_norm_num_groups:
            raise ValueError("the trunk width must be divisible by temporal_norm_num_groups")
        if len(self.latent_shift) != self.latent_channels:
            raise ValueError(
                f"latent_shift has {len(self.latent_shift)} values, need latent_channels="
                f"{self.latent_channels}"
            )
        if len(self.latent_scale) != self.latent_channels:
            raise ValueError(
                f"latent_scale has {len(self.latent_scale)} values, need latent_channels="
                f"{self.latent_channels}"
            )
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.micro_frame_size < 8 or self.micro_frame_size % TIME_FACTOR:
            raise ValueError(
                f"micro_frame_size must be a positive multiple of 8, got {self.micro_frame_size}"
            )
        if self.decode_window < 1:
            raise ValueError(f"decode_window must be >= 1, got {self.decode_window}")
        if self.tile_latent_size is not None:
            if self.tile_latent_size < 2:
                raise ValueError(f"tile_latent_size must be >= 2, got {self.tile_latent_size}")
            if not 0 <= self.tile_latent_overlap < self.tile_latent_size:
                raise ValueError(
                    f"tile_latent_overlap must be in [0, tile_latent_size), got "
                    f"{self.tile_latent_overlap} with tile_latent_size={self.tile_latent_size}"
                )
        if self.tile_mode not in ("exact", "blend"):
            raise ValueError(f"tile_mode must be 'exact' or 'blend', got {self.tile_mode!r}")

    # -- derived ------------------------------------------------------------------------
    @property
    def trunk_channels(self) -> int:
        """Width of the 2D trunk features (= temporal network input/output width)."""
        return self.block_out_channels[-1]

    # -- presets and (de)serialisation --------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> VAEConfig:
        """A named preset: ``"mugv"`` (the official vae.pt topology) or ``"debug"``."""
        if name not in PRESETS:
            raise ValueError(f"unknown VAE preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes: Any) -> VAEConfig:
        """A copy with ``changes`` applied (configs are frozen)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict):
            raise TypeError(f"a VAEConfig dict must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown VAEConfig fields {unknown}; known fields: {sorted(names)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


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
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and (math.isfinite(value) or not strict)
        )
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_accepts(v, args[0], strict) for v in value)
        if len(value) != len(args):
            return not strict and all(_accepts(v, args[0], strict) for v in value)
        return all(_accepts(v, a, strict) for v, a in zip(value, args, strict=True))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, origin or hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is type(None):
        return "None"
    if hint is float:
        return "a finite number"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    return getattr(origin or hint, "__name__", str(hint))


def check_fields(obj: Any) -> None:
    """Check every field of the dataclass ``obj`` against its annotation (lists given for
    tuple fields become tuples); raise a TypeError naming the field, value and type."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        hint, value = hints[f.name], getattr(obj, f.name)
        if isinstance(value, list) and tuple in (
            typing.get_origin(hint),
            *(typing.get_origin(a) for a in typing.get_args(hint)),
        ):
            value = tuple(value)
            object.__setattr__(obj, f.name, value)
        if not _accepts(value, hint):
            error = ValueError if _accepts(value, hint, strict=False) else TypeError
            raise error(
                f"{type(obj).__name__}.{f.name} must be {_describe(hint)}, got {value!r} "
                f"({type(value).__name__})"
            )


PRESETS: dict[str, VAEConfig] = {
    "mugv": VAEConfig(),
    "debug": VAEConfig(
        block_out_channels=(8, 16, 32, 32),
        norm_num_groups=4,
        temporal_filters=8,
        temporal_norm_num_groups=4,
    ),
}
