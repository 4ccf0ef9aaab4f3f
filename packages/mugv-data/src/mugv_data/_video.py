"""Probe and decode videos with PyAV: the only module that touches containers.

Frames come out as RGB ``uint8`` arrays ``[H, W, 3]`` in *display* orientation: the
container's rotation (display matrix) is applied, so a phone video recorded in portrait is
portrait here. Frame indices count decoded frames from 0 and assume a constant frame rate
(the stream's average rate); variable-frame-rate inputs are indexed by that average rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

# A file whose container promises more frames than can be decoded is called truncated when
# fewer than this share of them decode (containers round durations, so allow some slack).
_TRUNCATION_TOLERANCE = 0.9


class VideoError(Exception):
    """A video cannot be used; ``reason`` is a short, stable, human-readable cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    """What probing a file tells, before any frame is trusted.

    ``width``/``height`` are display sizes (after rotation); ``coded_*`` are as stored.
    ``expected_frames`` is the container's frame count (or duration x fps when the
    container has no count), ``None`` when neither is known.
    """

    duration_s: float
    fps: float
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    codec: str
    pix_fmt: str
    has_audio: bool
    audio_codec: str
    bit_rate: int
    expected_frames: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def _rotation_of(frame: av.VideoFrame) -> int:
    """Counter-clockwise display rotation in {0, 90, 180, 270}."""
    rot = round(getattr(frame, "rotation", 0) or 0) % 360
    return (rot + 45) // 90 * 90 % 360


def _upright(img: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a counter-clockwise display rotation to an ``[H, W, C]`` array."""
    if rotation == 0:
        return img
    return np.ascontiguousarray(np.rot90(img, k=rotation // 90))


def _open(path: str | Path) -> av.container.InputContainer:
    p = Path(path)
    if not p.exists():
        raise VideoError(f"file not found: {p}")
    if p.stat().st_size == 0:
        raise VideoError("empty file")
    try:
        return av.open(str(p))
    except av.error.InvalidDataError:
        raise VideoError(
            "not a readable video container (invalid data; truncated, corrupt or not a video)"
        ) from None
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"cannot open container: {e}") from None


def probe(path: str | Path) -> VideoInfo:
    """Read container and stream facts and decode the first frame.

    Raises ``VideoError`` for a missing, empty, unreadable or audio-only file, or a video
    stream whose first frame does not decode.
    """
    with _open(path) as c:
        if not c.streams.video:
            raise VideoError("no video stream (audio-only or data file)")
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate or s.base_rate
        if not rate or float(rate) <= 0:
            raise VideoError("video stream has no frame rate")
        fps = float(rate)
        try:
            first = next(c.decode(video=0))
        except StopIteration:
            raise VideoError("video stream has no decodable frame") from None
        except av.error.FFmpegError as e:
            raise VideoError(f"first frame does not decode: {e}") from None
        rotation = _rotation_of(first)
        cw, ch = first.width, first.height
        if s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        elif c.duration is not None:
            duration = c.duration / av.time_base
        else:
            duration = 0.0
        if s.frames:
            expected = int(s.frames)
        elif duration > 0:
            expected = round(duration * fps)
        else:
            expected = None
        if duration <= 0 and expected:
            duration = expected / fps
        audio = c.streams.audio[0] if c.streams.audio else None
        w, h = (ch, cw) if rotation in (90, 270) else (cw, ch)
        return VideoInfo(
            duration_s=float(duration),
            fps=fps,
            width=w,
            height=h,
            coded_width=cw,
            coded_height=ch,
            rotation=rotation,
            codec=s.codec_context.name,
            pix_fmt=str(s.codec_context.pix_fmt or ""),
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else "",
            bit_rate=int(c.bit_rate or 0),
            expected_frames=expected,
        )


def check_complete(decoded: int, info: VideoInfo) -> None:
    """Raise ``VideoError`` if far fewer frames decoded than the container promised."""
    if info.expected_frames and decoded < _TRUNCATION_TOLERANCE * info.expected_frames:
        raise VideoError(
            f"truncated: decoded {decoded} of {info.expected_frames} frames the container declares"
        )


def iter_small_frames(path: str | Path, max_side: int) -> Iterator[np.ndarray]:
    """Every frame, BGR ``uint8``, downscaled so the longer side is at most ``max_side``.

    Used by scene detection (orientation does not matter there). A decode error mid-way
    raises ``VideoError`` naming the frame.
    """
    with _open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        n = 0
        try:
            for frame in c.decode(video=0):
                scale = min(1.0, max_side / max(frame.width, frame.height))
                w = max(2, round(frame.width * scale))
                h = max(2, round(frame.height * scale))
                yield frame.to_ndarray(width=w, height=h, format="bgr24")
                n += 1
        except av.error.FFmpegError as e:
            raise VideoError(f"corrupt or truncated: decode failed after frame {n}: {e}") from None


def _frame_index(frame: av.VideoFrame, stream: av.video.stream.VideoStream, fps: float) -> int:
    start = stream.start_time or 0
    return round(float((frame.pts - start) * stream.time_base) * fps)


def read_frames(
    path: str | Path,
    indices: Sequence[int],
    *,
    fps: float,
    size: tuple[int, int] | None = None,
) -> dict[int, np.ndarray]:
    """Decode just the frames at ``indices`` (display-oriented RGB ``uint8`` ``[H, W, 3]``).

    Seeks to the keyframe before the first wanted frame and decodes forward until the last
    one, converting only the wanted frames. ``size = (height, width)`` resizes them. Frames
    past the end of the stream are missing from the result.
    """
    wanted = sorted(set(int(i) for i in indices))
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    with _open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        first_t = wanted[0] / fps
        if first_t > 0.5:
            offset = int(first_t / float(s.time_base)) + (s.start_time or 0)
            c.seek(offset, stream=s, backward=True, any_frame=False)
        pending = set(wanted)
        seq = None
        try:
            for frame in c.decode(video=0):
                if frame.pts is None:
                    seq = 0 if seq is None else seq + 1
                    idx = seq
                else:
                    idx = _frame_index(frame, s, fps)
                if idx in pending:
                    img = frame.to_ndarray(format="rgb24")
                    img = _upright(img, _rotation_of(frame))
                    if size is not None:
                        img = resize_cover(img, size)
                    out[idx] = img
                    pending.discard(idx)
                    if not pending:
                        break
                if idx > wanted[-1]:
                    break
        except av.error.FFmpegError as e:
            raise VideoError(f"corrupt or truncated: decode failed near frame {idx}: {e}") from None
    return out


def resize_cover(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to cover ``size = (height, width)`` keeping aspect, then center-crop.

    Same rule as the official reference-image path (architecture reference B.7): the
    scale is the larger of the two axis ratios.
    """
    import cv2

    th, tw = size
    h, w = img.shape[:2]
    scale = max(th / h, tw / w)
    nh, nw = max(th, math.ceil(h * scale - 1e-6)), max(tw, math.ceil(w * scale - 1e-6))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    img = cv2.resize(img, (nw, nh), interpolation=interp)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(img[top : top + th, left : left + tw])


def write_video(
    path: str | Path,
    frames: np.ndarray | Sequence[np.ndarray],
    fps: float,
    *,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    rotation: int = 0,
    crf: int = 18,
) -> Path:
    """Encode RGB ``uint8`` frames ``[T, H, W, 3]`` to ``path``.

    ``rotation`` stores a counter-clockwise display rotation in the container: the frames
    given are stored as they are and a player (and ``read_frames``) rotates them.
    """
    from fractions import Fraction

    path = Path(path)
    frames = list(frames)
    if not frames:
        raise ValueError("write_video needs at least one frame")
    h, w = frames[0].shape[:2]
    if pix_fmt is None:
        pix_fmt = "yuv420p" if (h % 2 == 0 and w % 2 == 0) or codec != "libx264" else "yuv444p"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if codec.startswith("libx264"):
            s.options = {"crf": str(crf), "preset": "veryfast"}
        if rotation:
            s.set_display_rotation(rotation)
        for img in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), "rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


