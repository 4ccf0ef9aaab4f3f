"""Training shards: self-describing safetensors files plus a Parquet manifest.

Layout of a shard root::

    <root>/shard-00000.safetensors   tensors "<i>.latent" [C, T, h, w] and "<i>.text" [S, E]
    <root>/shard-00001.safetensors   (float32), metadata "mugv_data" = JSON list of rows
    <root>/manifest.parquet          one row per sample (id, shard, index, caption, ...)

Each shard carries its own rows in the safetensors metadata, so a shard is readable (and
a manifest can be rebuilt) without anything else; the manifest is the index that readers
use. Every file is written to a temporary name and renamed into place, so a killed writer
leaves complete shards or nothing. Samples go into shards in write order, so writing the
same samples in the same order produces the same bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import torch

__all__ = [
    "ShardError",
    "ShardSet",
    "ShardWriter",
    "merge_manifest",
    "open_shards",
    "write_shard",
]

FORMAT = "mugv-data-shard"
FORMAT_VERSION = "1"
MANIFEST = "manifest.parquet"
_META_KEY = "mugv_data"

# Fields every sample must carry, with their Python types.
REQUIRED = {
    "id": str,
    "caption": str,
    "fps": float,
    "num_frames": int,
    "height": int,
    "width": int,
    "bucket": str,
    "weight": float,
    "source": str,
}
_RESERVED = {"latent", "text", "shard", "index", "latent_shape", "text_len", "text_dim"}
_RESERVED |= {"latent_crc32", "text_crc32"}


class ShardError(Exception):
    """A shard or manifest is missing or corrupt; the message names the file."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def finish_atomic(tmp: Path, path: Path) -> None:
    """Make a finished temporary file durable, give it the mode a plain ``open`` would
    (0666 minus the umask; ``mkstemp`` makes 0600) and rename it to ``path``."""
    try:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet table through a temporary file and ``os.replace``."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _crc(t: torch.Tensor) -> int:
    import torch

    return zlib.crc32(t.contiguous().view(torch.uint8).numpy().tobytes()) if t.numel() else 0


def _validated(sample: Mapping[str, Any]) -> tuple[dict, torch.Tensor, torch.Tensor]:
    import torch

    missing = [k for k in ("latent", "text", *REQUIRED) if k not in sample]
    if missing:
        raise ValueError(
            f"sample {sample.get('id', '?')!r} lacks {missing}; a shard sample needs "
            f"'latent', 'text' and {sorted(REQUIRED)}"
        )
    sid = sample["id"]
    latent, text = sample["latent"], sample["text"]
    if not isinstance(latent, torch.Tensor) or latent.ndim != 4:
        raise ValueError(
            f"sample {sid!r}: 'latent' must be a Tensor [C, T, h, w], got {latent!r:.80}"
        )
    if not isinstance(text, torch.Tensor) or text.ndim != 2:
        raise ValueError(
            f"sample {sid!r}: 'text' must be a Tensor [S, E] of the valid caption tokens "
            f"(drop padding with the mask), got shape {getattr(text, 'shape', None)}"
        )
    if not torch.isfinite(latent).all() or not torch.isfinite(text).all():
        raise ValueError(f"sample {sid!r}: latent or text features contain NaN or Inf")
    row: dict[str, Any] = {}
    for k, typ in REQUIRED.items():
        v = sample[k]
        try:
            row[k] = typ(v.item() if isinstance(v, torch.Tensor) else v)
        except (TypeError, ValueError):
            raise ValueError(
                f"sample {sid!r}: field {k!r} must be {typ.__name__}, got {v!r}"
            ) from None
    if not row["id"] or "/" in row["id"]:
        raise ValueError(f"sample id {row['id']!r} must be non-empty and contain no '/'")
    for k, v in sample.items():
        if k in REQUIRED or k in ("latent", "text"):
            continue
        if k in _RESERVED:
            raise ValueError(f"sample {sid!r}: field {k!r} is written by ShardWriter itself")
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if v is not None and not isinstance(v, bool | int | float | str):
            raise ValueError(
                f"sample {sid!r}: extra field {k!r} must be a scalar (bool, int, float, str), "
                f"got {type(v).__name__}"
            )
        row[k] = v
    latent = latent.detach().to("cpu", torch.float32).contiguous()
    text = text.detach().to("cpu", torch.float32).contiguous()
    row["latent_shape"] = list(latent.shape)
    row["text_len"], row["text_dim"] = int(text.shape[0]), int(text.shape[1])
    row["latent_crc32"], row["text_crc32"] = _crc(latent), _crc(text)
    return row, latent, text


