"""Enhancer input and output videos (enhancer reference §1.2, §1.5, Q3-Q5).

Input: MP4 paths, uint8 frames [N, H, W, 3] / [B, N, H, W, 3], float tensors [3, N, H, W] /
[B, 3, N, H, W] in [-1, 1], or a ``GenerationOutput`` of ``MUGVPipeline``. Pixels map to
[-1, 1] as the official reader does: ``(p / 255 - 0.5) / 0.5`` in float32.

Checks, all before any model runs: one frame is an image (the enhancer would only
round-trip it through the VAE, Q5); the frame count must be 4k + 1 (the Wan VAE drops the
rest silently, Q3), or is padded by repeating the last frame on request; height and width
must be multiples of 16 (Q4), or are cover-resized (bilinear) and centre-cropped to an
explicit size like the official reader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

SIZE_MULTIPLE = 16
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass
class Videos:
    """A batch ready to encode: pixels [B, 3, N, H, W] float32 in [-1, 1]."""

    pixels: torch.Tensor
    num_frames: int
    """Frames before padding (the output is trimmed back to this)."""
    fps: float | None
    names: list[str]


def _from_uint8(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [..., N, H, W, 3] -> float32 [..., 3, N, H, W] in [-1, 1] (official ToTensor +
    Normalize(0.5, 0.5))."""
    x = torch.as_tensor(np.asarray(frames)).float() / 255.0
    x = (x - 0.5) / 0.5
    return x.movedim(-1, -4)


def _read_file(path: Path) -> tuple[np.ndarray, float]:
    from mugv_infer._media import read_mp4

    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(
            f"{str(path)!r} is an image; the enhancer refines videos (with one frame it would "
            "only round-trip it through the VAE, reference Q5). Pass an MP4 clip"
        )
    if not path.is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist")
    try:
        clip = read_mp4(path)
    except Exception as exc:  # PyAV errors: not a video container
        raise ValueError(f"cannot decode {str(path)!r} as a video ({exc})") from exc
    return clip.frames, clip.fps


def _as_batch(video: Any) -> tuple[torch.Tensor, float | None, list[str]]:
    if hasattr(video, "latents") and hasattr(video, "videos"):  # MUGVPipeline output
        paths = list(getattr(video, "paths", None) or [])
        if paths:
            return _as_batch(paths)
        videos = video.videos
        if isinstance(videos, np.ndarray | torch.Tensor) and videos.ndim == 5:
            fps = getattr(video, "write_fps", None)
            return _as_batch(videos)[0], fps, [f"{i:04d}" for i in range(videos.shape[0])]
        raise ValueError(
            "this GenerationOutput holds no pixels; generate with output_type='pt', 'np' or "
            "'mp4' to enhance it"
        )
    if isinstance(video, str | os.PathLike):
        frames, fps = _read_file(Path(video))
        return _from_uint8(frames)[None], fps, [Path(video).stem]
    if isinstance(video, list | tuple):
        if not video:
            raise ValueError("no videos given")
        items = [_as_batch(v) for v in video]
        shapes = {tuple(x.shape[1:]) for x, _, _ in items}
        if len(shapes) != 1:
            raise ValueError(
                f"videos of one call must share frame count and size, got {sorted(shapes)}; "
                "enhance them in separate calls"
            )
        fps = items[0][1]
        return torch.cat([x for x, _, _ in items]), fps, [n for _, _, ns in items for n in ns]
    if isinstance(video, np.ndarray) or (
        isinstance(video, torch.Tensor) and video.dtype == torch.uint8
    ):
        if video.dtype != np.uint8 and video.dtype != torch.uint8:
            raise ValueError(f"array videos must be uint8 [B, N, H, W, 3], got {video.dtype}")
        if video.ndim == 4:
            video = video[None]
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(
                f"uint8 videos must be [N, H, W, 3] or [B, N, H, W, 3], got {tuple(video.shape)}"
            )
        return _from_uint8(video), None, [f"{i:04d}" for i in range(video.shape[0])]
    if isinstance(video, torch.Tensor):
        if not video.is_floating_point():
            raise ValueError(f"tensor videos must be float in [-1, 1], got {video.dtype}")
        if video.ndim == 4 and video.shape[1] == 3 and video.shape[0] != 3:
            raise ValueError(
                f"got {tuple(video.shape)}: this looks like an image batch [B, 3, H, W]; the "
                "enhancer refines videos [B, 3, N, H, W] of 4k + 1 frames"
            )
        if video.ndim == 4:
            video = video[None]
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(
                f"float videos must be [3, N, H, W] or [B, 3, N, H, W], got {tuple(video.shape)}"
            )
        x = video.detach().float().cpu()
        return x, None, [f"{i:04d}" for i in range(x.shape[0])]
    raise TypeError(
        f"unsupported video type {type(video).__name__}: pass an MP4 path (or a list), uint8 "
        "frames [B, N, H, W, 3], a float tensor [B, 3, N, H, W] or a GenerationOutput"
    )


