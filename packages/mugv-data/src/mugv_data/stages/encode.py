"""Pre-encoding: kept clips -> VAE latents + text features -> shards (paper §5.3 storage).

For each kept clip (in clip-id order) the frames of its bucket are decoded once: F frames
resampled to the bucket's fps, resized to cover the bucket's H x W and centre-cropped
(reference B.7's rule), mapped to [-1, 1] (the inference convention; the official data
prep's [0, 1] input is a known quirk, reference §H.11). The VAE gives normalised latents
``[C, T, h, w]``; the text encoder gives ``[S, E]`` for the valid caption tokens.

``vae``: a ``mugv_vae.VideoVAE`` or any object with ``encode(video [B, 3, N, H, W]) ->
normalised latents [B, C, T, h, w]``, or a callable doing that. ``text_encoder``: a
``mugv_dit.TextEncoder`` or any callable ``prompts -> (emb [B, S, E], mask [B, S])``, or an
object with such an ``encode`` method. Posterior sampling, when the VAE supports it, uses a
per-clip seed so a resumed run writes the same bytes.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from mugv_data._video import read_frames
from mugv_data.shards import ShardWriter

if TYPE_CHECKING:
    import torch

_EXTRA_COLUMNS = (
    "sharpness",
    "motion",
    "aesthetic",
    "tags",
    "stratum",
    "video_key",
    "start_s",
    "end_s",
)


def _video_encoder(vae: Any, sample: bool) -> Callable[[torch.Tensor, int], torch.Tensor]:
    fn = getattr(vae, "encode", None) or vae
    if not callable(fn):
        raise TypeError(
            f"vae must be a mugv_vae.VideoVAE, an object with encode(video) or a callable, got {type(vae)}"
        )
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}

    def run(video: torch.Tensor, seed: int) -> torch.Tensor:
        import torch

        kw: dict[str, Any] = {}
        if "sample" in params:
            kw["sample"] = sample
        if sample and "generator" in params:
            kw["generator"] = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            out = fn(video, **kw)
        if isinstance(out, tuple | list):
            out = out[0]
        return out

    return run


def _text_encoder(te: Any) -> Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]:
    fn = te if callable(te) else getattr(te, "encode", None)
    if fn is None:
        raise TypeError(
            "text_encoder must be a mugv_dit.TextEncoder or a callable prompts -> (emb [B, S, E], "
            f"mask [B, S]), got {type(te)}"
        )
    return fn


def _clip_seed(clip_id: str) -> int:
    return int.from_bytes(hashlib.sha256(clip_id.encode()).digest()[:7], "little")


def clip_pixels(row: dict) -> torch.Tensor:
    """The bucket's frames of a kept clip as ``[3, F, H, W]`` float in [-1, 1]."""
    import torch

    f, fps_out, fps_in = row["bucket_frames"], row["bucket_fps"], row["fps"]
    start, end = row["start_frame"], row["end_frame"]
    idx = [min(end - 1, start + round(j * fps_in / fps_out)) for j in range(f)]
    size = (row["bucket_height"], row["bucket_width"])
    frames = read_frames(row["path"], sorted(set(idx)), fps=fps_in, size=size)
    missing = sorted(set(idx) - set(frames))
    if missing:
        raise RuntimeError(
            f"{row['path']}: frames {missing[:5]} of clip {row['clip_id']} did not decode"
        )
    video = np.stack([frames[i] for i in idx])  # [F, H, W, 3]
    return torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def encode_clips(
    curated: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    vae: Any,
    text_encoder: Any,
    shard_size: int = 256,
    sample_posterior: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Path:
    """Encode the kept clips of a curation output folder into shards; returns the manifest.

    Resumes: complete shards already in ``out_dir`` are kept and their clips skipped.
    """
    from tqdm.auto import tqdm

    curated = Path(curated)
    manifest = curated if curated.suffix == ".parquet" else curated / "manifest.parquet"
    if not manifest.exists():
        raise FileNotFoundError(f"no curation manifest at {manifest}; run `mugv-data curate` first")
    import json

    cfg_path = manifest.parent / "config.json"
    bucket_fps = json.loads(cfg_path.read_text())["buckets"]["fps"] if cfg_path.exists() else 24.0
    rows = [r for r in pq.read_table(manifest).to_pylist() if r["status"] == "kept"]
    rows.sort(key=lambda r: r["clip_id"])
    encode_video = _video_encoder(vae, sample_posterior)
    encode_text = _text_encoder(text_encoder)
    out = Path(out_dir)
    with ShardWriter(out, shard_size=shard_size, resume=True) as writer:
        done = [r["id"] for r in writer.rows]
        if done != [r["clip_id"] for r in rows[: len(done)]]:
            raise ValueError(
                f"{out} holds shards of a different clip list (the curation changed since they "
                "were written); encode into an empty folder"
            )
        todo = rows[len(done) :]
        for row in tqdm(todo, desc="encode", unit="clip", disable=not progress):
            row = {**row, "bucket_fps": bucket_fps}
            video = clip_pixels(row)[None].to(device)
            latent = encode_video(video, _clip_seed(row["clip_id"]))[0].float().cpu()
            emb, mask = encode_text([row["caption"] or ""])
            text = emb[0][mask[0].bool()].float().cpu()
            sample = {
                "id": row["clip_id"],
                "latent": latent,
                "text": text,
                "caption": row["caption"] or "",
                "fps": float(bucket_fps),
                "num_frames": row["bucket_frames"],
                "height": row["bucket_height"],
                "width": row["bucket_width"],
                "bucket": row["bucket"],
                "weight": float(row["weight"]),
                "source": row["source"],
            }
            sample.update({k: row[k] for k in _EXTRA_COLUMNS if row.get(k) is not None})
            writer.write(sample)
    return out / "manifest.parquet"