class ShardWriter:
    """Write samples into shards of ``shard_size`` samples plus ``manifest.parquet``.

    Use as a context manager; ``write(sample)`` takes a dict with ``latent`` (float32
    ``[C, T, h, w]``, normalised VAE latents), ``text`` (float32 ``[S, E]``, valid tokens
    only) and the fields of ``REQUIRED``; other scalar fields (scores, tags) become extra
    manifest columns. The manifest is written on a clean exit.

    ``resume=True`` adopts the complete shards already in ``out_dir`` (their ids are in
    ``done_ids``); the caller writes the remaining samples in the same order as before.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        shard_size: int = 256,
        prefix: str = "shard",
        resume: bool = False,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a plain file-name prefix, got {prefix!r}")
        self.out_dir = Path(out_dir)
        self.shard_size = shard_size
        self.prefix = prefix
        self.rows: list[dict] = []
        self._pending: list[tuple[dict, torch.Tensor, torch.Tensor]] = []
        self._ids: set[str] = set()
        self._num_shards = 0
        self._closed = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._adopt_existing()
        elif any(self.out_dir.glob(f"{prefix}-*.safetensors")):
            raise FileExistsError(
                f"{self.out_dir} already holds {prefix}-*.safetensors shards; pass resume=True "
                "to continue that run, or use an empty directory"
            )

    @property
    def done_ids(self) -> frozenset[str]:
        """Ids already written into complete shards (and those pending in this writer)."""
        return frozenset(self._ids)

    def _shard_path(self, k: int) -> Path:
        return self.out_dir / f"{self.prefix}-{k:05d}.safetensors"

    def _adopt_existing(self) -> None:
        k = 0
        while self._shard_path(k).exists():
            path = self._shard_path(k)
            try:
                rows = read_shard_rows(path)
            except ShardError:
                break  # a corrupt tail shard is rewritten
            if len(rows) != self.shard_size:
                break  # only full shards are final; the last partial one is rewritten
            self.rows.extend(rows)
            self._ids.update(r["id"] for r in rows)
            k += 1
        self._num_shards = k
        for stale in sorted(self.out_dir.glob(f"{self.prefix}-*.safetensors")):
            idx = int(stale.stem.rsplit("-", 1)[1])
            if idx >= k:
                stale.unlink()

    def write(self, sample: Mapping[str, Any]) -> None:
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        row, latent, text = _validated(sample)
        if row["id"] in self._ids:
            raise ValueError(f"duplicate sample id {row['id']!r}: ids must be unique")
        self._ids.add(row["id"])
        self._pending.append((row, latent, text))
        if len(self._pending) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        rows = _write_validated(self._shard_path(self._num_shards), self._pending)
        self.rows.extend(rows)
        self._pending.clear()
        self._num_shards += 1

    def close(self) -> Path:
        """Flush the last shard and write ``manifest.parquet``; returns the manifest path."""
        if not self._closed:
            self._flush()
            write_manifest(self.rows, self.out_dir / MANIFEST)
            self._closed = True
        return self.out_dir / MANIFEST

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        # On an exception the complete shards stay; the partial one is never written.


def _write_validated(
    path: Path, samples: list[tuple[dict, torch.Tensor, torch.Tensor]]
) -> list[dict]:
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    rows = []
    for i, (row, latent, text) in enumerate(samples):
        row = {**row, "shard": path.name, "index": i}
        tensors[f"{i}.latent"] = latent
        tensors[f"{i}.text"] = text
        rows.append(row)
    # One metadata key: safetensors stores metadata in a hash map, so several keys
    # would be written in varying order and identical shards would differ in bytes.
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "rows": rows}
    meta = {_META_KEY: json.dumps(doc, sort_keys=True)}
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return rows


def write_shard(path: str | os.PathLike[str], samples: list[Mapping[str, Any]]) -> list[dict]:
    """Write one shard file (atomically) from samples as ``ShardWriter.write`` takes them;
    returns its rows. The same samples give the same bytes, whoever writes them."""
    validated = [_validated(s) for s in samples]
    ids = [r["id"] for r, _, _ in validated]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate sample ids in one shard: {sorted(ids)[:5]}")
    return _write_validated(Path(path), validated)


def merge_manifest(
    out_dir: str | os.PathLike[str], num_shards: int, *, prefix: str = "shard"
) -> Path:
    """Write ``manifest.parquet`` (atomically) from the rows shards ``0..num_shards-1``
    describe themselves with: how writers on several workers finish a shard root."""
    out = Path(out_dir)
    rows: list[dict] = []
    for k in range(num_shards):
        rows += read_shard_rows(out / f"{prefix}-{k:05d}.safetensors")
    write_manifest(rows, out / MANIFEST)
    return out / MANIFEST


def write_manifest(rows: list[dict], path: Path) -> None:
    """Write shard rows as a Parquet manifest (columns ordered: fixed ones first)."""
    first = ["id", "shard", "index", *[k for k in REQUIRED if k != "id"]]
    first += ["latent_shape", "text_len", "text_dim", "latent_crc32", "text_crc32"]
    extra = sorted({k for r in rows for k in r} - set(first))
    cols = {k: [r.get(k) for r in rows] for k in [*first, *extra]}
    schema_types = {
        "latent_shape": pa.list_(pa.int64()),
        "fps": pa.float64(),
        "weight": pa.float64(),
    }
    arrays = {}
    for k, v in cols.items():
        arrays[k] = pa.array(v, type=schema_types.get(k))
    table = (
        pa.table(arrays)
        if rows
        else pa.table({k: pa.array([], type=schema_types.get(k, pa.string())) for k in first})
    )
    table = table.replace_schema_metadata({"format": FORMAT, "format_version": FORMAT_VERSION})
    write_parquet_atomic(table, path)


def read_shard_rows(path: Path) -> list[dict]:
    """The rows a shard file describes itself with (raises ``ShardError`` if unreadable)."""
    from safetensors import safe_open

    if not path.exists():
        raise ShardError(f"missing shard file {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
    except Exception as e:
        raise ShardError(f"corrupt shard file {path}: {e}") from None
    try:
        doc = json.loads(meta[_META_KEY])
        assert doc["format"] == FORMAT
        rows = doc["rows"]
    except Exception:
        raise ShardError(f"{path} is not a mugv-data shard (no '{_META_KEY}' metadata)") from None
    for r in rows:
        if f"{r['index']}.latent" not in keys or f"{r['index']}.text" not in keys:
            raise ShardError(f"corrupt shard file {path}: tensors of sample {r['id']!r} missing")
    return rows


class ShardSet:
    """Random and sequential access to the samples of a shard root.

    ``len(s)``, ``s[i]`` and iteration give dicts with ``id``, ``latent`` (float32
    ``[C, T, h, w]``), ``text`` (float32 ``[S, E]``), ``caption``, ``fps``,
    ``num_frames``, ``height``, ``width``, ``bucket``, ``weight``, ``source`` and any extra
    manifest columns. A missing or corrupt shard (or a checksum mismatch, with
    ``verify=True``) raises ``ShardError`` naming the file. Picklable (for DataLoader
    workers): open shard handles are not carried across.
    """

    def __init__(self, root: Path, rows: list[dict], *, verify: bool = True) -> None:
        self.root = root
        self.rows = rows
        self.verify = verify
        self._handle: tuple[str, Any] | None = None

    @property
    def manifest(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}

    def _open(self, shard: str):
        from safetensors import safe_open

        if self._handle is not None and self._handle[0] == shard:
            return self._handle[1]
        path = self.root / shard
        if not path.exists():
            raise ShardError(f"missing shard file {path} (listed in {self.root / MANIFEST})")
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as e:
            raise ShardError(f"corrupt shard file {path}: {e}") from None
        self._handle = (shard, handle)
        return handle

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample index {i} out of range for {len(self)} samples")
        row = self.rows[i]
        path = self.root / row["shard"]
        handle = self._open(row["shard"])
        try:
            latent = handle.get_tensor(f"{row['index']}.latent")
            text = handle.get_tensor(f"{row['index']}.text")
        except Exception as e:
            self._handle = None
            raise ShardError(f"corrupt shard file {path}: sample {row['id']!r}: {e}") from None
        if list(latent.shape) != list(row["latent_shape"]) or text.shape[0] != row["text_len"]:
            raise ShardError(f"corrupt shard file {path}: sample {row['id']!r} has wrong shapes")
        if self.verify and (_crc(latent) != row["latent_crc32"] or _crc(text) != row["text_crc32"]):
            raise ShardError(f"corrupt shard file {path}: checksum mismatch for {row['id']!r}")
        out = {k: v for k, v in row.items() if k not in _RESERVED or k in ("shard", "index")}
        out["latent"], out["text"] = latent, text
        return out

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]


def open_shards(root: str | os.PathLike[str], *, verify: bool = True) -> ShardSet:
    """Open a shard root (the folder holding ``manifest.parquet``, or that file itself)."""
    root = Path(root)
    manifest = root if root.suffix == ".parquet" else root / MANIFEST
    if not manifest.exists():
        raise ShardError(
            f"no {MANIFEST} at {manifest.parent}: not a shard root, or the writer did not "
            "finish (re-run `mugv-data encode`, which resumes)"
        )
    try:
        table = pq.read_table(manifest)
    except Exception as e:
        raise ShardError(f"corrupt manifest {manifest}: {e}") from None
    return ShardSet(manifest.parent, table.to_pylist(), verify=verify)
