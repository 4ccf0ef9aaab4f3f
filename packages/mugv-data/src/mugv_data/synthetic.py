"""Synthetic test videos with known ground truth, for tests, benchmarks and the quickstart.

Every clip is a textured background that pans like a camera, with coloured shapes moving
over it. Variants add hard cuts at known frames, fades through black and cross-dissolves
over known spans, blur, no motion, too much motion, exact and near duplicates, a truncated
file, a file that is not a video, an odd frame size and rotation metadata.

The defaults (64x48 px, 24 fps, 1.5 to 4.5 s) are tiny so a whole set encodes and curates
in seconds; the paper's thresholds are for real footage, so tiny clips need the thresholds
of ``CurationConfig.preset("synthetic")`` (see the package README).

Entry point: ``make_synthetic_set(out_dir)`` returns a list of ``SyntheticVideo``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mugv_data._video import write_video

__all__ = ["SyntheticVideo", "make_synthetic_set", "render_fade", "render_scene"]

# A tiny caption ontology: subjects x actions x scenes, so entity tags and balancing have
# something to find. Index 0 of each list is deliberately the common case.
_SUBJECTS = ["red circle", "blue square", "green triangle", "yellow star"]
_ACTIONS = ["moving right", "bouncing", "drifting upward"]
_SCENES = ["textured field", "striped wall", "stone floor"]


@dataclass(frozen=True)
class SyntheticVideo:
    """One synthetic file and what a correct pipeline must find in it.

    ``cuts``: first frame index of each new scene after a hard cut. ``transitions``:
    gradual transitions as half-open frame spans ``(start, end)``. ``expect`` is one of
    ``keep``, ``blurry``, ``static``, ``fast``, ``duplicate``, ``failed``.
    """

    name: str
    path: Path
    kind: str
    expect: str
    caption: str
    num_frames: int
    fps: float
    width: int
    height: int
    rotation: int = 0
    cuts: tuple[int, ...] = ()
    transitions: tuple[tuple[int, int], ...] = ()
    duplicate_of: str | None = None
    scene_count: int = 1
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    import cv2

    noise = rng.standard_normal((h, w)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def _palette(seed: int) -> np.ndarray:
    """A base colour far from other seeds' (golden-ratio hue steps)."""
    import colorsys

    hue = (seed * 0.618034) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, 0.55, 0.62), np.float32) * 255.0


def render_scene(
    num_frames: int,
    height: int,
    width: int,
    *,
    seed: int,
    pan: tuple[float, float] = (1.5, 0.5),
    shape_speed: float = 2.0,
    contrast: float = 34.0,
    blur_sigma: float = 0.0,
) -> np.ndarray:
    """A scene as RGB ``uint8`` ``[T, H, W, 3]``.

    The background is a smooth random texture in a per-seed colour that pans by ``pan``
    pixels per frame (x, y); two shapes move at ``shape_speed`` pixels per frame.
    ``pan = (0, 0)`` and ``shape_speed = 0`` make a static clip; ``blur_sigma`` blurs it.
    """
    import cv2

    rng = np.random.default_rng(seed)
    px, py = pan
    margin = 8
    bh = height + int(abs(py) * num_frames) + 2 * margin
    bw = width + int(abs(px) * num_frames) + 2 * margin
    base = _palette(seed)
    tex = _smooth_noise(rng, bh, bw, 1.2)[..., None] * contrast
    tint = _smooth_noise(rng, bh, bw, 6.0)[..., None] * np.array([8, -6, 5], np.float32)
    background = np.clip(base + tex + tint, 0, 255)
    shapes = []
    for k in range(2):
        color = _palette(seed * 7 + k + 3) * 1.3
        r = max(3, min(height, width) // (5 + k))
        pos = rng.uniform([r, r], [width - r, height - r])
        ang = rng.uniform(0, 2 * np.pi)
        vel = np.array([np.cos(ang), np.sin(ang)]) * shape_speed
        shapes.append([pos, vel, r, np.clip(color, 0, 255)])
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for t in range(num_frames):
        ox = margin + (round(px * t) if px >= 0 else int(abs(px) * num_frames) - round(-px * t))
        oy = margin + (round(py * t) if py >= 0 else int(abs(py) * num_frames) - round(-py * t))
        img = background[oy : oy + height, ox : ox + width].copy()
        for s in shapes:
            pos, vel, r, color = s
            mask = (xx - pos[0]) ** 2 + (yy - pos[1]) ** 2 <= r * r
            img[mask] = color * 0.8 + img[mask] * 0.2
            pos += vel
            for d, lim in ((0, width), (1, height)):
                if pos[d] < r or pos[d] > lim - r:
                    vel[d] = -vel[d]
                    pos[d] = np.clip(pos[d], r, lim - r)
        frame = np.clip(img, 0, 255).astype(np.uint8)
        if blur_sigma > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), blur_sigma)
        frames[t] = frame
    return frames