def cover_resize(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Official resize (reference §1.2): per frame, bilinear PIL resize by the larger axis
    ratio to (round(h s), round(w s)), then a centre crop to (height, width)."""
    b, _, n, h, w = pixels.shape
    if (h, w) == (height, width):
        return pixels
    s = max(width / w, height / h)
    rh, rw = round(h * s), round(w * s)
    top, left = round((rh - height) / 2.0), round((rw - width) / 2.0)
    u8 = ((pixels * 0.5 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8)
    frames = u8.permute(0, 2, 3, 4, 1).reshape(b * n, h, w, 3).numpy()
    out = []
    for f in frames:
        r = np.asarray(Image.fromarray(f).resize((rw, rh), Image.BILINEAR))
        out.append(r[top : top + height, left : left + width])
    return _from_uint8(np.stack(out).reshape(b, n, height, width, 3))


def prepare(
    video: Any,
    *,
    height: int | None = None,
    width: int | None = None,
    pad_frames: bool = False,
) -> Videos:
    """Load and check ``video`` (see the module docstring); raises ValueError naming the fix."""
    if (height is None) != (width is None):
        raise ValueError("give both height and width, or neither")
    pixels, fps, names = _as_batch(video)
    _, _, n, h, w = pixels.shape
    if n == 1:
        raise ValueError(
            "the input has one frame: that is an image, and the enhancer would only "
            "round-trip it through the VAE (reference Q5). Pass a video of 4k + 1 frames"
        )
    if height is not None:
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(f"height and width must be multiples of 16, got {height} x {width}")
        pixels = cover_resize(pixels, height, width)
        h, w = height, width
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(
            f"video size {h} x {w} is not a multiple of 16 (Wan VAE 8 x DiT patch 2; the "
            "official code fails on it, reference Q4). Pass height= and width= (--height/"
            "--width) to resize and centre-crop like the official reader, e.g. "
            f"{_round16(h)} x {_round16(w)}"
        )
    if (n - 1) % 4:
        target = (n - 1) // 4 * 4 + 5
        if not pad_frames:
            raise ValueError(
                f"the video has {n} frames; the Wan VAE encodes 4k + 1 frames (e.g. 105) and "
                f"the official enhancer silently drops the last {(n - 1) % 4}. Pass "
                f"pad_frames=True (--pad-frames) to repeat the last frame up to {target} and "
                f"trim the output back to {n}, or cut the clip to {target - 4} frames"
            )
        pad = pixels[:, :, -1:].expand(-1, -1, target - n, -1, -1)
        pixels = torch.cat([pixels, pad], dim=2)
    return Videos(pixels=pixels.contiguous(), num_frames=n, fps=fps, names=names)


def _round16(x: int) -> int:
    return max(SIZE_MULTIPLE, round(x / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def to_uint8(video: torch.Tensor, *, truncate: bool = True) -> np.ndarray:
    """[B, 3, N, H, W] in [-1, 1] -> uint8 [B, N, H, W, 3]. ``truncate`` is the official
    ``clip((x + 1) * 127.5, 0, 255).astype(uint8)`` (reference §1.5); False rounds."""
    x = (video.detach().float().clamp(-1, 1) + 1) * 127.5
    if not truncate:
        x = x + 0.5
    return x.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
