"""Scale pieces: batched model stages == one at a time, sharded encode on several workers,
band-indexed dedup == all pairs."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mugv_data import encode_clips
from mugv_data.config import DedupConfig
from mugv_data.stages.dedup import duplicate_groups
from mugv_data.stages.quality import hamming


def _shard_bytes(root):
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*.safetensors"))}


def test_two_workers_write_the_shards_of_one(encoded, small_curated, encoders, tmp_path):
    reference = encoded[0]
    vae, _, te, _ = encoders
    out = tmp_path / "two"
    kw = dict(vae=vae.encode, text_encoder=te, shard_size=2, world_size=2)
    encode_clips(small_curated.out_dir, out, rank=1, **kw)
    assert sorted(_shard_bytes(out)) == ["shard-00001.safetensors"]  # rank 1: odd shards
    assert not (out / "manifest.parquet").exists()  # merged only when every shard exists
    encode_clips(small_curated.out_dir, out, rank=0, **kw)
    assert _shard_bytes(out) == _shard_bytes(reference)  # bit-identical files
    assert pq.read_table(out / "manifest.parquet").equals(
        pq.read_table(reference / "manifest.parquet")
    )
    # Resumable: a lost shard is rewritten, the others are kept as they are.
    (out / "shard-00001.safetensors").unlink()
    (out / "manifest.parquet").unlink()

    def untouchable(*a, **k):
        raise AssertionError("shard 0 is complete and must not be re-encoded")

    encode_clips(small_curated.out_dir, out, rank=0, **{**kw, "vae": untouchable})
    encode_clips(small_curated.out_dir, out, rank=1, **kw)
    assert _shard_bytes(out) == _shard_bytes(reference)
    with pytest.raises(ValueError, match="rank < world_size"):
        encode_clips(small_curated.out_dir, out, rank=2, **kw)


def test_batched_aesthetics_equal_one_at_a_time(tiny_clip_model):
    from mugv_data.stages.aesthetic import AestheticPredictor

    clip_dir, head = tiny_clip_model
    pred = AestheticPredictor(str(clip_dir), str(head))
    rng = np.random.default_rng(1)
    clips = [
        [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(n)] for n in (3, 1, 2)
    ]
    single = [pred(c) for c in clips]
    assert len(set(single)) == 3
    assert pred.batch(clips) == pytest.approx(single, rel=1e-5, abs=1e-5)


def test_batched_raft_equals_one_at_a_time(tmp_path):
    pytest.importorskip("torchvision")
    from torchvision.models.optical_flow import raft_small

    from mugv_data.config import MotionConfig
    from mugv_data.stages.quality import motion, raft_motion_batch
    from mugv_data.synthetic import render_scene

    torch.manual_seed(0)
    model = raft_small(weights=None, progress=False).eval()
    torch.save(model.state_dict(), tmp_path / "r.pth")
    cfg = MotionConfig(backend="raft", raft_weights=str(tmp_path / "r.pth"))
    clips = []
    for seed, (h, w) in enumerate([(48, 64), (48, 64), (64, 48)]):
        f = render_scene(4, h, w, seed=seed, pan=(1.0 + seed, 0.5))
        clips.append([(f[0], f[1]), (f[2], f[3])])
    single = [motion(c, cfg) for c in clips]
    assert len({round(v, 6) for v in single}) == 3
    assert raft_motion_batch(clips, model) == pytest.approx(single, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl"])
def test_batched_vlm_answers_equal_one_at_a_time(kind):
    from test_models import _tiny_llava, _tiny_qwen2_vl

    from mugv_data.stages.vlm import VLMStage, parse_yes_no

    torch.manual_seed(3)
    model, proc = {"llava": _tiny_llava, "qwen2_vl": _tiny_qwen2_vl}[kind]()
    vlm = VLMStage(model, proc, max_new_tokens=4, caption_prompt="describe this clip .")
    rng = np.random.default_rng(2)
    # Different frame counts give prompts of different lengths: the batch is left-padded.
    clips = [
        [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(n)] for n in (1, 3, 2)
    ]
    single = [vlm.caption(c) for c in clips]
    assert vlm.caption_batch(clips) == single
    assert [a for _, a in vlm.artifact_batch(clips)] == [
        vlm.ask(c, vlm.artifact_prompt) for c in clips
    ]
    assert [parse_yes_no(a) for a in ("Yes, it does", "no.", "'yes'", "maybe", "", "nope")] == [
        True, False, True, None, None, None,
    ]  # fmt: skip


def test_unparsable_vlm_answers_follow_the_rule():
    from mugv_data import CurationConfig, Models
    from mugv_data._model_stages import ModelRunner

    def items():
        clip = {"clip_id": "v-000", "source": "default", "status": "pending", "caption": "",
                "stage": "", "reason": ""}  # fmt: skip
        frame = np.zeros((8, 8, 3), np.uint8)
        return [(clip, {"aesthetic": [], "vlm": [0], "raft": []}, {0: frame})]

    models = Models(artifact=lambda f: (None, "I cannot tell"), captioner=lambda f: "  ")
    for rule in ("drop", "keep"):
        cfg = CurationConfig.from_dict({"default": {"captions": {"on_unparsable": rule}}})
        (clip,) = ModelRunner(cfg, models).run(items())
        assert clip["artifact"] == "I cannot tell"
        if rule == "drop":
            assert (clip["status"], clip["stage"]) == ("dropped", "artifact")
            assert "neither yes nor no: 'I cannot tell'" in clip["reason"]
        else:
            assert clip["status"] == "passed" and clip["caption"] == ""
            assert clip["model_note"] == "captioner returned no text"
    cfg = CurationConfig.from_dict({"default": {"captions": {"on_unparsable": "drop"}}})
    (clip,) = ModelRunner(cfg, Models(captioner=lambda f: "")).run(items())
    assert (clip["stage"], clip["reason"]) == ("caption", "captioner returned no text")


def _all_pairs(clips, cfg):
    """The definition: union-find over every pair within the distance (independent code)."""
    n = len(clips)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            hi = [int(h, 16) for h in clips[i]["phash"]]
            hj = [int(h, 16) for h in clips[j]["phash"]]
            d = sum(hamming(a, b) for a, b in zip(hi, hj)) / len(hi)
            if d <= cfg.max_distance:
                parent[find(j)] = find(i)
    groups = {}
    for i in range(n):
        groups.setdefault(find(i), set()).add(clips[i]["clip_id"])
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def test_band_indexed_dedup_equals_all_pairs():
    rng = np.random.default_rng(0)
    cfg = DedupConfig(max_distance=6.0)
    clips = []
    for i in range(300):
        base = [int(x) for x in rng.integers(0, 2**63, 3)]
        clips.append(base)
        if i % 5 == 0:  # a near copy: flip up to 8 bits per frame (some within 6, some not)
            near = [h ^ sum(1 << int(b) for b in rng.choice(64, rng.integers(0, 9), replace=False))
                    for h in base]  # fmt: skip
            clips.append(near)
    rows = [{"clip_id": f"c{i:04d}", "phash": [f"{h:016x}" for h in hs], "duration_s": 2.0,
             "width": 64, "height": 48} for i, hs in enumerate(clips)]  # fmt: skip
    found = duplicate_groups(rows, cfg)
    groups = {}
    for dup, (keep, _d) in found.items():
        groups.setdefault(keep, {keep}).add(dup)
    expected = _all_pairs(rows, cfg)
    assert len(expected) > 20
    assert sorted(sorted(g) for g in groups.values()) == expected


def _reference_decisions(records, cfg):
    """The across-clip pass as plain dicts per clip (the form it had before the compact
    columns): dedup over clip-id order, buckets, tags and weights of the kept clips."""
    from mugv_data.stages.buckets import assign_bucket
    from mugv_data.stages.dedup import entity_tags, stratified_weights

    passed = sorted(
        (c for r in records for c in r["clips"] if c["status"] == "passed"),
        key=lambda c: c["clip_id"],
    )
    out = {}
    for cid, (keep, d) in duplicate_groups(passed, cfg.dedup).items():
        kind = "exact duplicate" if d == 0 else f"near duplicate (distance {d:.1f})"
        out[cid] = dict(status="dropped", stage="dedup", reason=f"{kind} of {keep}",
                        duplicate_of=keep, duplicate_distance=float(d))  # fmt: skip
    kept = []
    for c in passed:
        if c["clip_id"] in out:
            continue
        b = assign_bucket(c["width"], c["height"], c["duration_s"], cfg.buckets)
        if b is None:
            out[c["clip_id"]] = dict(status="dropped", stage="bucket",
                reason="fits no bucket (too small or too short for the bucket table)")  # fmt: skip
        else:
            out[c["clip_id"]] = b
            kept.append(c)
    tags = [entity_tags(c["caption"], cfg.balance) for c in kept]
    strata, weights = stratified_weights(tags, cfg.balance)
    for c, t, s, w in zip(kept, tags, strata, weights):
        out[c["clip_id"]].update(status="kept", tags=" ".join(t), stratum=s, weight=w)
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_compact_finalize_equals_per_clip_dicts(alpha):
    """``finalize`` keeps numpy columns per clip; its rows equal the dict-per-clip pass on
    records with near and exact copies, clips without hashes, untagged captions, clips
    that fit no bucket, and rows of 2 and 3 hashes."""
    import random
    from dataclasses import replace

    from mugv_data import CurationConfig, finalize

    cfg = CurationConfig.preset("synthetic")
    cfg = replace(cfg, balance=replace(cfg.balance, alpha=alpha))
    rng = random.Random(1)
    words = ["cat", "dog", "red", "car", "sea", "tree", "a", "the", "runs", "fast", "bird"]
    base = [[rng.getrandbits(64) for _ in range(3)] for _ in range(30)]
    records = {}
    for _ in range(250):
        key = f"k{rng.randrange(10**6):06d}"
        clips = []
        for k in range(rng.randrange(0, 4)):
            nf, b = rng.choice([3, 3, 3, 2]), rng.randrange(30)
            exact = rng.random() < 0.3
            noise = [0 if exact else rng.getrandbits(64) & rng.getrandbits(64)
                     & rng.getrandbits(64) & rng.getrandbits(64) for _ in range(nf)]  # fmt: skip
            copy = rng.random() < 0.6
            hs = [base[b][f] ^ noise[f] if copy else rng.getrandbits(64) for f in range(nf)]
            st = rng.choice(["passed"] * 4 + ["dropped"])
            w, h = rng.choice([(64, 48), (1280, 720), (720, 1280), (16, 16), (1920, 1080)])
            clips.append({
                "clip_id": f"{key}-{k:03d}", "video_key": key, "status": st,
                "stage": None if st == "passed" else "sharpness", "reason": None,
                "phash": [f"{x:016x}" for x in hs] if rng.random() > 0.05 else [],
                "duration_s": rng.choice([0.5, 2.0, 2.1, 2.4, 5.0]), "width": w, "height": h,
                "caption": " ".join(rng.choice(words) for _ in range(rng.randrange(0, 5))),
            })  # fmt: skip
        records[key] = {"key": key, "path": key, "source": "s", "status": "ok", "stage": None,
                        "reason": None, "probe": {}, "scenes": {}, "clips": clips}  # fmt: skip
    records = list(records.values())
    ref = _reference_decisions(records, cfg)
    rows, videos = finalize(records, cfg)
    assert len(videos) == len(records)
    statuses = {}
    for r in rows:
        if r["status"] == "dropped" and r["stage"] == "sharpness":
            continue
        want = ref[r["clip_id"]]
        assert {k: r[k] for k in want} == want, r["clip_id"]
        statuses[r["stage"] or "kept"] = statuses.get(r["stage"] or "kept", 0) + 1
    assert len(ref) == sum(statuses.values())
    assert all(statuses.get(k, 0) >= 5 for k in ("dedup", "bucket", "kept")), statuses
    assert any(r["duplicate_distance"] == 0 for r in rows if r["stage"] == "dedup")
