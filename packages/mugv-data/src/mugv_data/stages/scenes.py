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

Fades through black, white or any flat colour are found by a second detector that does
not depend on one threshold for every fade length and speed: a fade scales a scene's
contrast towards zero, so it shows as a dip of the frame's grey-level standard deviation
to near zero (below 8 % of the highest contrast within a second) with the contrast
rising on each side. A linear fade makes each side a straight ramp (contrast = alpha x
the scene's), so each ramp is walked outward from the dip's bottom while the contrast
still grows by at least 40 % of the ramp's mean slope so far (and by more than 0.5 %):
the ramp ends where the slope collapses to the scene's own drift, whatever the fade's
length or speed. The span runs from the first frame of the falling ramp to the last frame
of the rising one, so slow and fast, symmetric and lopsided fades lose their faded frames
(to within the scene's own contrast drift, a frame or two). A fade span replaces the
colour/structure span it overlaps (which only approximates the ends).

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


_FADE_DIP = 0.25
"""A frame is in a contrast dip when its std is below this share of the local maximum."""
_FADE_FLOOR = 0.08
"""A dip is a fade only if it reaches this share (a nearly flat frame)."""
_FADE_RISE = 0.005
"""Ramps are walked outward only while the contrast grows by more than this per frame..."""
_FADE_SLOPE = 0.4
"""...and by at least this share of the ramp's mean slope from the dip's bottom."""


def _walk_ramp(sig: np.ndarray, m: int, step: int) -> int:
    """From the dip's bottom ``m``, the last frame of the ramp rising in direction ``step``."""
    t = m
    while 0 <= t + step < len(sig):
        rise = sig[t + step] - sig[t]
        slope = (sig[t] - sig[m]) / abs(t - m) if t != m else 0.0
        if rise <= max(sig[t] * _FADE_RISE + 1e-6, _FADE_SLOPE * slope):
            break
        t += step
    return t


def _fade_spans(sig: np.ndarray, fps: float) -> list[tuple[int, int]]:
    """Fades through a flat frame, as half-open spans, from per-frame grey std ``sig``."""
    n = len(sig)
    if n < 3:
        return []
    w = max(3, round(fps))
    pad = np.pad(sig, w, mode="edge")
    ref = np.lib.stride_tricks.sliding_window_view(pad, 2 * w + 1).max(axis=1)
    dip = sig < _FADE_DIP * ref
    spans: list[tuple[int, int]] = []
    t = 0
    while t < n:
        if not dip[t]:
            t += 1
            continue
        a = t
        while t < n and dip[t]:
            t += 1
        b = t - 1
        low = sig[a : b + 1]
        if low.min() > _FADE_FLOOR * ref[a : b + 1].max():
            continue  # a low-contrast scene next to a busy one, not a fade
        # The bottom may be several flat frames: walk left from the first, right from the last.
        s = _walk_ramp(sig, a + int(np.argmin(low)), -1)
        e = _walk_ramp(sig, b - int(np.argmin(low[::-1])), +1)
        # s and e are the first frames (walking outward) no darker than the scene: the
        # faded frames are between them; at the video's ends the ramp's frames are faded.
        start = s if s == 0 and sig[0] < _FADE_DIP * ref[0] else s + 1
        end = e + 1 if e == n - 1 and sig[-1] < _FADE_DIP * ref[-1] else e
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, max(end, start + 1)))
        t = max(t, e)
    return spans


def _merge_spans(
    gradual: list[tuple[int, int]], fades: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Fade spans replace the colour/structure spans they overlap."""
    keep = [g for g in gradual if not any(g[0] < f[1] + 2 and f[0] < g[1] + 2 for f in fades)]
    return sorted(keep + fades)


def split_scenes(path: str | Path, info: VideoInfo, cfg: SceneConfig) -> SceneResult:
    """Decode the video once (downscaled) and return its cuts, transitions and clips.

    Raises ``VideoError`` if decoding fails part-way or the file is truncated.
    """
    fps = info.fps
    k = max(2, round(cfg.gradual_window_s * fps))
    detector = _CutDetector(cfg.cut_threshold, max(1, round(0.25 * fps)), fps)
    cuts: list[int] = []
    scores: list[float] = []
    contrast: list[float] = []
    window: deque = deque(maxlen=k + 1)
    n = 0
    for n, bgr in enumerate(iter_small_frames(path, cfg.analysis_max_side)):
        cuts += detector.feed(n, bgr)
        if cfg.gradual:
            window.append(_features(bgr))
            scores.append(transition_score(window[-1], window[0]) if len(window) > k else 0.0)
            contrast.append(float(bgr.mean(axis=2).std()))
    num_frames = n + 1 if scores or cuts or n else 0
    if num_frames == 0:
        from mugv_data._video import VideoError

        raise VideoError("no frame decodes")
    cuts += detector.finish(num_frames)
    check_complete(num_frames, info)
    cuts = sorted({c for c in cuts if 0 < c < num_frames})
    transitions = []
    if cfg.gradual:
        fades = _fade_spans(np.asarray(contrast), fps)
        transitions = _merge_spans(_gradual_spans(np.asarray(scores), k, cfg, cuts), fades)
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
