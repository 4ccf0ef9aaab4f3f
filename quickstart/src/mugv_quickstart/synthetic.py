"""The quickstart's captioned video set: one textured object moving over a grey texture.

Every clip shows a single object of one colour (red / green / blue / yellow), one shape
(square / circle / triangle), moving in one direction (left / right / up / down) at
1.1-1.6 px per frame over a static, unsaturated, low-contrast grey texture. The caption names the
three attributes, so what a generated clip shows can be checked against its caption
(``mugv_quickstart.measure``): the object is the only saturated region of a frame.

Split: 48 attribute triples. For every (colour, direction) pair one of the three shapes
is held out, so the 16 held-out captions are new sentences whose colour and direction
words the model has seen with other shapes. Training clips come from the other 32.

A few deliberately bad files go into the raw folder too (a static clip, a blurred clip,
an exact duplicate, a truncated file, a file that is not a video), so curation has
something to reject. Everything is deterministic for a seed (numpy ``default_rng``
seeded per clip, single-threaded x264 with fixed options).

Dimension legend: N frames, H/W frame height/width.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mugv_quickstart._media import read_mp4, write_mp4, write_text

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 200, 55),
    "blue": (45, 80, 235),
    "yellow": (235, 215, 30),
}
"""Object base colours (RGB); hues 0, 128, 227 and 53 degrees, all strongly saturated."""
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
"""Direction -> unit motion (dx, dy) in image coordinates (y grows downwards)."""

_TEMPLATES = (
    "a {colour} {shape} moving {direction} over a grey textured background",
    "a textured {colour} {shape} slides {direction}",
    "the {colour} {shape} travels {direction} across a grey wall",
    "{colour} {shape} drifting {direction}",
)


@dataclass(frozen=True)
class SetConfig:
    """Size of the synthetic set. ``SetConfig()`` is the full quickstart's set."""

    clips_per_train_combo: int = 6
    """Clips for each of the 32 training (colour, shape, direction) triples."""
    clips_per_heldout_combo: int = 2
    """Clips for each of the 16 held-out triples (VAE PSNR, I2V first frames): two, so
    the evaluation has 32 clips, which tells 50% agreement from chance (25%) with
    p = 0.002 where 16 clips give p = 0.03."""
    num_frames: int = 17
    """Frames per clip (1 mod 8, so the VAE adds no padding frames)."""
    height: int = 48
    width: int = 64
    fps: float = 16.0
    with_rejects: bool = True
    """Add the deliberately bad files (static, blurred, duplicate, truncated, not a video)."""

    def __post_init__(self) -> None:
        if self.clips_per_train_combo < 1 or self.clips_per_heldout_combo < 1:
            raise ValueError("clips_per_train_combo and clips_per_heldout_combo must be >= 1")
        if self.num_frames < 9 or self.num_frames % 8 != 1:
            raise ValueError(
                f"num_frames must be 8k + 1 with k >= 1 (whole VAE groups), got {self.num_frames}"
            )
        if self.height % 16 or self.width % 16 or min(self.height, self.width) < 32:
            raise ValueError(
                f"height and width must be multiples of 16 and >= 32 (VAE 8x, DiT 2x2 patch), "
                f"got {self.height}x{self.width}"
            )


@dataclass(frozen=True)
class Clip:
    """One file of the raw set and its ground truth."""

    id: str
    path: str
    """Relative to the set's root."""
    split: str
    """``train`` (curated, trained on) or ``heldout`` (evaluation only)."""
    kind: str
    """``clean``, ``static``, ``blurred``, ``duplicate``, ``truncated`` or ``not_video``."""
    caption: str
    colour: str
    shape: str
    direction: str
    num_frames: int
    height: int
    width: int
    fps: float


def is_heldout(colour: str, shape: str, direction: str) -> bool:
    """True for the 16 held-out triples: one shape per (colour, direction) pair."""
    ci, di = list(COLOURS).index(colour), list(DIRECTIONS).index(direction)
    return SHAPES[(ci + di) % len(SHAPES)] == shape


