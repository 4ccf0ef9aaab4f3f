"""Scene split: PySceneDetect for hard cuts, a colour/structure detector for fades.

Hard cuts: PySceneDetect's ``ContentDetector`` (mean HSV change between consecutive
frames), as in the paper (reference notes §1.1).

Gradual transitions (fades, dissolves) follow the idea of Koala-36M's Color-Struct SVM,
which the paper adds to PySceneDetect: compare each frame with the frame ``k`` frames
earlier (k = ``gradual_window_s`` x fps) on two features,

    colour:    1 - intersection of the normalised 8x8x8 BGR histograms      (0..1)
    structure: relative change of Canny edge density |d_t - d_{t-k}| / max   (0..1)

combine them linearly, ``score = 0.8 colour + 0.2 structure`` (fixed weights standing in
for the trained SVM), and flag frames whose score exceeds both ``gradual_threshold`` and a
temporal threshold ``median + gradual_sigma x 1.4826 MAD`` of the video's scores (the
"3 sigma" rule). A transition over frames [s, e) raises the lag-k score over (s, e + k),
so a run of flagged frames [a, b] maps back to the span [a - 1, b - k + 1]. Runs that
start at a hard cut are that cut's echo and are ignored; hard cuts inside a gradual span
are merged into it.

Scenes are the spans between cuts and transitions (transition frames belong to no clip);
scenes shorter than ``min_clip_s`` are dropped and longer ones cut into clips of at most
``max_clip_s``.
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mugv_data._video import VideoInfo, check_complete, iter_small_frames
from mugv_data.config import SceneConfig

_COLOUR_WEIGHT, _STRUCT_WEIGHT = 0.8, 0.2


@dataclass(frozen=True)
class SceneResult:
    """What scene detection found in one video (frame indices, half-open spans)."""

    num_frames: int
    cuts: tuple[int, ...]
    transitions: tuple[tuple[int, int], ...]
    clips: tuple[tuple[int, int], ...]
    dropped: tuple[tuple[int, int, str], ...] = field(default=())
    """Scenes not turned into clips: (start, end, reason)."""


class _CutDetector:
    """PySceneDetect ``ContentDetector`` fed frame by frame (0.6 and 0.7 APIs)."""

    def __init__(self, threshold: float, min_len: int, fps: float) -> None:
        from scenedetect import ContentDetector

        self.det = ContentDetector(threshold=threshold, min_scene_len=min_len)
        self.fps = fps
        self._timecodes = "timecode" in inspect.signature(self.det.process_frame).parameters

    def _arg(self, idx: int):
        if self._timecodes:
            from scenedetect import FrameTimecode

            return FrameTimecode(idx, self.fps)
        return idx

    @staticmethod
    def _frames(cuts) -> list[int]:
        return [int(getattr(c, "frame_num", c)) for c in cuts]

    def feed(self, idx: int, bgr: np.ndarray) -> list[int]:
        return self._frames(self.det.process_frame(self._arg(idx), bgr))

    def finish(self, idx: int) -> list[int]:
        return self._frames(self.det.post_process(self._arg(idx)))


def _features(bgr: np.ndarray) -> tuple[np.ndarray, float]:
    import cv2

    hist = cv2.calcHist([bgr], [0, 1, 2], None, [8, 8, 8], [0, 256] * 3).ravel()
    hist /= max(hist.sum(), 1.0)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    density = float((cv2.Canny(grey, 50, 150) > 0).mean())
    return hist, density


def transition_score(a: tuple[np.ndarray, float], b: tuple[np.ndarray, float]) -> float:
    """The linear colour/structure decision value between two frames' features."""
    colour = 1.0 - float(np.minimum(a[0], b[0]).sum())
    structure = abs(a[1] - b[1]) / max(a[1], b[1], 1e-3)
    return _COLOUR_WEIGHT * colour + _STRUCT_WEIGHT * min(1.0, structure)


def _gradual_spans(
    scores: np.ndarray, k: int, cfg: SceneConfig, cuts: list[int]
) -> list[tuple[int, int]]:
    valid = scores[k:]
    if valid.size == 0:
        return []
    med = float(np.median(valid))
    mad = float(np.median(np.abs(valid - med))) * 1.4826
    thr = max(cfg.gradual_threshold, med + cfg.gradual_sigma * mad)
    flagged = scores > thr
    flagged[:k] = False
    spans = []
    t, n = k, len(scores)
    min_run = max(2, k // 2)
    while t < n:
        if not flagged[t]:
            t += 1
            continue
        a = t
        while t < n and flagged[t]:
            t += 1
        b = t - 1
        if any(a - 1 <= c <= a + 1 for c in cuts) or b - a + 1 < min_run:
            continue  # the lag-k echo of a hard cut, or noise
        s, e = max(0, a - 1), min(n, b - k + 2)
        if e <= s:
            s, e = max(0, (a + b - k) // 2), min(n, (a + b - k) // 2 + 1)
        spans.append((s, e))
    return spans


def split_scenes(path: str | Path, info: VideoInfo, cfg: SceneConfig) -> SceneResult:
    """Decode the video once (downscaled) and return its cuts, transitions and clips.

    Raises ``VideoError`` if decoding fails part-way or the file is truncated.
    """
    fps = info.fps
    k = max(2, round(cfg.gradual_window_s * fps))
    detector = _CutDetector(cfg.cut_threshold, max(1, round(0.25 * fps)), fps)
    cuts: list[int] = []
    scores: list[float] = []
    window: deque = deque(maxlen=k + 1)
    n = 0
    for n, bgr in enumerate(iter_small_frames(path, cfg.analysis_max_side)):
        cuts += detector.feed(n, bgr)
        if cfg.gradual:
            window.append(_features(bgr))
            scores.append(transition_score(window[-1], window[0]) if len(window) > k else 0.0)
    num_frames = n + 1 if scores or cuts or n else 0
    if num_frames == 0:
        from mugv_data._video import VideoError

        raise VideoError("no frame decodes")
    cuts += detector.finish(num_frames)
    check_complete(num_frames, info)
    cuts = sorted({c for c in cuts if 0 < c < num_frames})
    transitions = _gradual_spans(np.asarray(scores), k, cfg, cuts) if cfg.gradual else []
    cuts = [c for c in cuts if not any(s - 1 <= c <= e for s, e in transitions)]

    # Scene spans between boundaries; transition frames belong to no scene.
    bounds = sorted([(c, c) for c in cuts] + transitions)
    scenes, start = [], 0
    for s, e in bounds:
        if s > start:
            scenes.append((start, s))
        start = max(start, e)
    if start < num_frames:
        scenes.append((start, num_frames))

    min_len = round(cfg.min_clip_s * fps)
    max_len = max(min_len, int(cfg.max_clip_s * fps))
    clips, dropped = [], []
    for s, e in scenes:
        if e - s < min_len:
            dropped.append((s, e, f"scene shorter than min_clip_s={cfg.min_clip_s}s"))
            continue
        while e - s > max_len:
            clips.append((s, s + max_len))
            s += max_len
        if e - s >= min_len:
            clips.append((s, e))
        elif e > s:
            dropped.append((s, e, f"tail shorter than min_clip_s={cfg.min_clip_s}s"))
    return SceneResult(
        num_frames=num_frames,
        cuts=tuple(cuts),
        transitions=tuple(transitions),
        clips=tuple(clips),
        dropped=tuple(dropped),
    )