def _caption(i: int, rng: np.random.Generator) -> str:
    # Skewed so the first subject dominates: balancing must up-weight the others.
    subject = _SUBJECTS[0] if i % 4 else _SUBJECTS[1 + (i // 4) % (len(_SUBJECTS) - 1)]
    action = _ACTIONS[i % len(_ACTIONS)]
    scene = _SCENES[int(rng.integers(len(_SCENES)))]
    return f"A {subject} {action} across a {scene}."


def _fade(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Fade ``a``'s last frame out to black over n frames, then ``b``'s first in over n."""
    out = [a[-1].astype(np.float32) * (1 - (k + 1) / n) for k in range(n)]
    out += [b[0].astype(np.float32) * ((k + 1) / (n + 1)) for k in range(n)]
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def render_fade(
    a: np.ndarray, b: np.ndarray, out_len: int, in_len: int, colour: float = 0.0
) -> tuple[np.ndarray, tuple[int, int]]:
    """Scene ``a`` fading out over its last ``out_len`` frames to a flat ``colour`` (0 =
    black, 255 = white), then ``b`` fading in over its first ``in_len``; both keep moving.

    Returns the frames and the transition's half-open span (every frame not a pure scene).
    """
    fa, fb = a.astype(np.float32).copy(), b.astype(np.float32).copy()
    for k in range(out_len):  # last faded-out frame is flat
        alpha = 1 - (k + 1) / out_len
        i = len(a) - out_len + k
        fa[i] = fa[i] * alpha + colour * (1 - alpha)
    for k in range(in_len):
        alpha = k / in_len  # first faded-in frame is flat too
        fb[k] = fb[k] * alpha + colour * (1 - alpha)
    frames = np.clip(np.concatenate([fa, fb]), 0, 255).round().astype(np.uint8)
    return frames, (len(a) - out_len, len(a) + in_len)


def _dissolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross-dissolve between two equally long frame stacks."""
    n = len(a)
    w = ((np.arange(n) + 1) / (n + 1))[:, None, None, None]
    return np.clip(a * (1 - w) + b * w, 0, 255).astype(np.uint8)


def make_synthetic_set(
    out_dir: str | os.PathLike[str],
    *,
    num_good: int = 4,
    width: int = 64,
    height: int = 48,
    fps: float = 24.0,
    seed: int = 0,
    scene_s: float = 1.5,
    include_failures: bool = True,
) -> list[SyntheticVideo]:
    """Write the synthetic set into ``out_dir`` and return its ground truth.

    Also writes ``<name>.txt`` caption side-cars and ``ground_truth.json``. ``num_good``
    plain clips are written; the special cases (cuts, fade, dissolve, blurry, static,
    fast, duplicates, odd size, rotation and, with ``include_failures``, a truncated file
    and a non-video) are always added. Deterministic for a given ``seed``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = round(scene_s * fps)
    videos: list[SyntheticVideo] = []
    s0 = seed * 1000

    def add(name: str, frames: np.ndarray, kind: str, expect: str, caption: str, **kw) -> None:
        codec = kw.pop("codec", "libx264")
        rotation = kw.get("rotation", 0)
        ext = ".mkv" if codec != "libx264" else ".mp4"
        path = write_video(out / f"{name}{ext}", frames, fps, codec=codec, rotation=rotation)
        (out / f"{name}.txt").write_text(caption + "\n")
        h, w = frames.shape[1:3]
        if rotation in (90, 270):
            h, w = w, h
        videos.append(
            SyntheticVideo(
                name=name, path=path, kind=kind, expect=expect, caption=caption,
                num_frames=len(frames), fps=fps, width=w, height=h, **kw,
            )
        )  # fmt: skip

    for i in range(num_good):
        frames = render_scene(2 * n, height, width, seed=s0 + 10 + i)
        add(f"good_{i:02d}", frames, "plain", "keep", _caption(i, rng))

    # Three scenes separated by hard cuts at known frames.
    scenes = [render_scene(n, height, width, seed=s0 + 200 + k) for k in range(3)]
    add("cuts", np.concatenate(scenes), "hard_cuts", "keep", _caption(1, rng),
        cuts=(n, 2 * n), scene_count=3)  # fmt: skip

    # Fade through black (8 frames out, 8 in) and a 12-frame cross-dissolve.
    a, b = (
        render_scene(n, height, width, seed=s0 + 300),
        render_scene(n, height, width, seed=s0 + 301),
    )
    f = 8
    add("fade", np.concatenate([a, _fade(a, b, f), b]), "fade", "keep", _caption(2, rng),
        transitions=((n, n + 2 * f),), scene_count=2)  # fmt: skip
    d = 12
    a = render_scene(n + d, height, width, seed=s0 + 310)
    b = render_scene(n + d, height, width, seed=s0 + 311)
    mix = _dissolve(a[n:], b[:d])
    add("dissolve", np.concatenate([a[:n], mix, b[d:]]), "dissolve", "keep", _caption(3, rng),
        transitions=((n, n + d),), scene_count=2)  # fmt: skip

    add("blurry", render_scene(2 * n, height, width, seed=s0 + 400, blur_sigma=2.5),
        "blurred", "blurry", _caption(5, rng))  # fmt: skip
    add("static", render_scene(2 * n, height, width, seed=s0 + 410, pan=(0, 0), shape_speed=0),
        "static", "static", _caption(6, rng))  # fmt: skip
    add("fast", render_scene(2 * n, height, width, seed=s0 + 420, pan=(4.0, 1.5), shape_speed=4),
        "fast_motion", "fast", _caption(7, rng))  # fmt: skip

    # Duplicates: a byte-identical copy and a re-encoded, brightened, noisier copy.
    src = render_scene(2 * n, height, width, seed=s0 + 500)
    add("dup_source", src, "plain", "keep", _caption(9, rng))
    shutil.copyfile(videos[-1].path, out / "dup_exact.mp4")
    (out / "dup_exact.txt").write_text(videos[-1].caption + "\n")
    videos.append(
        SyntheticVideo(
            name="dup_exact", path=out / "dup_exact.mp4", kind="exact_duplicate",
            expect="duplicate", caption=videos[-1].caption, num_frames=2 * n, fps=fps,
            width=width, height=height, duplicate_of="dup_source",
        )
    )  # fmt: skip
    noisy = np.clip(
        src.astype(np.float32) * 1.04 + 3 + np.random.default_rng(seed + 1).normal(0, 2, src.shape),
        0, 255,
    ).astype(np.uint8)  # fmt: skip
    add(
        "dup_near",
        noisy,
        "near_duplicate",
        "duplicate",
        _caption(9, rng),
        duplicate_of="dup_source",
    )

    # Odd frame size (H.264 4:2:0 needs even sizes, so MPEG-4 part 2 in Matroska).
    add("odd_size", render_scene(2 * n, height + 1, width + 1, seed=s0 + 600), "odd_size", "keep",
        _caption(10, rng), codec="mpeg4")  # fmt: skip
    # Stored landscape, displayed portrait: 90 degrees counter-clockwise display rotation.
    upright = render_scene(2 * n, width, height, seed=s0 + 610)  # [T, W, H, 3]: portrait
    stored = np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2)))
    add("rotated", stored, "rotated", "keep", _caption(11, rng), rotation=90,
        extra={"upright_first_frame_mean": float(upright[0].mean())})  # fmt: skip

    if include_failures:
        good = render_scene(2 * n, height, width, seed=s0 + 700)
        tmp = write_video(out / "truncated_src.mp4", good, fps)
        data = tmp.read_bytes()
        (out / "truncated.mp4").write_bytes(data[: len(data) // 2])
        tmp.unlink()
        # Matroska keeps its header at the front, so the cut file opens but ends early.
        tmp = write_video(out / "truncated_src.mkv", good, fps)
        data = tmp.read_bytes()
        (out / "truncated_tail.mkv").write_bytes(data[: len(data) // 2])
        tmp.unlink()
        (out / "not_a_video.mp4").write_text("this is a text file, not a video\n")
        for name, fname in (
            ("truncated", "truncated.mp4"),
            ("truncated_tail", "truncated_tail.mkv"),
            ("not_a_video", "not_a_video.mp4"),
        ):
            videos.append(
                SyntheticVideo(
                    name=name, path=out / fname, kind=name, expect="failed", caption="",
                    num_frames=0, fps=fps, width=width, height=height,
                )
            )  # fmt: skip

    (out / "ground_truth.json").write_text(json.dumps([v.to_dict() for v in videos], indent=1))
    return videos