def caption_for(colour: str, shape: str, direction: str, variant: int = 0) -> str:
    """The caption of a clip; ``variant`` picks one of a few sentence templates."""
    t = _TEMPLATES[variant % len(_TEMPLATES)]
    return t.format(colour=colour, shape=shape, direction=direction)


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a small 2D grid to [h, w] (numpy only)."""
    gh, gw = grid.shape
    ys = np.linspace(0, gh - 1, h)
    xs = np.linspace(0, gw - 1, w)
    y0 = np.clip(np.floor(ys).astype(int), 0, gh - 2)
    x0 = np.clip(np.floor(xs).astype(int), 0, gw - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Unsaturated grey texture [H, W, 3] float in 0-255: coarse blobs plus fine grain.

    Low contrast (about +-13 grey levels): with a busy background a tiny VAE trained for a
    few minutes spends itself on the texture and decodes the object grey.
    """
    coarse = _upsample(rng.uniform(-1, 1, (h // 8 + 2, w // 8 + 2)), h, w)
    fine = _upsample(rng.uniform(-1, 1, (h // 2 + 2, w // 2 + 2)), h, w)
    grey = rng.uniform(95, 130) + 8.4 * coarse + 4.2 * fine
    tint = rng.uniform(-4, 4, 3)  # a barely visible colour cast (saturation stays < 0.1)
    return np.clip(grey[..., None] + tint, 0, 255)


def _coverage(shape: str, cx: float, cy: float, r: float, h: int, w: int, ss: int = 4):
    """Anti-aliased mask [H, W] in [0, 1] of ``shape`` centred at (cx, cy), half-size r."""
    offs = (np.arange(ss) + 0.5) / ss - 0.5
    ys = (np.arange(h)[:, None] + offs[None, :]).reshape(-1) + 0.5
    xs = (np.arange(w)[:, None] + offs[None, :]).reshape(-1) + 0.5
    dy, dx = ys[:, None] - cy, xs[None, :] - cx
    if shape == "square":
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif shape == "circle":
        inside = dx * dx + dy * dy <= (1.13 * r) ** 2  # same area as the square
    elif shape == "triangle":  # apex up, base at the bottom
        rr = 1.3 * r
        inside = (dy >= -rr) & (dy <= rr) & (np.abs(dx) <= rr * (dy + rr) / (2 * rr))
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    return inside.reshape(h, ss, w, ss).mean(axis=(1, 3))


def render_clip(
    colour: str,
    shape: str,
    direction: str,
    *,
    seed: int,
    num_frames: int = 17,
    height: int = 48,
    width: int = 64,
    moving: bool = True,
) -> np.ndarray:
    """Frames [N, H, W, 3] uint8 of one object moving over a grey texture.

    The object (half-size 7-8 px) carries a diagonal stripe texture that moves with it;
    it travels 75-95% of the room its direction leaves, at most 26 px (about 18-25 px:
    1.1-1.6 px per frame at 17 frames) and stays inside the frame. ``moving=False``
    keeps it still (a clip curation must reject).
    """
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; choose one of {list(COLOURS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose one of {list(DIRECTIONS)}")
    rng = np.random.default_rng(seed)
    bg = _background(rng, height, width)
    r = float(rng.uniform(7.0, 8.0))
    ux, uy = DIRECTIONS[direction]
    margin = 1.35 * r + 1
    room = (width if ux else height) - 2 * margin
    travel = float(rng.uniform(0.75, 0.95)) * min(room, 26.0) if moving else 0.0
    # Start so that the whole path stays inside the frame; the other axis is free.
    lo_x, hi_x = margin + max(0.0, -ux * travel), width - margin - max(0.0, ux * travel)
    lo_y, hi_y = margin + max(0.0, -uy * travel), height - margin - max(0.0, uy * travel)
    x0, y0 = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    base = np.array(COLOURS[colour], np.float64) * rng.uniform(0.9, 1.0)
    period, phase = rng.uniform(4.0, 6.0), rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        s = travel * i / (num_frames - 1)
        cx, cy = x0 + ux * s, y0 + uy * s
        m = _coverage(shape, cx, cy, r, height, width)[..., None]
        stripes = 0.8 + 0.2 * np.sin(2 * np.pi * ((xx - cx) + (yy - cy)) / period + phase)
        obj = base * stripes[..., None]
        frames[i] = np.clip(bg * (1 - m) + obj * m, 0, 255).round().astype(np.uint8)
    return frames


def _blur(frames: np.ndarray, passes: int = 3) -> np.ndarray:
    """A strong separable box blur (each pass 5 px wide), numpy only."""
    x = frames.astype(np.float64)
    k = 5
    for _ in range(passes):
        for axis in (1, 2):
            pad = [(0, 0)] * 4
            pad[axis] = (k // 2, k // 2)
            p = np.pad(x, pad, mode="edge")
            c = np.cumsum(p, axis=axis)
            c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
            n = x.shape[axis]
            x = (
                np.take(c, np.arange(k, n + k), axis=axis) - np.take(c, np.arange(n), axis=axis)
            ) / k
    return np.clip(x, 0, 255).round().astype(np.uint8)


def _seed(seed: int, *parts: object) -> int:
    """A stable 64-bit seed from the run seed and a clip's identity."""
    key = "/".join(map(str, (seed, *parts))).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def make_set(root: Path, seed: int = 0, config: SetConfig | None = None) -> list[Clip]:
    """Write the raw set under ``root`` and return its clips (also in ``root/clips.json``).

    Layout: ``train/<id>.mp4`` (+ ``<id>.txt`` caption side-car; the bad files too) and
    ``heldout/<id>.mp4``. Deterministic for ``seed``: same frames, same bytes.
    """
    cfg = config or SetConfig()
    root = Path(root)
    for sub in ("train", "heldout"):
        if (root / sub).exists():
            shutil.rmtree(root / sub)  # a partial earlier attempt; rebuilt from the seed
        (root / sub).mkdir(parents=True)
    clips: list[Clip] = []

    def add(frames: np.ndarray | None, split: str, kind: str, cid: str, attrs, variant: int):
        colour, shape, direction = attrs
        caption = caption_for(colour, shape, direction, variant)
        path = root / split / f"{cid}.mp4"
        if frames is not None:
            write_mp4(path, frames, cfg.fps)
        if split == "train":
            write_text(path.with_suffix(".txt"), caption + "\n")
        clips.append(
            Clip(
                id=cid, path=f"{split}/{cid}.mp4", split=split, kind=kind, caption=caption,
                colour=colour, shape=shape, direction=direction, num_frames=cfg.num_frames,
                height=cfg.height, width=cfg.width, fps=cfg.fps,
            )
        )  # fmt: skip
        return path

    size = {"num_frames": cfg.num_frames, "height": cfg.height, "width": cfg.width}
    for colour in COLOURS:
        for shape in SHAPES:
            for direction in DIRECTIONS:
                held = is_heldout(colour, shape, direction)
                split = "heldout" if held else "train"
                count = cfg.clips_per_heldout_combo if held else cfg.clips_per_train_combo
                for k in range(count):
                    cid = f"{colour}-{shape}-{direction}-{k}"
                    s = _seed(seed, cid)
                    frames = render_clip(colour, shape, direction, seed=s, **size)
                    add(frames, split, "clean", cid, (colour, shape, direction), s % 97)

    if cfg.with_rejects:
        attrs = ("red", "circle", "right")
        still = render_clip(*attrs, seed=_seed(seed, "static"), moving=False, **size)
        add(still, "train", "static", "reject-static", attrs, 0)
        attrs = ("blue", "square", "down")
        blurred = _blur(render_clip(*attrs, seed=_seed(seed, "blurred"), **size))
        add(blurred, "train", "blurred", "reject-blurred", attrs, 0)
        first = next(c for c in clips if c.split == "train" and c.kind == "clean")
        dup = add(None, "train", "duplicate", "reject-duplicate",
                  (first.colour, first.shape, first.direction), 0)  # fmt: skip
        shutil.copyfile(root / first.path, dup)
        attrs = ("green", "circle", "left")
        trunc = add(render_clip(*attrs, seed=_seed(seed, "trunc"), **size), "train",
                    "truncated", "reject-truncated", attrs, 0)  # fmt: skip
        data = trunc.read_bytes()
        trunc.write_bytes(data[: len(data) // 2])
        notv = add(None, "train", "not_video", "reject-not-a-video", ("yellow", "square", "up"), 0)
        notv.write_text("this is a text file, not a video\n")

    write_text(root / "clips.json", json.dumps([asdict(c) for c in clips], indent=1) + "\n")
    return clips


def load_set(root: Path) -> list[Clip]:
    """The clips of a set written by :func:`make_set`."""
    path = Path(root) / "clips.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the synth stage first")
    return [Clip(**d) for d in json.loads(path.read_text())]


def load_frames(root: Path, clip: Clip) -> np.ndarray:
    """Decoded frames [N, H, W, 3] uint8 of ``clip``."""
    return read_mp4(Path(root) / clip.path)[0]
