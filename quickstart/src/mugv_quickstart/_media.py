"""MP4 and PNG files of the quickstart: H.264 through PyAV, atomic writes.

Frames are ``uint8`` arrays [N, H, W, 3] (RGB) throughout the quickstart.
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def atomic_path(path: Path) -> Path:
    """A fresh temporary path next to ``path`` (same folder, so ``os.replace`` is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    return Path(tmp)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file + ``os.replace``)."""
    tmp = atomic_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_npy(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as ``.npy`` atomically."""
    tmp = atomic_path(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_mp4(path: Path, frames: np.ndarray, fps: float, crf: int = 12) -> Path:
    """Encode ``frames`` [N, H, W, 3] uint8 as H.264 (yuv420p) to ``path``, atomically.

    One encoder thread and fixed options, so the same frames give the same bytes. x264's
    lookahead and macroblock tree are off: with them the same frames gave different bytes
    for some low-contrast clips depending on process state.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
        )
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 (yuv420p) needs an even frame size, got {h}x{w}")
    tmp = atomic_path(path)
    try:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.thread_count = 1
            stream.options = {
                "crf": str(crf),
                "preset": "medium",
                "threads": "1",
                "x264-params": "no-mbtree=1:rc-lookahead=0",
            }
            for img in frames:
                frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(img), format="yuv420p")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def rgb_to_yuv420p(img: np.ndarray) -> np.ndarray:
    """RGB [H, W, 3] uint8 -> planar YUV 4:2:0 [3H/2, W] uint8 (BT.601, limited range).

    Done here rather than by the encoder's colour converter, whose SIMD paths gave
    run-to-run differences of a few levels: the same frames must give the same bytes.
    """
    rgb = img.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    h, w = y.shape

    def half(c: np.ndarray) -> np.ndarray:  # 2x2 box average (MPEG-2 style chroma siting)
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).reshape(h // 4, w)

    planes = np.concatenate([y, half(cb), half(cr)], axis=0)
    return np.clip(np.round(planes), 0, 255).astype(np.uint8)


def read_mp4(path: Path) -> tuple[np.ndarray, float]:
    """Decode every frame of ``path``: (frames [N, H, W, 3] uint8, fps)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.base_rate or 0)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except av.error.FFmpegError as e:
        raise ValueError(f"{path} is not a readable video: {e}") from e
    if not frames:
        raise ValueError(f"{path} has no video frames")
    return np.stack(frames), fps


def write_png(path: Path, image: np.ndarray) -> Path:
    """Write an RGB uint8 image [H, W, 3] as PNG, atomically."""
    from PIL import Image

    tmp = atomic_path(path)
    try:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
