"""The curation stages on the synthetic set, whose ground truth is known by construction."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from mugv_data import CurationConfig, curate
from mugv_data._video import VideoError, probe, read_frames
from mugv_data.stages.buckets import assign_bucket
from mugv_data.stages.dedup import entity_tags, stratified_weights
from mugv_data.stages.scenes import split_scenes


def _rows(result):
    return {r["clip_id"]: r for r in result.table().to_pylist()}


def _video_rows(result):
    return {r["key"].rsplit("-", 1)[0]: r for r in pq.read_table(result.videos).to_pylist()}


def test_hard_cuts_within_one_frame(synthetic_set, synthetic_config):
    _root, truth = synthetic_set
    v = truth["cuts"]
    res = split_scenes(v.path, probe(v.path), synthetic_config.default.scenes)
    assert len(res.cuts) == len(v.cuts)
    for found, true in zip(res.cuts, v.cuts):
        assert abs(found - true) <= 1, (res.cuts, v.cuts)
    assert len(res.clips) == v.scene_count
    assert res.transitions == ()


@pytest.mark.parametrize("name", ["fade", "dissolve"])
def test_gradual_transitions_found(synthetic_set, synthetic_config, name):
    _root, truth = synthetic_set
    v = truth[name]
    res = split_scenes(v.path, probe(v.path), synthetic_config.default.scenes)
    assert res.cuts == ()  # the fade is not mistaken for (or split into) hard cuts
    assert len(res.transitions) == 1
    (s, e), (ts, te) = res.transitions[0], v.transitions[0]
    assert ts <= (s + e) // 2 < te  # the detected transition centre lies in the true one
    assert abs(s - ts) <= 2 and abs(e - te) <= 2, (res.transitions, v.transitions)
    # Two clips, neither containing transition frames.
    assert len(res.clips) == 2
    assert res.clips[0][1] <= ts + 1 and res.clips[1][0] >= te - 1


@pytest.mark.parametrize("name", ["good_00", "blurry", "static", "fast", "rotated"])
def test_plain_clips_have_no_false_boundaries(synthetic_set, synthetic_config, name):
    _root, truth = synthetic_set
    v = truth[name]
    res = split_scenes(v.path, probe(v.path), synthetic_config.default.scenes)
    assert res.cuts == () and res.transitions == () and res.clips == ((0, v.num_frames),)


def test_filters_reject_with_scores_recorded(curated):
    result, _truth = curated
    rows = _rows(result)
    by_video = {}
    for r in rows.values():
        by_video.setdefault(r["video_key"].rsplit("-", 1)[0], []).append(r)
    cfg = CurationConfig.preset("synthetic").default
    (blurry,) = by_video["blurry"]
    assert (blurry["status"], blurry["stage"]) == ("dropped", "sharpness")
    assert blurry["sharpness"] < cfg.sharpness.min and "sharpness" in blurry["reason"]
    (static,) = by_video["static"]
    assert (static["status"], static["stage"]) == ("dropped", "motion")
    assert static["motion"] < cfg.motion.min
    (fast,) = by_video["fast"]
    assert (fast["status"], fast["stage"]) == ("dropped", "motion")
    assert fast["motion"] > cfg.motion.max
    # Every scored clip has both scores, kept or not.
    for r in rows.values():
        if r["stage"] not in ("scenes",):
            assert r["sharpness"] is not None and r["motion"] is not None, r["clip_id"]


def test_duplicates_removed_and_nothing_else_lost(curated):
    result, truth = curated
    rows = _rows(result)
    by_video = {}
    for r in rows.values():
        by_video.setdefault(r["video_key"].rsplit("-", 1)[0], []).append(r)
    dup_family = ["dup_source", "dup_exact", "dup_near"]
    kept_family = [n for n in dup_family if by_video[n][0]["status"] == "kept"]
    assert len(kept_family) == 1
    keeper = by_video[kept_family[0]][0]["clip_id"]
    for n in dup_family:
        r = by_video[n][0]
        if n != kept_family[0]:
            assert (r["stage"], r["duplicate_of"]) == ("dedup", keeper)
    exact = [
        by_video[n][0] for n in ("dup_source", "dup_exact") if by_video[n][0]["stage"] == "dedup"
    ]
    assert exact and "exact duplicate" in exact[0]["reason"] and exact[0]["duplicate_distance"] == 0
    # Everything expected to survive does, with its scene count.
    for name, v in truth.items():
        if v.expect == "keep" and name not in dup_family:
            clips = by_video[name]
            assert all(c["status"] == "kept" for c in clips), (name, clips)
            assert len(clips) == v.scene_count, name
    expected_kept = sum(v.scene_count for n, v in truth.items() if v.expect == "keep")
    assert result.counts["kept"] == expected_kept


def test_corrupt_inputs_reported_and_run_goes_on(curated):
    result, truth = curated
    videos = _video_rows(result)
    assert videos["not_a_video"]["status"] == "failed"
    assert "not a readable video" in videos["not_a_video"]["reason"]
    assert videos["truncated"]["status"] == "failed" and videos["truncated"]["stage"] == "probe"
    assert videos["truncated_tail"]["status"] == "failed"
    assert videos["truncated_tail"]["reason"].startswith("truncated: decoded")
    assert result.counts["failed_videos"] == 3
    assert sum(v["status"] == "ok" for v in videos.values()) == len(truth) - 3


def test_odd_size_and_rotation(curated, synthetic_set):
    result, truth = curated
    videos = _video_rows(result)
    assert (videos["odd_size"]["width"], videos["odd_size"]["height"]) == (65, 49)
    rot = videos["rotated"]
    assert (rot["rotation"], rot["width"], rot["height"]) == (90, 48, 64)
    # Frames come out upright: portrait, and equal to the upright source up to coding noise.
    v = truth["rotated"]
    frame = read_frames(v.path, [0], fps=v.fps)[0]
    assert frame.shape == (64, 48, 3)
    assert abs(frame.mean() - v.extra["upright_first_frame_mean"]) < 3
    rows = [r for r in _rows(result).values() if r["video_key"].startswith("rotated")]
    assert rows[0]["aspect"] == "4:3" and rows[0]["bucket_height"] == 64


def test_probe_errors_are_specific(tmp_path):
    with pytest.raises(VideoError, match="file not found"):
        probe(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty file"):
        probe(tmp_path / "empty.mp4")


def test_per_source_thresholds(synthetic_set, tmp_path):
    _root, truth = synthetic_set
    sub = tmp_path / "in" / "archive"
    sub.mkdir(parents=True)
    (tmp_path / "in" / "web").mkdir()
    for name, dest in (("blurry", sub), ("good_00", tmp_path / "in" / "web")):
        (dest / truth[name].path.name).write_bytes(truth[name].path.read_bytes())
    base = CurationConfig.preset("synthetic")
    cfg = CurationConfig.from_dict({"sources": {"archive": {"sharpness": {"min": 10}}}}, base=base)
    res = curate(tmp_path / "in", tmp_path / "out", cfg)
    rows = {r["source"]: r for r in res.table().to_pylist()}
    assert rows["archive"]["status"] == "kept"  # blurry, but the archive source allows it
    assert rows["web"]["status"] == "kept"


def test_buckets_follow_the_dit_rules():
    cfg = CurationConfig().buckets
    assert cfg.frame_counts() == (49, 73, 97, 121) and all(f % 8 == 1 for f in cfg.frame_counts())
    # 1080p landscape 6 s -> 720p, 9:16 (H:W), 5 s bucket.
    b = assign_bucket(1920, 1080, 6.0, cfg)
    assert b["bucket"] == "720p_9:16_121f" and (b["bucket_height"], b["bucket_width"]) == (
        720,
        1280,
    )
    # 480p portrait 2.5 s -> 360p tier, 16:9 (portrait), 2 s.
    b = assign_bucket(480, 854, 2.5, cfg)
    assert b["bucket"] == "360p_16:9_49f" and b["bucket_height"] % 16 == 0
    assert assign_bucket(1920, 1080, 1.5, cfg) is None  # too short
    assert assign_bucket(320, 240, 3.0, cfg) is None  # too small without upscaling
    for tier in cfg.sizes().values():
        for h, w in tier.values():
            assert h % 16 == 0 and w % 16 == 0


def test_weights_equalise_strata_with_alpha_one():
    cfg = CurationConfig().balance
    caps = ["A red circle"] * 6 + ["A blue square"] * 2 + ["A red circle and a dog"]
    tags = [entity_tags(c, cfg) for c in caps]
    assert tags[-1] == ["red", "circle", "dog"]
    from dataclasses import replace

    strata, w = stratified_weights(tags, replace(cfg, alpha=1.0))
    assert strata[-1] == "dog" and np.isclose(np.mean(w), 1.0)
    totals = {}
    for s, x in zip(strata, w):
        totals[s] = totals.get(s, 0) + x
    assert np.allclose(list(totals.values()), next(iter(totals.values())))
    strata, w = stratified_weights(tags, cfg)  # alpha 0.5: rare up-weighted, not equalised
    assert w[-1] > w[6] > w[0]


def test_clip_extraction_copies_packets_where_possible(synthetic_set, synthetic_config, tmp_path):
    import av

    from mugv_data._video import extract_clip

    _root, truth = synthetic_set

    def decode(p):
        with av.open(str(p)) as c:
            return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]

    src = decode(truth["cuts"].path)
    # The encoder put keyframes at the hard cuts: the middle scene is copied bit-exactly.
    path, mode = extract_clip(truth["cuts"].path, 36, 72, 24.0, tmp_path / "mid")
    assert mode == "copy" and all(
        np.array_equal(a, b) for a, b in zip(decode(path), src[36:72], strict=True)
    )
    # A start inside a GOP needs re-encoding: same frame count, close pixels.
    path, mode = extract_clip(truth["good_00"].path, 10, 40, 24.0, tmp_path / "gop")
    plain = decode(truth["good_00"].path)
    out = decode(path)
    assert mode == "reencode" and len(out) == 30
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(out, plain[10:40])]) < 4
    # Rotation metadata survives a packet copy.
    path, mode = extract_clip(truth["rotated"].path, 0, 72, 24.0, tmp_path / "rot")
    info = probe(path)
    assert mode == "copy" and (info.rotation, info.width, info.height) == (90, 48, 64)
    # In the pipeline: kept clips only, named in the manifest.
    cfg = CurationConfig.from_dict({"extract_clips": True}, base=synthetic_config)
    sub = tmp_path / "in"
    sub.mkdir()
    for name in ("cuts", "blurry"):
        (sub / truth[name].path.name).write_bytes(truth[name].path.read_bytes())
    res = curate(sub, tmp_path / "out", cfg)
    rows = res.table().to_pylist()
    files = sorted(r["clip_file"] for r in rows if r["clip_file"])
    assert len(files) == 3 and all(r["clip_file"] is None for r in rows if r["status"] != "kept")
    assert [len(decode(res.out_dir / f)) for f in files] == [36, 36, 36]


def test_manifest_input_with_captions_and_sources(synthetic_set, synthetic_config, tmp_path):
    root, truth = synthetic_set
    csv = tmp_path / "inputs.csv"
    rel = [truth[n].path.relative_to(root) for n in ("good_00", "good_01")]
    (tmp_path / "v").symlink_to(root)
    csv.write_text(
        f"path,caption,source\nv/{rel[0]},a caption from the manifest,web\nv/{rel[1]},,archive\n"
    )
    res = curate(csv, tmp_path / "out", synthetic_config)
    rows = sorted(res.table().to_pylist(), key=lambda r: r["source"])
    assert [r["source"] for r in rows] == ["archive", "web"]
    assert rows[1]["caption"] == "a caption from the manifest"
    assert rows[0]["caption"] == truth["good_01"].caption  # falls back to the side-car
    with pytest.raises(FileNotFoundError, match="input not found"):
        curate(tmp_path / "missing", tmp_path / "o2", synthetic_config)
