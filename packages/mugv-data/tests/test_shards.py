"""Shard writer and reader: bit-exact round trip, resume, and clear errors on damage."""

from __future__ import annotations

import pickle

import pytest
import torch

from mugv_data import ShardError, ShardWriter, open_shards


def _sample(i: int, *, s_len: int | None = None) -> dict:
    g = torch.Generator().manual_seed(i)
    t = 1 + i % 3
    return {
        "id": f"clip-{i:03d}",
        "latent": torch.randn(4, t, 3, 5, generator=g),
        "text": torch.randn(s_len or 2 + i % 4, 7, generator=g),
        "caption": f"caption {i}",
        "fps": 24.0,
        "num_frames": 8 * (t - 1) + 1,
        "height": 24,
        "width": 40,
        "bucket": "debug_3:5_9f",
        "weight": 1.0 + i / 10,
        "source": "synthetic",
        "sharpness": 500.0 + i,
    }


def test_round_trip_is_bit_exact(tmp_path):
    samples = [_sample(i) for i in range(7)]
    with ShardWriter(tmp_path, shard_size=3) as w:
        for s in samples:
            w.write(s)
    shards = sorted(p.name for p in tmp_path.glob("shard-*.safetensors"))
    assert shards == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]
    ds = open_shards(tmp_path)
    assert len(ds) == 7
    for s, got in zip(samples, ds, strict=True):
        assert torch.equal(got["latent"], s["latent"]) and got["latent"].dtype == torch.float32
        assert torch.equal(got["text"], s["text"])
        for k in ("id", "caption", "fps", "num_frames", "height", "width", "bucket", "source"):
            assert got[k] == s[k], k
        assert got["weight"] == pytest.approx(s["weight"])
        assert got["sharpness"] == s["sharpness"]
    assert torch.equal(ds[-1]["latent"], samples[-1]["latent"])
    m = ds.manifest.to_pydict()
    assert m["shard"][3] == "shard-00001.safetensors" and m["index"][3] == 0
    assert m["latent_shape"][4] == list(samples[4]["latent"].shape)
    assert m["text_len"][5] == samples[5]["text"].shape[0]
    # Picklable for DataLoader workers, and still reads after unpickling.
    ds2 = pickle.loads(pickle.dumps(ds))
    assert torch.equal(ds2[5]["text"], samples[5]["text"])


def test_same_samples_same_bytes_and_resume(tmp_path):
    samples = [_sample(i) for i in range(8)]
    full, part = tmp_path / "full", tmp_path / "part"
    with ShardWriter(full, shard_size=3) as w:
        for s in samples:
            w.write(s)
    # Interrupted writer: an exception leaves only the complete shards.
    with pytest.raises(RuntimeError), ShardWriter(part, shard_size=3) as w:
        for s in samples[:5]:
            w.write(s)
        raise RuntimeError("killed")
    assert sorted(p.name for p in part.iterdir()) == ["shard-00000.safetensors"]
    with ShardWriter(part, shard_size=3, resume=True) as w:
        assert w.done_ids == {s["id"] for s in samples[:3]}
        for s in samples:
            if s["id"] not in w.done_ids:
                w.write(s)
    for f in sorted(full.iterdir()):
        assert (part / f.name).read_bytes() == f.read_bytes(), f.name


def test_damage_is_reported_with_the_file_name(tmp_path):
    with ShardWriter(tmp_path, shard_size=2) as w:
        for i in range(4):
            w.write(_sample(i, s_len=3))
    ds = open_shards(tmp_path)
    # Flip one byte inside sample 3's tensor data: the checksum catches it.
    p1 = tmp_path / "shard-00001.safetensors"
    data = bytearray(p1.read_bytes())
    data[-5] ^= 0xFF
    p1.write_bytes(bytes(data))
    assert torch.equal(ds[0]["text"], _sample(0, s_len=3)["text"])
    with pytest.raises(ShardError, match=r"shard-00001.safetensors"):
        ds[3]
    # Truncated header and missing file.
    p1.write_bytes(bytes(data[:20]))
    with pytest.raises(ShardError, match=r"shard-00001.safetensors"):
        open_shards(tmp_path)[2]
    p1.unlink()
    with pytest.raises(ShardError, match=r"missing shard file .*shard-00001"):
        open_shards(tmp_path)[2]
    with pytest.raises(ShardError, match=r"no manifest.parquet"):
        open_shards(tmp_path / "nowhere")


def test_bad_samples_are_rejected_with_the_fix(tmp_path):
    with ShardWriter(tmp_path) as w:
        bad = _sample(0)
        del bad["fps"]
        with pytest.raises(ValueError, match=r"lacks \['fps'\]"):
            w.write(bad)
        with pytest.raises(ValueError, match=r"valid caption tokens"):
            w.write({**_sample(1), "text": torch.zeros(1, 3, 7)})
        w.write(_sample(2))
        with pytest.raises(ValueError, match=r"duplicate sample id"):
            w.write(_sample(2))
    with pytest.raises(FileExistsError, match=r"resume=True"):
        ShardWriter(tmp_path)
