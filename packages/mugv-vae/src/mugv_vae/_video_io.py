"""Video files through PyAV, and deterministic training clips (synthetic or from a folder).

Dimension legend: C = 3 channels, N frames, H/W height/width. Tensors are [C, N, H, W]
float in [-1, 1] unless stated.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


def file_mode() -> int:
    """Permission bits a new file gets under the current umask (0o644 under umask 022):
    ``tempfile.mkstemp`` creates 0o600 files, which atomic writers widen to this."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def not_regular(path: Path) -> str | None:
    """Why ``path`` must not be opened as a file (a FIFO, device, socket or folder blocks or
    misleads a reader), or None for a regular file. Does not open it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    if stat.S_ISREG(mode):
        return None
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file"


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[torch.Tensor, float]:
    """Decode a video file: ([3, N, H, W] in [-1, 1], fps).

    Raises FileNotFoundError for a missing file, ValueError for anything that is not a
    regular file (never opened: a FIFO would block) or does not decode to >= 1 frame.
    """
    import av

    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if max_frames is not None and (
        not isinstance(max_frames, int) or isinstance(max_frames, bool) or max_frames < 1
    ):
        raise ValueError(f"max_frames must be a positive int or None, got {max_frames!r}")
    path = Path(path)
    reason = not_regular(path)
    if reason == "does not exist":
        raise FileNotFoundError(f"video file {path} does not exist")
    if reason is not None:
        raise ValueError(f"video {path} {reason}; give a video file")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else 0.0
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, OSError) as exc:  # type: ignore[attr-defined]
        raise ValueError(f"could not decode {path}: {exc}") from exc
    if not frames:
        raise ValueError(f"{path} contains no decodable frames")
    arr = torch.from_numpy(np.stack(frames))  # [N, H, W, 3] uint8
    return arr.permute(3, 0, 1, 2).float() / 127.5 - 1.0, fps


def write_video(path: str | Path, video: torch.Tensor, fps: float = 24.0) -> Path:
    """Write [3, N, H, W] in [-1, 1] as H.264 (yuv420p; H, W must be even), atomically.

    The file gets the umask's permissions; the temporary file is removed on any error,
    Ctrl-C or SIGTERM (under the command line, which turns SIGTERM into an exception).
    """
    import av

    if not isinstance(video, torch.Tensor):
        raise TypeError(f"video must be a torch.Tensor [3, N, H, W], got {type(video).__name__}")
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, N, H, W], got shape {tuple(video.shape)}")
    n, h, w = video.shape[1:]
    if n < 1 or h < 2 or w < 2 or h % 2 or w % 2:
        raise ValueError(
            f"video must have >= 1 frame and even height/width >= 2 (H.264 yuv420p), got "
            f"{n} frames of {h}x{w}"
        )
    if not video.is_floating_point() or not bool(torch.isfinite(video).all()):
        raise ValueError("video must be a float tensor of finite values in [-1, 1] (NaN/inf found)")
    if (
        isinstance(fps, bool)
        or not isinstance(fps, int | float)
        or not math.isfinite(fps)
        or fps <= 0
    ):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is a folder; give a file name such as clip.mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(1, 2, 3, 0).cpu().numpy()
    rate = round(fps) if fps >= 1 else Fraction(fps).limit_denominator(1001)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        with av.open(tmp, mode="w") as out:
            stream = out.add_stream("libx264", rate=rate)
            stream.width, stream.height = arr.shape[2], arr.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "10"}
            for frame in arr:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def scan_videos(folder: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(video files of ``folder`` by name, [(path, reason)] of video-named entries that are
    not regular files: FIFOs, devices, sockets, folders). Nothing is opened."""
    if not isinstance(folder, str | os.PathLike):
        raise TypeError(f"folder must be a str or os.PathLike, got {type(folder).__name__}")
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise NotADirectoryError(f"{folder} is not a folder; give a folder of videos")
        raise FileNotFoundError(f"video folder not found: {folder}")
    files, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        reason = not_regular(p)
        if reason is None:
            files.append(p)
        else:
            skipped.append((p, reason))
    return files, skipped


