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