_COPY_TO_MP4 = {"h264", "hevc", "mpeg4", "av1"}


def extract_clip(
    path: str | Path, start: int, end: int, fps: float, out_stem: str | Path
) -> tuple[Path, str]:
    """Write frames ``[start, end)`` of ``path`` to ``out_stem`` + extension.

    Without re-encoding when possible: if ``start`` is a keyframe and ``end`` is a keyframe
    or the end of the stream, the packets in between are copied (a cut anywhere else would
    leave frames whose references are missing); otherwise the frames are decoded and
    re-encoded with H.264 (CRF 17), upright. Returns ``(path, "copy" | "reencode")``.
    The file is written under a temporary name and renamed into place.
    """
    import os

    out_stem = Path(out_stem)
    with _open(path) as c:
        s = c.streams.video[0]
        packets = [p for p in c.demux(s) if p.size and p.pts is not None]
        start_time = s.start_time or 0
        tb = float(s.time_base)

        def index(p) -> int:
            return round((p.pts - start_time) * tb * fps)

        keys = {index(p): i for i, p in enumerate(packets) if p.is_keyframe}
        n = len(packets)
        codec = s.codec_context.name
        copyable = start in keys and (end in keys or end >= n) and codec in _COPY_TO_MP4
        if copyable:
            first, last = keys[start], keys.get(end, n)
            ext = ".mp4"
            out_path = out_stem.with_suffix(ext)
            tmp = out_path.with_name(f".{out_path.name}.tmp{ext}")
            rotation = 0
            with av.open(str(tmp), "w") as o:
                os_ = o.add_stream_from_template(s)
                with _open(path) as c2:
                    f0 = next(c2.decode(video=0))
                    rotation = _rotation_of(f0)
                if rotation:
                    os_.set_display_rotation(rotation)
                base = packets[first].dts if packets[first].dts is not None else packets[first].pts
                for p in packets[first:last]:
                    p.pts -= base
                    if p.dts is not None:
                        p.dts -= base
                    p.stream = os_
                    o.mux(p)
            os.replace(tmp, out_path)
            return out_path, "copy"
    frames = read_frames(path, range(start, end), fps=fps)
    ordered = [frames[i] for i in range(start, end) if i in frames]
    out_path = out_stem.with_suffix(".mp4")
    tmp = out_path.with_name(f".{out_path.name}.tmp.mp4")
    write_video(tmp, ordered, fps, crf=17)
    os.replace(tmp, out_path)
    return out_path, "reencode"
