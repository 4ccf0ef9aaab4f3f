"""Measurements that show whether training worked, without looking at the videos.

- ``classify_colour``: the dominant hue of the saturated pixels (the moving object is the
  only saturated thing in the synthetic clips), assigned to the nearest of the four
  caption colours within a 27 degree window (half the red-yellow gap).
- ``estimate_direction``: the centroid of that colour's pixels, tracked over the frames;
  a least-squares line through the track gives the travel, its larger axis and sign the
  direction (left / right / up / down), with "none" below ``min_travel`` pixels.
- ``psnr``: peak signal-to-noise ratio of uint8 frames.
- ``p_above_chance``: how likely an agreement at least this high is for a model that
  guesses (one-sided exact binomial test against 25%), so a report can tell a real effect
  from luck on a few dozen clips.

On clean synthetic clips both measures agree with the captions on every clip; on noise
they agree at chance or below (tests check both).

Dimension legend: N frames, H/W frame height/width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mugv_quickstart.synthetic import COLOURS, DIRECTIONS

NONE = "none"


def _hsv(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of uint8 RGB frames."""
    rgb = frames.astype(np.float64) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    delta = mx - mn
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(
        mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    hue = np.where(delta > 0, hue * 60.0, 0.0)
    sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
    return hue, sat, mx


def _hue_of(rgb: tuple[int, int, int]) -> float:
    return float(_hsv(np.array(rgb, np.uint8)[None, None, None])[0].reshape(()))


#: Hue (degrees) of each caption colour.
PROTOTYPE_HUES: dict[str, float] = {name: _hue_of(rgb) for name, rgb in COLOURS.items()}


def colour_labels(
    frames: np.ndarray,
    min_saturation: float = 0.45,
    min_value: float = 0.25,
    window: float = 27.0,
) -> np.ndarray:
    """Per-pixel colour index [N, H, W]: 0..3 (order of ``COLOURS``) or -1 (no caption colour).

    A pixel gets a colour when it is saturated and bright enough and its hue lies within
    ``window`` degrees of that colour's hue (the nearest one if two qualify).
    """
    frames = _check_frames(frames)
    hue, sat, val = _hsv(frames)
    protos = np.array(list(PROTOTYPE_HUES.values()))
    diff = np.abs((hue[..., None] - protos + 180.0) % 360.0 - 180.0)  # circular distance
    nearest = diff.argmin(-1)
    ok = (sat >= min_saturation) & (val >= min_value) & (diff.min(-1) <= window)
    return np.where(ok, nearest, -1)


def classify_colour(frames: np.ndarray, min_fraction: float = 0.004) -> str:
    """The caption colour that covers most pixels of ``frames`` [N, H, W, 3] uint8.

    Returns "none" when fewer than ``min_fraction`` of all pixels carry a caption colour.
    """
    labels = colour_labels(frames)
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(COLOURS))
    if counts.sum() < min_fraction * labels.size:
        return NONE
    return list(COLOURS)[int(counts.argmax())]


def centroid_track(frames: np.ndarray, colour: str, min_pixels: int = 4) -> np.ndarray:
    """Centroid (x, y) per frame of ``colour``'s pixels [N, 2]; NaN where too few pixels."""
    labels = colour_labels(frames)
    idx = list(COLOURS).index(colour)
    n, h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    track = np.full((n, 2), np.nan)
    for i in range(n):
        m = labels[i] == idx
        if m.sum() >= min_pixels:
            track[i] = xx[m].mean(), yy[m].mean()
    return track


def estimate_direction(
    frames: np.ndarray, colour: str | None = None, min_travel: float = 4.0
) -> str:
    """Direction of motion of the object of ``colour`` (default: the dominant colour).

    Fits a line to the centroid track; the travel over the clip is slope x (N - 1). The
    larger axis and its sign give left/right/up/down (image y grows downwards); "none"
    when the travel is below ``min_travel`` pixels or fewer than half the frames show
    the object.
    """
    frames = _check_frames(frames)
    colour = colour or classify_colour(frames)
    if colour == NONE:
        return NONE
    track = centroid_track(frames, colour)
    t = np.arange(len(track), dtype=np.float64)
    ok = ~np.isnan(track[:, 0])
    if ok.sum() < max(2, len(track) // 2):
        return NONE
    travel = []
    for axis in (0, 1):
        slope = np.polyfit(t[ok], track[ok, axis], 1)[0]
        travel.append(slope * (len(track) - 1))
    axis = int(np.argmax(np.abs(travel)))
    if abs(travel[axis]) < min_travel:
        return NONE
    step = [0, 0]
    step[axis] = int(np.sign(travel[axis]))
    return next(name for name, d in DIRECTIONS.items() if list(d) == step)


@dataclass(frozen=True)
class Agreement:
    """How often measured colour / direction match the captions over a set of clips."""

    colour: float
    direction: float
    both: float
    count: int


def agreement(predicted: list[tuple[str, str]], expected: list[tuple[str, str]]) -> Agreement:
    """Fractions of clips whose (colour, direction) match the expected ones."""
    if len(predicted) != len(expected) or not expected:
        raise ValueError(
            f"need as many predictions as expectations (and at least one), got "
            f"{len(predicted)} and {len(expected)}"
        )
    col = [p[0] == e[0] for p, e in zip(predicted, expected)]
    dirn = [p[1] == e[1] for p, e in zip(predicted, expected)]
    n = len(expected)
    return Agreement(
        colour=sum(col) / n,
        direction=sum(dirn) / n,
        both=sum(a and b for a, b in zip(col, dirn)) / n,
        count=n,
    )


CHANCE = 1.0 / len(DIRECTIONS)
"""Agreement of a guesser, for colour and for direction (four values each)."""


def p_above_chance(fraction: float, count: int, chance: float = CHANCE) -> float:
    """One-sided exact binomial p-value: P(at least ``fraction * count`` of ``count``
    clips agree) when each agrees with probability ``chance``."""
    if count < 1 or not 0.0 <= fraction <= 1.0 or not 0.0 < chance < 1.0:
        raise ValueError(
            f"need count >= 1, fraction in [0, 1] and chance in (0, 1), got {count}, "
            f"{fraction}, {chance}"
        )
    k = round(fraction * count)
    return float(
        sum(math.comb(count, i) * chance**i * (1 - chance) ** (count - i)
            for i in range(k, count + 1))
    )  # fmt: skip


def psnr(actual: np.ndarray, expected: np.ndarray) -> float:
    """PSNR in dB between two uint8 arrays of the same shape (inf when identical)."""
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} vs {expected.shape}")
    mse = float(np.mean((actual.astype(np.float64) - expected.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
        )
    return frames
