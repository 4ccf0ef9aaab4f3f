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


def check_encode_inputs(curated: str | os.PathLike[str]) -> Path:
    """The curation manifest of ``curated`` (a folder or the file), checked before any
    model loads: it must exist and be a readable curation manifest."""
    curated = Path(curated)
    manifest = curated if curated.suffix == ".parquet" else curated / "manifest.parquet"
    if not manifest.exists():
        raise FileNotFoundError(f"no curation manifest at {manifest}; run `mugv-data curate` first")
    try:
        names = set(pq.read_schema(manifest).names)
    except Exception as e:
        raise ValueError(f"{manifest} is not a readable Parquet manifest ({e})") from None
    need = {"clip_id", "status", "path", "bucket_frames", "bucket_height", "bucket_width"}
    if not need <= names:
        raise ValueError(
            f"{manifest} lacks columns {sorted(need - names)}: not a `mugv-data curate` manifest"
        )
    return manifest


def plan_shards(curated: str | os.PathLike[str], shard_size: int) -> tuple[list[list[dict]], float]:
    """The kept clips in clip-id order cut into shards of ``shard_size`` (the last may be
    shorter), and the bucket fps. Shard k holds the same clips however many workers run."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    import json

    manifest = check_encode_inputs(curated)
    cfg_path = manifest.parent / "config.json"
    bucket_fps = json.loads(cfg_path.read_text())["buckets"]["fps"] if cfg_path.exists() else 24.0
    rows = [r for r in pq.read_table(manifest).to_pylist() if r["status"] == "kept"]
    rows.sort(key=lambda r: r["clip_id"])
    return [rows[i : i + shard_size] for i in range(0, len(rows), shard_size)], float(bucket_fps)


def _shard_path(out: Path, k: int) -> Path:
    return out / f"shard-{k:05d}.safetensors"


def _shard_done(out: Path, k: int, rows: list[dict]) -> bool:
    """True if shard k is complete with exactly these clips; False if absent or corrupt
    (rewritten); a readable shard of other clips means the curation changed: an error."""
    from mugv_data.shards import ShardError, read_shard_rows

    path = _shard_path(out, k)
    if not path.exists():
        return False
    try:
        have = [r["id"] for r in read_shard_rows(path)]
    except ShardError:
        return False
    want = [r["clip_id"] for r in rows]
    if have == want:
        return True
    if want[: len(have)] == have:
        return False  # a shorter shard from an earlier, smaller shard_size run: redo
    raise ValueError(
        f"{out} holds shards of a different clip list (the curation changed since they "
        "were written); encode into an empty folder"
    )


class _Encoders:
    """The VAE and text encoder as two functions, on one device (optionally in ``dtype``)."""

    def __init__(self, vae: Any, text_encoder: Any, sample: bool, device: Any, dtype: Any):
        self.video = _video_encoder(vae, sample)
        self.text = _text_encoder(text_encoder)
        self.device, self.dtype = device, dtype

    def sample(self, row: dict, bucket_fps: float) -> dict:
        row = {**row, "bucket_fps": bucket_fps}
        video = clip_pixels(row)[None].to(self.device)
        if self.dtype is not None:
            video = video.to(self.dtype)
        latent = self.video(video, _clip_seed(row["clip_id"]))[0].float().cpu()
        emb, mask = self.text([row["caption"] or ""])
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
        return sample

    def shard(self, out: Path, k: int, rows: list[dict], bucket_fps: float) -> int:
        from mugv_data.shards import write_shard

        write_shard(_shard_path(out, k), [self.sample(r, bucket_fps) for r in rows])
        return len(rows)


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def _finish(out: Path, shards: list[list[dict]], rank: int, world_size: int) -> Path:
    """Merge the manifest once every shard exists: rank 0 after a barrier when
    torch.distributed is up, else whichever worker sees all shards complete (the merge is
    atomic and the same whoever writes it)."""
    from mugv_data.shards import MANIFEST, merge_manifest

    dist = None
    if world_size > 1:
        try:
            import torch.distributed as dist_mod

            dist = dist_mod if dist_mod.is_available() and dist_mod.is_initialized() else None
        except ImportError:  # pragma: no cover
            dist = None
    if dist is not None:
        dist.barrier()
        if rank == 0:
            merge_manifest(out, len(shards))
        dist.barrier()
    elif all(_shard_done(out, k, rows) for k, rows in enumerate(shards)):
        merge_manifest(out, len(shards))
    return out / MANIFEST


def encode_clips(
    curated: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    vae: Any,
    text_encoder: Any,
    shard_size: int = 256,
    sample_posterior: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    progress: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> Path:
    """Encode the kept clips of a curation output folder into shards; returns the manifest.

    Shard k holds kept clips ``k * shard_size ...`` in clip-id order. With ``world_size``
    workers (default: torchrun's ``RANK`` / ``WORLD_SIZE``, else one), this process
    encodes the shards with ``k % world_size == rank``; every shard is the same file
    whoever writes it, and ``manifest.parquet`` is merged from the shards' own rows when
    the last one is done. Resumes: complete shards in ``out_dir`` are kept. ``dtype``
    (e.g. ``torch.bfloat16`` on GPU): the pixels' dtype, matching a VAE cast to it.
    """
    from tqdm.auto import tqdm

    rank, world_size = _rank_world(rank, world_size)
    shards, bucket_fps = plan_shards(curated, shard_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc = _Encoders(vae, text_encoder, sample_posterior, device, dtype)
    mine = [k for k in range(rank, len(shards), world_size) if not _shard_done(out, k, shards[k])]
    with tqdm(total=sum(len(shards[k]) for k in mine), desc="encode", unit="clip",
              disable=not progress) as bar:  # fmt: skip
        for k in mine:
            bar.update(enc.shard(out, k, shards[k], bucket_fps))
    if not shards:
        from mugv_data.shards import write_manifest

        write_manifest([], out / "manifest.parquet")
        return out / "manifest.parquet"
    return _finish(out, shards, rank, world_size)


def _load_encoders(vae: Any, text_encoder: Any, device: str, dtype: Any, text_max_length: int,
                   tile_latent_size: int | None):  # fmt: skip
    """Strings name a ``VideoVAE`` folder / Hub id and a ``TextEncoder`` folder / Hub id,
    loaded here (in the worker); anything else is used as it is."""
    if isinstance(vae, str | os.PathLike):
        import dataclasses

        from mugv_vae import VideoVAE

        vae = VideoVAE.from_pretrained(str(vae), device=device, dtype=dtype).eval()
        if tile_latent_size is not None:
            vae.config = dataclasses.replace(vae.config, tile_latent_size=tile_latent_size)
    if isinstance(text_encoder, str | os.PathLike):
        from mugv_dit import TextEncoder

        text_encoder = TextEncoder(str(text_encoder), max_length=text_max_length, device=device)
    return vae, text_encoder


class EncodeActor:
    """A Ray actor (or any worker) that loads the encoders once and writes whole shards."""

    def __init__(self, curated: str, out_dir: str, shard_size: int, vae: Any, text_encoder: Any,
                 sample_posterior: bool, dtype: Any, text_max_length: int,
                 tile_latent_size: int | None) -> None:  # fmt: skip
        from mugv_data._model_stages import default_device

        device = default_device()
        vae, te = _load_encoders(
            vae, text_encoder, device, dtype, text_max_length, tile_latent_size
        )
        self.enc = _Encoders(vae, te, sample_posterior, device, dtype)
        self.shards, self.fps = plan_shards(curated, shard_size)
        self.out = Path(out_dir)

    def __call__(self, batch: dict) -> dict:
        n = [
            self.enc.shard(self.out, int(k), self.shards[int(k)], self.fps) for k in batch["shard"]
        ]
        return {"shard": batch["shard"], "clips": np.array(n)}


def encode_clips_ray(
    curated: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    vae: Any,
    text_encoder: Any,
    shard_size: int = 256,
    num_workers: int = 1,
    num_gpus: float = 0.0,
    sample_posterior: bool = False,
    dtype: torch.dtype | None = None,
    text_max_length: int = 300,
    tile_latent_size: int | None = None,
    ray_address: str | None = None,
) -> Path:
    """``encode_clips`` over Ray: ``num_workers`` actors (``num_gpus`` each) load the
    encoders once and write whole shards (``map_batches`` over shard indices); the driver
    merges the manifest. ``vae`` / ``text_encoder``: objects (shipped to the actors) or
    strings naming a ``VideoVAE`` and a ``TextEncoder`` (loaded in each actor, ``dtype``,
    ``tile_latent_size`` for large clips). Same shards as one ``encode_clips``; resumable."""
    from mugv_data._ray_engine import connect
    from mugv_data.config import RayConfig
    from mugv_data.shards import merge_manifest

    shards, _ = plan_shards(curated, shard_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = [k for k, rows in enumerate(shards) if not _shard_done(out, k, rows)]
    if todo:
        connect(RayConfig(address=ray_address), num_workers)
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        remote = {"num_gpus": num_gpus} if num_gpus else {}
        ds = ds.map_batches(
            EncodeActor,
            fn_constructor_kwargs=dict(
                curated=str(curated), out_dir=str(out), shard_size=shard_size, vae=vae,
                text_encoder=text_encoder, sample_posterior=sample_posterior, dtype=dtype,
                text_max_length=text_max_length, tile_latent_size=tile_latent_size,
            ),
            concurrency=num_workers, batch_size=1, batch_format="numpy", num_cpus=1, **remote,
        )  # fmt: skip
        for _ in ds.iter_batches(batch_size=None):
            pass
    if not shards:
        from mugv_data.shards import write_manifest

        write_manifest([], out / "manifest.parquet")
        return out / "manifest.parquet"
    return merge_manifest(out, len(shards))
