"""Fades through black and white of several lengths and speeds, and dissolves: every
transition frame is excluded from every clip, and little else is lost."""

from __future__ import annotations

import numpy as np
import pytest

from mugv_data import CurationConfig
from mugv_data._video import probe, write_video
from mugv_data.stages.scenes import split_scenes
from mugv_data.synthetic import render_fade, render_scene

_N = 36  # pure frames on each side of a transition (1.5 s at 24 fps, above min_clip_s)
_CASES = [
    pytest.param(kind, colour, out_len, in_len, id=f"{kind}-{name}-{out_len}-{in_len}")
    for kind, colour, name in (("fade", 0, "black"), ("fade", 255, "white"))
    for out_len, in_len in ((3, 3), (6, 6), (12, 12), (24, 24), (4, 20), (20, 4))
] + [pytest.param("dissolve", None, n, n, id=f"dissolve-{n}") for n in (6, 12, 24)]


def _video(tmp_path, kind, colour, out_len, in_len, seed):
    if kind == "fade":
        a = render_scene(_N + out_len, 48, 64, seed=seed)
        b = render_scene(_N + in_len, 48, 64, seed=seed + 1)
        frames, span = render_fade(a, b, out_len, in_len, colour)
    else:  # cross-dissolve of two moving scenes over out_len frames
        a = render_scene(_N + out_len, 48, 64, seed=seed)
        b = render_scene(_N + out_len, 48, 64, seed=seed + 1)
        w = ((np.arange(out_len) + 1) / (out_len + 1))[:, None, None, None]
        mix = np.clip(a[_N:] * (1 - w) + b[:out_len] * w, 0, 255).astype(np.uint8)
        frames, span = np.concatenate([a[:_N], mix, b[out_len:]]), (_N, _N + out_len)
    path = write_video(tmp_path / f"{kind}.mp4", frames, 24.0)
    return path, span, len(frames)


@pytest.mark.parametrize(("kind", "colour", "out_len", "in_len"), _CASES)
def test_transition_frames_are_excluded_from_every_clip(tmp_path, kind, colour, out_len, in_len):
    seed = 40 + out_len + 3 * in_len
    path, (ts, te), n = _video(tmp_path, kind, colour, out_len, in_len, seed)
    cfg = CurationConfig.preset("synthetic").default.scenes
    res = split_scenes(path, probe(path), cfg)
    assert res.cuts == ()
    assert len(res.transitions) == 1, res.transitions
    (s, e) = res.transitions[0]
    assert s <= ts and e >= te, (res.transitions, (ts, te))  # covers every faded frame
    assert ts - s <= 4 and e - te <= 4, (res.transitions, (ts, te))  # and little more
    for cs, ce in res.clips:
        assert ce <= ts or cs >= te, (res.clips, (ts, te))
    assert res.clips == ((0, s), (e, n))


def test_low_contrast_scene_after_a_cut_is_not_a_fade(tmp_path):
    busy = render_scene(_N, 48, 64, seed=7, contrast=40.0)
    flat = render_scene(_N, 48, 64, seed=8, contrast=6.0)
    path = write_video(tmp_path / "cut.mp4", np.concatenate([busy, flat]), 24.0)
    res = split_scenes(path, probe(path), CurationConfig.preset("synthetic").default.scenes)
    assert res.transitions == ()


@pytest.mark.parametrize("where", ["fade-in-at-start", "fade-out-at-end"])
def test_fade_at_the_video_ends_is_excluded(tmp_path, where):
    a = render_scene(_N + 12, 48, 64, seed=3)
    b = render_scene(_N + 12, 48, 64, seed=4)
    frames, (ts, te) = render_fade(a, b, 12, 12)
    n = len(a)
    if where == "fade-in-at-start":  # b fading in from black: frames [0, 12) are faded
        frames, (ts, te), clip = frames[n:], (0, te - n), (te - n, len(b))
    else:  # a fading out to black: frames [ts, n) are faded
        frames, te, clip = frames[:n], n, (0, ts)
    path = write_video(tmp_path / f"{where}.mp4", frames, 24.0)
    res = split_scenes(path, probe(path), CurationConfig.preset("synthetic").default.scenes)
    assert len(res.transitions) == 1, res.transitions
    (s, e) = res.transitions[0]
    assert s <= ts and e >= te and ts - s <= 4 and e - te <= 4, (res.transitions, (ts, te))
    expected = ((0, s),) if where == "fade-out-at-end" else ((e, len(b)),)
    assert res.clips == expected
    assert abs(res.clips[0][0] - clip[0]) <= 4 and abs(res.clips[0][1] - clip[1]) <= 4