def list_videos(folder: str | Path) -> list[Path]:
    """Regular video files of ``folder``, sorted (FIFOs, devices etc. are left out)."""
    return scan_videos(folder)[0]


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def synthetic_clip(
    index: int, num_frames: int, height: int, width: int, seed: int = 0
) -> torch.Tensor:
    """A deterministic clip [3, N, H, W]: a smooth colour field with moving soft blobs."""
    g = _generator(seed, index)
    n, h, w = num_frames, height, width
    base = torch.rand(1, 3, 2, 3, 3, generator=g) * 1.6 - 0.8
    video = F.interpolate(base, size=(n, h, w), mode="trilinear", align_corners=True)[0]
    yy = torch.linspace(0, 1, h).view(1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, w)
    t = torch.linspace(0, 1, n).view(n, 1, 1)
    for _ in range(3):
        p = torch.rand(7, generator=g)
        cy = p[0] + (p[1] - 0.5) * t
        cx = p[2] + (p[3] - 0.5) * t
        r = 0.08 + 0.15 * p[4]
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))  # [N, H, W]
        colour = torch.rand(3, generator=g) * 2 - 1
        video = video * (1 - blob[None]) + colour.view(3, 1, 1, 1) * blob[None]
    return video.clamp(-1, 1)


class ClipSource:
    """Deterministic batches: the clip of (seed, step, rank, i) never depends on history,
    so a resumed run sees exactly the batches an uninterrupted run would."""

    def __init__(
        self,
        num_frames: int,
        height: int,
        width: int,
        seed: int = 0,
        folder: str | Path | None = None,
    ) -> None:
        self.num_frames, self.height, self.width, self.seed = num_frames, height, width, seed
        self.files = list_videos(folder) if folder is not None else None
        if self.files is not None and not self.files:
            raise FileNotFoundError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {folder}")
        self._cache: dict[Path, torch.Tensor] = {}

    def clip(self, step: int, rank: int, i: int) -> torch.Tensor:
        if self.files is None:
            idx = int(
                torch.randint(0, 2**31 - 1, (1,), generator=_generator(self.seed, step, rank, i))
            )
            return synthetic_clip(idx, self.num_frames, self.height, self.width, self.seed)
        g = _generator(self.seed, step, rank, i)
        path = self.files[int(torch.randint(0, len(self.files), (1,), generator=g))]
        if path not in self._cache:
            self._cache[path] = read_video(path)[0]
        video = self._cache[path]
        return _random_crop(video, self.num_frames, self.height, self.width, g)

    def batch(self, step: int, rank: int, batch_size: int) -> torch.Tensor:
        return torch.stack([self.clip(step, rank, i) for i in range(batch_size)])


def _random_crop(video: torch.Tensor, n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """Temporal crop (looping short videos), resize to cover, random spatial crop."""
    total = video.shape[1]
    if total < n:
        video = video.repeat(1, math.ceil(n / total), 1, 1)
        total = video.shape[1]
    t0 = int(torch.randint(0, total - n + 1, (1,), generator=g))
    video = video[:, t0 : t0 + n]
    vh, vw = video.shape[-2:]
    s = max(h / vh, w / vw)
    if s != 1.0:
        size = (max(h, math.ceil(vh * s)), max(w, math.ceil(vw * s)))
        video = F.interpolate(video.transpose(0, 1), size=size, mode="bilinear", antialias=True)
        video = video.transpose(0, 1)
        vh, vw = size
    y0 = int(torch.randint(0, vh - h + 1, (1,), generator=g))
    x0 = int(torch.randint(0, vw - w + 1, (1,), generator=g))
    return video[:, :, y0 : y0 + h, x0 : x0 + w].clamp(-1, 1).contiguous()
