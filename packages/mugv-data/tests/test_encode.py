"""Pre-encoding into shards with the real debug VAE and an offline text encoder."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import av
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from mugv_data import export_official_csv, import_official_csv, open_shards
from mugv_data.stages.encode import clip_pixels


def test_shards_hold_encoder_outputs_unchanged(encoded, small_curated, encoders):
    out, rec_vae, rec_te = encoded
    vae = encoders[0]
    ds = open_shards(out)
    kept = sorted(
        (r for r in small_curated.table().to_pylist() if r["status"] == "kept"),
        key=lambda r: r["clip_id"],
    )
    assert [s["id"] for s in ds] == [r["clip_id"] for r in kept] and len(ds) == 5
    for s, row, z, (emb, mask) in zip(ds, kept, rec_vae.outputs, rec_te.outputs, strict=True):
        assert torch.equal(s["latent"], z[0].float())  # bit-exact
        assert torch.equal(s["text"], emb[0][mask[0]].float())
        assert s["text"].shape == (int(mask.sum()), 384)
        assert tuple(s["latent"].shape) == vae.latent_shape(
            s["num_frames"], s["height"], s["width"]
        )
        assert (s["height"], s["width"], s["num_frames"]) == (
            row["bucket_height"], row["bucket_width"], row["bucket_frames"],
        )  # fmt: skip
        assert s["bucket"] == row["bucket"] and s["caption"] == row["caption"] and s["fps"] == 16.0
        assert s["weight"] == pytest.approx(row["weight"]) and s["sharpness"] == row["sharpness"]
    rotated = next(s for s in ds if s["id"].startswith("rotated"))
    assert (rotated["height"], rotated["width"]) == (64, 48)  # portrait after rotation


def test_clip_pixels_are_the_resampled_source_frames(small_curated):
    row = next(
        r
        for r in small_curated.table().to_pylist()
        if r["clip_id"].startswith("cuts") and r["start_frame"] > 0
    )
    row = {**row, "bucket_fps": 16.0}
    pixels = clip_pixels(row)  # bucket 48x64 = source size: no resize
    assert pixels.shape == (3, row["bucket_frames"], 48, 64)
    with av.open(row["path"]) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    # 24 fps source -> 16 fps: every 1.5 source frames, from the clip's first frame.
    expect = np.stack(
        [frames[row["start_frame"] + round(j * 1.5)] for j in range(row["bucket_frames"])]
    )
    got = ((pixels.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(got, expect)


@pytest.mark.slow  # two fresh processes import torch + transformers and load the encoders
def test_encode_killed_and_resumed_writes_the_same_shards(
    encoded, small_curated, encoders, tmp_path
):
    reference = encoded[0]
    _, vae_dir, _, te_path = encoders
    out = tmp_path / "shards"
    cmd = [
        sys.executable, "-m", "mugv_data.cli", "encode", str(small_curated.out_dir),
        "--vae", str(vae_dir), "--text-encoder", te_path, "--text-max-length", "32",
        "--shards", str(out), "--shard-size", "2", "--quiet",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    try:
        while not (out / "shard-00000.safetensors").exists():
            if proc.poll() is not None:
                pytest.fail(f"encode ended before the kill: {proc.stderr.read()[-2000:]!r}")
            assert time.time() - t0 < 240, "encode made no progress"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "manifest.parquet").exists()
    subprocess.run(cmd, check=True, capture_output=True)
    names = sorted(p.name for p in reference.iterdir() if p.name.startswith("shard-"))
    assert names == sorted(p.name for p in out.iterdir() if p.name.startswith("shard-"))
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert pq.read_table(out / "manifest.parquet").equals(
        pq.read_table(reference / "manifest.parquet")
    )


def test_official_csv_round_trip(encoded, tmp_path):
    shards = encoded[0]
    csv_path = export_official_csv(shards, tmp_path / "official", text_length=32)
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "sample_id,source,latent_path,text_feat_path"
    sid = lines[1].split(",")[0]
    feats = torch.load(tmp_path / "official" / "text" / f"{sid}.pt", weights_only=True)
    assert feats["y"].shape == (1, 1, 32, 384) and feats["mask"].shape == (1, 32)
    back = open_shards(import_official_csv(csv_path, tmp_path / "back"))
    orig = open_shards(shards)
    assert len(back) == len(orig)
    for a, b in zip(orig, back, strict=True):
        assert a["id"] == b["id"]
        assert torch.equal(a["latent"], b["latent"]) and torch.equal(a["text"], b["text"])
        assert (b["height"], b["width"]) == (a["height"], a["width"])
        assert b["num_frames"] == 8 * (a["latent"].shape[1] - 1) + 1


def test_official_real_source_is_normalised(tmp_path):
    from mugv_vae import LATENT_SCALE, LATENT_SHIFT

    z = torch.randn(24, 2, 3, 4)
    (tmp_path / "latents").mkdir()
    (tmp_path / "text").mkdir()
    torch.save(z[None], tmp_path / "latents" / "a.pt")
    y = torch.zeros(1, 1, 300, 8)
    y[0, 0, :5] = torch.randn(5, 8)
    mask = torch.zeros(1, 300, dtype=torch.bool)
    mask[0, :5] = True
    torch.save({"y": y, "mask": mask}, tmp_path / "text" / "a.pt")
    (tmp_path / "train.csv").write_text(
        "sample_id,source,latent_path,text_feat_path\na,real,latents/a.pt,text/a.pt\n"
    )
    s = open_shards(import_official_csv(tmp_path / "train.csv", tmp_path / "out"))[0]
    shift = torch.as_tensor(LATENT_SHIFT, dtype=torch.float32).view(-1, 1, 1, 1)
    scale = torch.as_tensor(LATENT_SCALE, dtype=torch.float32).view(-1, 1, 1, 1)
    torch.testing.assert_close(s["latent"], (z - shift) / scale)
    assert torch.equal(s["text"], y[0, 0, :5])
    assert (s["height"], s["width"], s["num_frames"]) == (24, 32, 9)


def test_encode_refuses_shards_of_another_clip_list(encoded, small_curated, tmp_path):
    import shutil

    from mugv_data import encode_clips

    shards = tmp_path / "shards"
    shards.mkdir()
    shutil.copyfile(encoded[0] / "shard-00000.safetensors", shards / "shard-00000.safetensors")
    curated = tmp_path / "curated"
    curated.mkdir()
    table = small_curated.table()
    first = min(r["clip_id"] for r in table.to_pylist() if r["status"] == "kept")
    pq.write_table(
        table.filter(pc.not_equal(table["clip_id"], first)), curated / "manifest.parquet"
    )
    shutil.copyfile(small_curated.out_dir / "config.json", curated / "config.json")

    def unused(*args, **kwargs):
        raise AssertionError("nothing may be encoded")

    with pytest.raises(ValueError, match="different clip list"):
        encode_clips(curated, shards, vae=unused, text_encoder=unused, shard_size=2)
