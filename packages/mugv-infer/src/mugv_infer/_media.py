"""Reference images in, MP4 files out (and back in, for checks).

Reference image (architecture reference §B.7): RGB, resized to *cover* (H, W) with bicubic
resampling (scale = the larger of the two axis ratios, the resized side rounded), centre
crop (offset rounded), then [0, 255] -> [-1, 1].

Video (reference §E): clamp to [-1, 1], map to [0, 255] rounding by +0.5, uint8, H.264
through PyAV (crf 17 like the official writer). Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# 8-bit modes PIL converts to RGB without reinterpretation; alpha is dropped with a warning.
_RGB_MODES = {"RGB", "L", "P", "CMYK", "YCbCr", "RGBA", "LA", "RGBX", "PA"}
_ALPHA_MODES = {"RGBA", "LA", "PA"}

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray


def load_image(image: ImageInput) -> Image.Image:
    """Open ``image`` (path, PIL image or HxWx3 uint8 array) as an RGB PIL image.

    Raises a ValueError naming the problem for unreadable files and for modes that would
    need reinterpretation (16-bit, float, 1-bit).
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(
                "an array image must be uint8 [H, W, 3] RGB, got "
                f"{image.dtype} {tuple(image.shape)}; convert it first"
            )
        return Image.fromarray(image, mode="RGB")
    if not isinstance(image, Image.Image):
        if not isinstance(image, str | os.PathLike):
            raise TypeError(
                "image must be a file path, a PIL image or a uint8 [H, W, 3] array, got "
                f"{type(image).__name__}"
            )
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"reference image {str(path)!r} does not exist")
        if not path.is_file():  # a folder, FIFO or device: never opened (a FIFO blocks)
            raise ValueError(f"reference image {str(path)!r} is not a regular file")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(
                f"cannot read reference image {str(path)!r} ({exc}); use a PNG, JPEG or WebP file"
            ) from exc
    if 0 in image.size:
        raise ValueError(f"reference image is empty (size {image.size}); give a real image")
    if image.mode not in _RGB_MODES:
        raise ValueError(
            f"reference image has mode {image.mode!r}, which cannot be used as an 8-bit RGB "
            "frame; convert it to RGB first (e.g. PIL's image.convert('RGB') after scaling "
            "16-bit or float data to 0-255)"
        )
    if image.mode in _ALPHA_MODES:
        warnings.warn(
            f"reference image mode {image.mode!r} has an alpha channel; it is dropped",
            stacklevel=2,
        )
    return image.convert("RGB")


def _file_mode() -> int:
    """Permission bits of a new file under the current umask (0o644 under umask 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def cover_resize_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Resize to cover (height, width) with bicubic resampling, then centre crop."""
    w, h = image.size
    rh, rw = height / h, width / w
    if rh > rw:
        sh, sw = height, round(w * rh)
        top, left = 0, round((sw - width) / 2.0)
    else:
        sh, sw = round(h * rw), width
        top, left = round((sh - height) / 2.0), 0
    resized = image.resize((sw, sh), Image.BICUBIC)
    arr = np.asarray(resized)
    return Image.fromarray(arr[top : top + height, left : left + width])


def preprocess_image(image: ImageInput, height: int, width: int) -> torch.Tensor:
    """The official reference frame: [3, height, width] float32 in [-1, 1]."""
    rgb = cover_resize_crop(load_image(image), height, width)
    arr = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
    return (arr - 0.5) / 0.5


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, N, H, W] in [-1, 1] -> uint8 [N, H, W, 3] with the official rounding."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, N, H, W], got {tuple(video.shape)}")
    if video.is_floating_point() and not bool(torch.isfinite(video).all()):
        raise ValueError(
            "video holds NaN or infinite values (a diverged sample?); nothing is written"
        )
    x = video.detach().float().clamp(-1, 1).add(1).div(2).mul(255).add(0.5).clamp(0, 255)
    return x.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def write_mp4(
    frames: np.ndarray | torch.Tensor,
    path: str | os.PathLike[str],
    fps: float,
    *,
    crf: int = 17,
) -> Path:
    """Write frames as an H.264 MP4, atomically.

    Args:
        frames: uint8 [N, H, W, 3], or a float tensor [3, N, H, W] in [-1, 1].
        path: output file; ``.mp4`` is appended when missing, like the official writer.
        fps: frame rate written to the container.
    """
    import av

    if isinstance(frames, torch.Tensor):
        frames = to_uint8_frames(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    if n < 1:
        raise ValueError("frames is empty (0 frames); an MP4 needs at least one frame")
    if h % 2 or w % 2 or h < 2 or w < 2:
        raise ValueError(f"H.264 (yuv420p) needs even sizes, got {h}x{w}")
    if isinstance(fps, bool) or not isinstance(fps, int | float | np.integer | np.floating):
        raise TypeError(f"fps must be a number, got {fps!r} ({type(fps).__name__})")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be finite and > 0, got {fps!r}")
    out = Path(path)
    if out.suffix.lower() != ".mp4":
        out = out.with_name(out.name + ".mp4")
    if out.is_dir():
        raise IsADirectoryError(f"output {str(out)!r} is a folder; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(float(fps)).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps {fps!r} is too small for an MP4 time base (>= 1/1001)")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".mp4")
    os.close(fd)
    try:
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; the clip gets the umask's mode
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = w, h
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


@dataclass(frozen=True)
class VideoFile:
    """Decoded MP4: frames uint8 [N, H, W, 3] and the container's frame rate."""

    frames: np.ndarray
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def read_mp4(path: str | os.PathLike[str]) -> VideoFile:
    """Decode every frame of a video file (RGB) and its average frame rate.

    Raises FileNotFoundError for a missing file and ValueError for anything else that is
    not a decodable video (a FIFO or device is never opened)."""
    import av

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"video {str(p)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"video {str(p)!r} is not a regular file")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, OSError) as exc:  # type: ignore[attr-defined]
        raise ValueError(f"cannot decode video {str(p)!r} ({exc})") from exc
    with container:
        if not container.streams.video:
            raise ValueError(f"{str(p)!r} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{str(path)!r} has no decodable video frames")
    return VideoFile(frames=np.stack(frames), fps=float(rate) if rate else 0.0)
