"""Import and export of the official training CSV layout (architecture reference §G.7).

Official layout::

    train.csv                sample_id, source, latent_path, text_feat_path (relative paths)
    latents/<id>.pt          torch tensor [24, T, H/8, W/8] (float32)
    text/<id>.pt             {"y": float32 [1, 1, L, 4096], "mask": bool [1, L]}, L = 300

The official loader normalises latents with the VAE constants when ``source == "real"``
and uses them as-is for ``"generated"``. Shard latents are already normalised, so export
writes ``generated``; import normalises ``real`` latents (reference §H.11: the official
scripts' default ``real`` would normalise twice).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from mugv_data.shards import ShardWriter, atomic_write_bytes, open_shards

__all__ = ["export_official_csv", "import_official_csv"]

# Per-channel latent statistics of the official VAE (reference §B.6).
_SHIFT = [
    -0.0194091796875, 0.09619140625, -0.796875, 0.1591796875, -0.2578125, 0.359375,
    -0.3203125, -0.287109375, -0.0069580078125, 0.3046875, 0.310546875, -0.451171875,
    -0.1728515625, 0.369140625, 0.2177734375, -3.075599670410156e-05, 0.1630859375,
    -0.267578125, -0.1962890625, -0.1298828125, -0.28515625, -0.515625, 0.5859375, -0.34375,
]  # fmt: skip
_SCALE = [
    0.8817, 0.6523, 0.9152, 1.2117, 3.3516, 0.7528, 0.8177, 0.8637, 0.9075, 2.8875, 0.8980,
    1.1202, 1.0003, 2.5163, 0.6652, 1.2573, 0.7279, 1.0777, 1.5159, 0.8680, 1.1859, 1.0484,
    2.4750, 1.5881,
]  # fmt: skip
_COLUMNS = ["sample_id", "source", "latent_path", "text_feat_path"]


def _save_pt(obj, path: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def export_official_csv(
    shards: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    text_length: int = 300,
    csv_name: str = "train.csv",
) -> Path:
    """Write shards as the official ``train.csv`` + ``latents/`` + ``text/`` layout.

    Text features are zero-padded (mask False) to ``text_length`` tokens; longer captions
    raise, since the official loader assumes a fixed length.
    """
    import torch

    ds = open_shards(shards)
    out = Path(out_dir)
    rows = []
    for s in ds:
        sid = s["id"]
        text = s["text"]
        if text.shape[0] > text_length:
            raise ValueError(
                f"sample {sid!r} has {text.shape[0]} text tokens > text_length={text_length}; "
                "raise text_length"
            )
        y = torch.zeros(1, 1, text_length, text.shape[1], dtype=torch.float32)
        y[0, 0, : text.shape[0]] = text
        mask = torch.zeros(1, text_length, dtype=torch.bool)
        mask[0, : text.shape[0]] = True
        lat_rel, txt_rel = f"latents/{sid}.pt", f"text/{sid}.pt"
        _save_pt(s["latent"].contiguous(), out / lat_rel)
        _save_pt({"y": y, "mask": mask}, out / txt_rel)
        rows.append(
            {
                "sample_id": sid,
                "source": "generated",
                "latent_path": lat_rel,
                "text_feat_path": txt_rel,
            }
        )
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path = out / csv_name
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def _load_pt(path: Path):
    """A ``.pt`` file of the official layout: tensors only (``weights_only``), the file named
    in every error."""
    import pickle

    import torch

    if not path.is_file():
        raise FileNotFoundError(f"{path} (named in the CSV) not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        why = " ".join(str(e).split())[:200]
        raise ValueError(
            f"{path} is not a torch tensor file of the official layout ({why})"
        ) from None


def _load_tensor(path: Path, what: str):
    import torch

    t = _load_pt(path)
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise ValueError(f"{path}: {what} must be a floating-point tensor, got {type(t).__name__}")
    return t.float()


def import_official_csv(
    csv_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    shard_size: int = 256,
    fps: float = 24.0,
    data_source: str = "official",
) -> Path:
    """Convert an official ``train.csv`` dataset into shards; returns the manifest path.

    Pixel sizes are latent x 8 and ``num_frames`` is 8 (T - 1) + 1, the frame count the
    official VAE maps to T latents; ``fps`` defaults to the official loader's 24. The CSV
    has no captions, so ``caption`` is empty unless a ``caption`` column exists.
    """
    import torch

    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise FileNotFoundError(f"official CSV not found: {csv_path}")
    if not csv_path.is_file():
        raise ValueError(f"official CSV {csv_path} is not a regular file")
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{csv_path} is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8"
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{csv_path} lacks columns {missing}; the official layout has {_COLUMNS}")
    rows = list(reader)
    if not rows:
        raise ValueError(f"{csv_path} has a header but no rows")
    shift = torch.tensor(_SHIFT).view(-1, 1, 1, 1)
    scale = torch.tensor(_SCALE).view(-1, 1, 1, 1)
    base = csv_path.parent
    with ShardWriter(out_dir, shard_size=shard_size) as writer:
        for r in rows:
            latent = _load_tensor(base / r["latent_path"], "latent")
            if latent.ndim == 5 and latent.shape[0] == 1:
                latent = latent[0]
            if latent.ndim != 4:
                raise ValueError(
                    f"{r['latent_path']}: latent must be [C, T, h, w], got {tuple(latent.shape)}"
                )
            if r["source"] == "real":
                if latent.shape[0] != len(_SHIFT):
                    raise ValueError(
                        f"{r['latent_path']}: 'real' latents need 24 channels to normalise"
                    )
                latent = (latent - shift) / scale
            elif r["source"] != "generated":
                raise ValueError(
                    f"row {r['sample_id']}: source must be 'real' or 'generated', got {r['source']!r}"
                )
            feats = _load_pt(base / r["text_feat_path"])
            if not isinstance(feats, dict) or not {"y", "mask"} <= set(feats):
                raise ValueError(
                    f"{r['text_feat_path']}: text features must be a dict with 'y' and 'mask' "
                    "(the official layout)"
                )
            y, mask = feats["y"][-1], feats["mask"][-1]  # the official loader's indexing
            y = y.reshape(-1, y.shape[-1])
            text = y[mask.reshape(-1).bool()].float()
            _c, t, h, w = latent.shape
            writer.write(
                {
                    "id": r["sample_id"],
                    "latent": latent,
                    "text": text,
                    "caption": r.get("caption", "") or "",
                    "fps": fps,
                    "num_frames": 8 * (t - 1) + 1,
                    "height": 8 * h,
                    "width": 8 * w,
                    "bucket": f"official_{8 * h}x{8 * w}_{t}t",
                    "weight": 1.0,
                    "source": data_source,
                }
            )
    return Path(out_dir) / "manifest.parquet"
