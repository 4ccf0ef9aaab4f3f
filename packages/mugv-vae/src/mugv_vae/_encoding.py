"""Frame rules and spatial tiles: pure index arithmetic shared by encode and decode.

Dimension legend: N pixel frames, T latent frames, H/W pixel height/width, h/w latent.

Frame rules (reference §B.4, §B.5, §B.6; paper §3.1.2 "minimal encoding"):

1. N = 1 (mod 8): the first frame is repeated 7 more times at the front (N -> N + 7).
2. The (replicated) clip is cut into micro-chunks of ``micro_frame_size`` frames (official
   48). A chunk whose length is not a multiple of 8 -- only the last one can be -- is
   padded at its FRONT with zero *features* up to a multiple of 8. For N <= 48 that is the
   front of the clip.
3. Every 8-frame group is encoded alone and gives one latent frame.
4. Decoding returns 8 frames per latent; with ``num_frames`` the padded frames (rule 2) or
   the 7 replicated frames (rule 1) are removed again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mugv_vae.config import SPACE_FACTOR, TIME_FACTOR


@dataclass(frozen=True)
class FramePlan:
    """Where the frames of an N-frame clip go in the latent sequence."""

    num_frames: int
    """N, the caller's frame count."""
    replicate: int
    """Copies of frame 0 prepended (7 when N = 1 mod 8, else 0)."""
    pad: int
    """Zero frames inserted at the front of the last micro-chunk."""
    pad_latent: int
    """Latent index of the group that holds the ``pad`` zero frames."""
    latent_frames: int
    """T."""
    chunks: tuple[tuple[int, int], ...]
    """Micro-chunks as (start, end) over the replicated clip (before padding)."""

    @property
    def dropped_frames(self) -> list[int]:
        """Indices, in the 8T decoded frames, that are not frames of the original clip."""
        if self.replicate:
            return list(range(self.replicate))
        start = TIME_FACTOR * self.pad_latent
        return list(range(start, start + self.pad))


def frame_plan(num_frames: int, micro_frame_size: int) -> FramePlan:
    """The frame plan of an N-frame clip (see the module docstring)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    replicate = TIME_FACTOR - 1 if num_frames % TIME_FACTOR == 1 else 0
    n = num_frames + replicate
    chunks = tuple((s, min(s + micro_frame_size, n)) for s in range(0, n, micro_frame_size))
    last_len = chunks[-1][1] - chunks[-1][0]
    pad = (-last_len) % TIME_FACTOR
    pad_latent = (len(chunks) - 1) * (micro_frame_size // TIME_FACTOR)
    latent_frames = sum(math.ceil((e - s) / TIME_FACTOR) for s, e in chunks)
    return FramePlan(num_frames, replicate, pad, pad_latent, latent_frames, chunks)


def latent_frames_for(num_frames: int, micro_frame_size: int = 48) -> int:
    """T for N frames: 6 * (N' // 48) + ceil((N' % 48) / 8) with N' after replication (§B.6)."""
    return frame_plan(num_frames, micro_frame_size).latent_frames


def frames_for_latents(latent_frames: int) -> range:
    """Every N that encodes to ``latent_frames`` latents: 8(T-1)+1 .. 8T (N = 8(T-1)+1 is
    replicated up to 8T; 8T+1 would be replicated to 8T+8)."""
    return range(TIME_FACTOR * (latent_frames - 1) + 1, TIME_FACTOR * latent_frames + 1)


# ---------------------------------------------------------------------------------------
# Spatial tiles
# ---------------------------------------------------------------------------------------


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap``.

    The last tile is aligned to the end, so every tile has the full size when
    ``length >= tile``; a single tile covers everything otherwise.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def blend_ramp(
    n: int, ramp: int, left: bool, right: bool, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """1D blending weights for a tile of length ``n``: linear ramps over ``ramp`` entries on
    each side that touches a neighbour, 1 in the interior, strictly positive everywhere."""
    w = torch.ones(n, device=device, dtype=dtype)
    r = min(ramp, n)
    if r > 0:
        up = torch.arange(1, r + 1, device=device, dtype=dtype) / (r + 1)
        if left:
            w[:r] = torch.minimum(w[:r], up)
        if right:
            w[n - r :] = torch.minimum(w[n - r :], up.flip(0))
    return w


@dataclass(frozen=True)
class Tile:
    """One spatial tile: latent rows/cols [y0, y1) x [x0, x1) and its pixel extent."""

    y0: int
    y1: int
    x0: int
    x1: int
    py0: int
    py1: int
    px0: int
    px1: int
    top: bool
    bottom: bool
    left: bool
    right: bool


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles over a frame of ``height`` x ``width`` *pixels*, sized in latent units.

    Pixel extents are 8x the latent ones, except that the last row/column of tiles extends
    to the frame edge so sizes that are not multiples of 8 keep the untiled flooring rule.
    """
    h, w = height // SPACE_FACTOR, width // SPACE_FACTOR
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = []
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            y1, x1 = min(y + tile, h), min(x + tile, w)
            out.append(
                Tile(
                    y, y1, x, x1,
                    SPACE_FACTOR * y, height if y1 == h else SPACE_FACTOR * y1,
                    SPACE_FACTOR * x, width if x1 == w else SPACE_FACTOR * x1,
                    top=i > 0, bottom=i < len(ys) - 1, left=j > 0, right=j < len(xs) - 1,
                )
            )  # fmt: skip
    return out


def tile_weight(
    tile: Tile, rows: int, cols: int, ramp: int, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """[rows, cols] blending weights of ``tile`` (rows/cols in the output's units)."""
    wy = blend_ramp(rows, ramp, tile.top, tile.bottom, device=device, dtype=dtype)
    wx = blend_ramp(cols, ramp, tile.left, tile.right, device=device, dtype=dtype)
    return wy[:, None] * wx[None, :]
