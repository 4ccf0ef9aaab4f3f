"""The curation pipeline: inputs -> per-video records -> curated clip manifest.

Per video (parallel, resumable): probe, scene split, then per clip sharpness, motion,
perceptual hashes and the optional model stages (aesthetics, artifact filter, captioner).
Each finished video's record is written atomically to ``<out>/records/<key>.json``; a
rerun with the same config skips videos that have one, so a crash or SIGKILL loses only
the videos in flight. Across clips (cheap, recomputed every run): deduplication, entity
tags and weights, buckets. Outputs::

    <out>/records/*.json     per-video record (probe facts, scenes, per-clip scores)
    <out>/manifest.parquet   one row per clip, kept or dropped, with the stage and reason
    <out>/videos.parquet     one row per input file, with failures and their reason
    <out>/config.json        the configuration used

Engines: ``local`` (a process pool of ``config.workers``, in-process for 1) and ``ray``
(the same stage functions as Ray Data operations). Both give the same manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mugv_data._model_stages import ModelRunner, Models, check_model_settings, model_kinds
from mugv_data._video import VideoError, probe, read_frames
from mugv_data.config import CurationConfig
from mugv_data.shards import atomic_write_bytes
from mugv_data.stages import quality
from mugv_data.stages.buckets import assign_bucket
from mugv_data.stages.dedup import duplicate_links, entity_tags
from mugv_data.stages.scenes import split_scenes

__all__ = [
    "CurationResult",
    "InputItem",
    "Models",
    "Pipeline",
    "clip_stage",
    "curate",
    "discover_inputs",
    "finalize",
    "probe_stage",
    "scene_stage",
]

RECORD_VERSION = 1
_MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class InputItem:
    """One input file: its path, data source (for per-source thresholds) and caption."""

    path: str
    source: str = "default"
    caption: str | None = None
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", video_key(self.path))


def video_key(rel: str) -> str:
    """Stable, file-name-safe id of an input path: a readable stem plus a hash."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(rel).with_suffix("").as_posix())[-48:]
    return f"{stem.strip('._') or 'video'}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


def _sidecar_caption(path: Path) -> str | None:
    side = path.with_suffix(".txt")
    return side.read_text().strip() if side.exists() else None


def discover_inputs(
    inputs: str | os.PathLike[str] | Iterable[InputItem], cfg: CurationConfig
) -> list[InputItem]:
    """Expand a folder, a manifest (.csv / .jsonl / .parquet with ``path`` and optional
    ``caption``, ``source`` columns), a single video or a list of ``InputItem``.

    In a folder, every file with a video extension is an input (files that turn out not
    to be videos are reported as failed); the source is the first sub-folder name (or
    ``default``); a ``<name>.txt`` beside a video is its caption.
    """
    if not isinstance(inputs, str | os.PathLike):
        items = list(inputs)
        return sorted(items, key=lambda i: i.path)
    root = Path(inputs)
    if not root.exists():
        raise FileNotFoundError(f"input not found: {root}")
    items: list[InputItem] = []
    if root.is_dir():
        exts = {e.lower() for e in cfg.video_extensions}
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."):
                rel = p.relative_to(root)
                source = rel.parts[0] if len(rel.parts) > 1 else "default"
                items.append(
                    InputItem(str(p), source, _sidecar_caption(p), video_key(rel.as_posix()))
                )
        if not items:
            raise ValueError(f"no video files ({', '.join(sorted(exts))}) under {root}")
        return items
    if root.suffix.lower() in _MANIFEST_SUFFIXES:
        rows = _read_manifest(root)
        for i, r in enumerate(rows):
            if "path" not in r:
                raise ValueError(
                    f"{root}: row {i} has no 'path' column (need path[, caption, source])"
                )
            for col in ("path", "caption", "source"):
                if r.get(col) is not None and not isinstance(r[col], str):
                    raise ValueError(
                        f"{root}: row {i}: {col} must be text, got {type(r[col]).__name__}"
                    )
            if not r["path"]:
                raise ValueError(f"{root}: row {i} has an empty path")
            p = Path(r["path"])
            full = p if p.is_absolute() else root.parent / p
            cap = r.get("caption") or _sidecar_caption(full)
            items.append(
                InputItem(
                    str(full), str(r.get("source") or "default"), cap, video_key(str(r["path"]))
                )
            )
        if not items:
            raise ValueError(f"{root}: the manifest has no rows (need path[, caption, source])")
        return sorted(items, key=lambda i: i.key)
    if not root.is_file():
        raise ValueError(f"input {root} is not a regular file, folder or manifest")
    return [InputItem(str(root), "default", _sidecar_caption(root), video_key(root.name))]


def _read_manifest(root: Path) -> list[dict]:
    """The rows of a .csv / .jsonl / .parquet input manifest; errors name the file, the row
    and the problem (text must be UTF-8)."""
    suffix = root.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with root.open("rb") as f:
            for n, line in enumerate(f, 1):
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(
                        f"{root} is not UTF-8 text (line {n}: {e.reason} at byte {e.start}); "
                        "re-save it as UTF-8"
                    ) from None
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{root}: line {n} is not JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(
                        f"{root}: line {n} must be a JSON object with a 'path', "
                        f"got {type(row).__name__}"
                    )
                rows.append(row)
        return rows
    import pyarrow as pa

    try:
        if suffix == ".csv":
            import csv
            import io

            data = root.read_bytes()
            try:
                text = data.decode("utf-8-sig")  # a byte-order mark (Excel) is fine
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{root} is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as "
                    "UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                ) from None
            if not text.strip():
                raise ValueError(f"{root} is empty (need a header: path[,caption,source])")
            # The csv module keeps every cell text (pyarrow would make "123" captions ints).
            return list(csv.DictReader(io.StringIO(text, newline="")))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(root)
    except pa.ArrowException as e:
        raise ValueError(f"{root} is not a readable {suffix[1:]} manifest ({e})") from None
    return table.to_pylist()


# -- per-video work (pure functions of the item and config: both engines call these) ------


def probe_stage(item: InputItem, cfg: CurationConfig) -> dict:
    """Stage 1: a record with ``status`` ``ok`` and the probe facts, or ``failed`` + reason."""
    rec: dict[str, Any] = {
        "version": RECORD_VERSION,
        "key": item.key,
        "path": item.path,
        "source": item.source,
        "caption": item.caption,
        "fingerprint": cfg.fingerprint(),
        "status": "ok",
        "stage": "",
        "reason": "",
        "probe": None,
        "scenes": None,
        "clips": [],
    }
    try:
        rec["probe"] = probe(item.path).to_dict()
    except VideoError as e:
        rec.update(status="failed", stage="probe", reason=e.reason)
    return rec


def scene_stage(rec: dict, cfg: CurationConfig) -> dict:
    """Stage 2: scenes and clip spans (adds ``clips`` skeletons), or ``failed`` + reason."""
    if rec["status"] != "ok":
        return rec
    from mugv_data._video import VideoInfo

    info = VideoInfo(**rec["probe"])
    scfg = cfg.for_source(rec["source"]).scenes
    try:
        res = split_scenes(rec["path"], info, scfg)
    except VideoError as e:
        return {**rec, "status": "failed", "stage": "scenes", "reason": e.reason}
    rec = {**rec, "scenes": {"num_frames": res.num_frames, "cuts": list(res.cuts),
                             "transitions": [list(t) for t in res.transitions]}}  # fmt: skip
    clips = []
    spans = [(s, e, "") for s, e in res.clips] + list(res.dropped)
    for i, (s, e, why) in enumerate(sorted(spans)):
        clips.append(
            {
                "clip_id": f"{rec['key']}-{i:03d}",
                "video_key": rec["key"],
                "path": rec["path"],
                "source": rec["source"],
                "start_frame": s,
                "end_frame": e,
                "start_s": s / info.fps,
                "end_s": e / info.fps,
                "duration_s": (e - s) / info.fps,
                "fps": info.fps,
                "width": info.width,
                "height": info.height,
                "rotation": info.rotation,
                "caption": rec["caption"] or "",
                "status": "dropped" if why else "pending",
                "stage": "scenes" if why else "",
                "reason": why,
            }
        )
    rec["clips"] = clips
    return rec


def clip_cpu_stage(
    clip: dict, cfg: CurationConfig, kinds: frozenset[str] = frozenset()
) -> tuple[dict, dict, dict]:
    """Stage 3a for one clip, on CPU: decode only the frames the filters need, once, and
    score sharpness, Farneback motion and perceptual hashes; apply the cheap checks.

    ``kinds``: the model stages that follow (``model_kinds``). Returns ``(clip, plan,
    frames)``: a clip still ``pending`` carries in ``plan`` the frame indices each model
    stage needs and in ``frames`` those frames; others are ``dropped`` with empty ones.
    """
    if clip["status"] != "pending":
        return clip, {}, {}
    scfg = cfg.for_source(clip["source"])
    s, e = clip["start_frame"], clip["end_frame"]
    pairs = quality.motion_pairs(s, e)
    raft = "raft" in kinds
    vlm = "artifact" in kinds or "captioner" in kinds
    plan = {
        "aesthetic": quality.evenly_spaced(s, e, scfg.aesthetic.num_frames)
        if "aesthetic" in kinds
        else [],
        "vlm": quality.evenly_spaced(s, e, scfg.captions.num_frames) if vlm else [],
        "raft": [list(p) for p in pairs] if raft else [],
    }
    cpu = {
        "sharpness": quality.evenly_spaced(s, e, scfg.sharpness.num_frames),
        "hash": quality.evenly_spaced(s, e, cfg.dedup.num_frames),
    }
    wanted = {i for v in (*cpu.values(), plan["aesthetic"], plan["vlm"]) for i in v}
    wanted |= {i for p in pairs for i in p}
    clip = dict(clip)
    try:
        frames = read_frames(clip["path"], sorted(wanted), fps=clip["fps"])
    except VideoError as ex:
        return {**clip, "status": "dropped", "stage": "decode", "reason": ex.reason}, {}, {}
    missing = wanted - set(frames)
    if missing:
        return {**clip, "status": "dropped", "stage": "decode",
                "reason": f"frames {sorted(missing)[:5]} did not decode"}, {}, {}  # fmt: skip

    clip["sharpness"] = quality.sharpness([frames[i] for i in cpu["sharpness"]])
    if not raft:
        clip["motion"] = quality.motion([(frames[a], frames[b]) for a, b in pairs], scfg.motion)
    clip["phash"] = [f"{quality.phash(frames[i]):016x}" for i in cpu["hash"]]
    checks = [("sharpness", scfg.sharpness, clip["sharpness"])]
    if not raft:
        checks.append(("motion", scfg.motion, clip["motion"]))
    for name, c, val in checks:
        if c.enabled and not c.min <= val <= c.max:
            return {**clip, "status": "dropped", "stage": name,
                    "reason": f"{name} {val:.2f} outside [{c.min:g}, {c.max:g}]"}, {}, {}  # fmt: skip
    if not kinds:
        return {**clip, "status": "passed"}, {}, {}
    keep = {i for k in ("aesthetic", "vlm") for i in plan[k]} | {i for p in plan["raft"] for i in p}
    return clip, plan, {i: frames[i] for i in sorted(keep)}


def _kinds(cfg: CurationConfig, source: str, models: Models | None) -> frozenset[str]:
    return model_kinds(cfg.for_source(source), models)


def clip_stage(clip: dict, cfg: CurationConfig, models: Models | None = None) -> dict:
    """Stage 3 for one clip: the CPU stage, then the model stages (a batch of one).

    Cheap scores (sharpness, motion, hashes) are always recorded; model stages run only
    on clips that passed the cheap filters. Sets ``status`` to ``passed`` or ``dropped``.
    """
    return _clip_stages([clip], cfg, models)[0]


def _clip_stages(clips: list[dict], cfg: CurationConfig, models: Models | None) -> list[dict]:
    done = [clip_cpu_stage(c, cfg, _kinds(cfg, c["source"], models)) for c in clips]
    pending = [i for i, (c, _, _) in enumerate(done) if c["status"] == "pending"]
    out = [c for c, _, _ in done]
    if pending:
        scored = ModelRunner(cfg, models).run([done[i] for i in pending])
        for i, c in zip(pending, scored):
            out[i] = c
    return out


def process_video(item: InputItem, cfg: CurationConfig, models: Models | None = None) -> dict:
    """All per-video stages for one input; always returns a record, never raises on bad media.

    The video's clips go through the model stages together (``model_batch_size`` per
    forward)."""
    return _process_timed(item, cfg, models)[0]


def _process_timed(
    item: InputItem, cfg: CurationConfig, models: Models | None
) -> tuple[dict, dict[str, float]]:
    """``process_video`` plus the seconds each stage took (for the benchmark figures)."""
    t0 = time.perf_counter()
    rec = scene_stage(probe_stage(item, cfg), cfg)
    t1 = time.perf_counter()
    done = [clip_cpu_stage(c, cfg, _kinds(cfg, c["source"], models)) for c in rec["clips"]]
    t2 = time.perf_counter()
    pending = [i for i, (c, _, _) in enumerate(done) if c["status"] == "pending"]
    clips = [c for c, _, _ in done]
    if pending:
        for i, c in zip(pending, ModelRunner(cfg, models).run([done[i] for i in pending])):
            clips[i] = c
    rec["clips"] = clips
    t3 = time.perf_counter()
    timing = {"probe_scenes": t1 - t0, "clip_cpu": t2 - t1, "models": t3 - t2}
    return rec, timing


# -- across clips --------------------------------------------------------------------------

_CLIP_COLUMNS = [
    "clip_id", "video_key", "path", "source", "status", "stage", "reason",
    "start_frame", "end_frame", "start_s", "end_s", "duration_s", "fps", "width", "height",
    "rotation", "caption", "sharpness", "motion", "aesthetic", "artifact", "phash",
    "duplicate_of", "duplicate_distance", "tags", "stratum", "weight", "bucket", "tier",
    "aspect", "bucket_height", "bucket_width", "bucket_frames", "clip_file", "model_note",
]  # fmt: skip


class _Column:
    """Values appended one at a time, held as numpy chunks (not Python objects)."""

    def __init__(self, dtype: str | None) -> None:
        self.dtype, self.buf, self.parts = dtype, [], []

    def add(self, v) -> None:
        self.buf.append(v)
        if len(self.buf) >= 65536:
            self._flush()

    def _flush(self) -> None:
        if self.buf:
            self.parts.append(np.array(self.buf, dtype=self.dtype))
            self.buf = []

    def array(self) -> np.ndarray:
        self._flush()
        if not self.parts:
            return np.zeros(0, self.dtype or "S1")
        out = np.concatenate(self.parts)
        self.parts = []
        return out


class _Decisions:
    """The across-clip outcome (dedup, bucket, tags, weight) of every clip that passed the
    per-clip stages, from one pass over the records.

    Holds compact numpy columns per passed clip (UTF-8 id, uint64 hashes, duration, area,
    bucket index, tag ids), never records or per-clip Python objects; the output pass asks
    for each passed clip's updates with ``take(clip_id)``, in the order of the first pass.
    """

    def __init__(self, records: Iterable[dict], cfg: CurationConfig) -> None:
        self.cfg = cfg
        ids, dur, area, bucket = _Column(None), _Column("f8"), _Column("i8"), _Column("i4")
        ntags, tag_ids = _Column("i4"), _Column("i4")
        by_len: dict[int, tuple[_Column, _Column]] = {}
        vocab: dict[str, int] = {}
        self.buckets: list[dict] = []
        bucket_index: dict[tuple, int] = {}
        n = 0
        for r in records:
            for c in r["clips"]:
                if c["status"] != "passed":
                    continue
                ids.add(c.get("clip_id").encode())
                w, h, d = c.get("width"), c.get("height"), c.get("duration_s")
                dur.add(d)
                area.add(w * h)
                ph = c.get("phash")
                if ph:  # clips without hashes are never duplicates
                    idx, hs = by_len.setdefault(len(ph), (_Column("i8"), _Column("u8")))
                    idx.add(n)
                    for x in ph:
                        hs.add(int(x, 16))
                b = assign_bucket(w, h, d, cfg.buckets)
                if b is None:
                    bucket.add(-1)
                else:
                    key = tuple(b.items())
                    if key not in bucket_index:
                        bucket_index[key] = len(self.buckets)
                        self.buckets.append(b)
                    bucket.add(bucket_index[key])
                cap = c.get("caption")
                if cap is None:
                    ntags.add(-1)  # untaggable: an error if the clip is kept
                else:
                    ts = entity_tags(cap, cfg.balance)
                    ntags.add(len(ts))
                    for t in ts:
                        tag_ids.add(vocab.setdefault(t, len(vocab)))
                n += 1
        self.ids, self.bucket = ids.array(), bucket.array()
        dur_a, area_a = dur.array(), area.array()
        self.ntags, self.tag_ids = ntags.array(), tag_ids.array()
        self.tag_start = np.concatenate([[0], np.cumsum(np.maximum(self.ntags, 0))]).astype(
            np.int64
        )
        self.vocab = list(vocab)
        del vocab
        hash_sets = [
            (i.array(), h.array().reshape(-1, frames)) for frames, (i, h) in by_len.items()
        ]
        del by_len
        self.dups: dict[int, tuple[int, float]] = {}
        if cfg.dedup.enabled:
            self.dups = duplicate_links(hash_sets, dur_a, area_a, self.ids, cfg.dedup)
        del hash_sets, dur_a, area_a
        kept = self.bucket >= 0
        if self.dups:
            kept[np.fromiter(self.dups, dtype=np.int64, count=len(self.dups))] = False
        bad = np.flatnonzero(kept & (self.ntags < 0))
        if len(bad):
            entity_tags(None, cfg.balance)  # type: ignore[arg-type]  # raises, as before
        # Tag counts over kept clips (a clip's tags are distinct), then each kept clip's
        # stratum: its rarest tag, ties by the tag's string order.
        nv = len(self.vocab)
        on = np.repeat(kept, np.maximum(self.ntags, 0))
        counts = np.bincount(self.tag_ids[on], minlength=nv).astype(np.int64)
        rank = np.empty(nv, dtype=np.int64)
        rank[sorted(range(nv), key=self.vocab.__getitem__)] = np.arange(nv)
        by_rank = np.argsort(rank)
        self.stratum = np.full(n, -2, dtype=np.int32)  # -2: not kept, -1: untagged ('')
        self.stratum[kept & (self.ntags == 0)] = -1
        tagged = np.flatnonzero(kept & (self.ntags > 0))
        if len(tagged):
            t = self.tag_ids[np.repeat(kept & (self.ntags > 0), np.maximum(self.ntags, 0))]
            key = counts[t] * nv + rank[t]
            starts = np.concatenate([[0], np.cumsum(self.ntags[tagged])[:-1]]).astype(np.int64)
            self.stratum[tagged] = by_rank[np.minimum.reduceat(key, starts) % nv]
        # Weights: count(stratum) ** -alpha, normalised to mean 1 over kept clips in id order.
        order = np.argsort(self.ids, kind="stable")
        ks = self.stratum[order]
        ks = ks[ks >= -1]
        size = np.bincount(ks + 1, minlength=nv + 1)
        self.raw = [int(c) ** -cfg.balance.alpha if c else 0.0 for c in size]
        self.mean = sum(self.raw[s + 1] for s in ks.tolist()) / len(ks) if len(ks) else 1.0
        del order, ks
        self.pos = 0

    def take(self, clip_id: str) -> dict:
        """The updates of the next passed clip (it must be ``clip_id``)."""
        i = self.pos
        if i >= len(self.ids) or self.ids[i] != clip_id.encode():
            raise RuntimeError(f"record files changed during the run (at clip {clip_id})")
        self.pos += 1
        if i in self.dups:
            keep, d = self.dups[i]
            keep_id = self.ids[keep].decode()
            kind = "exact duplicate" if d == 0 else f"near duplicate (distance {d:.1f})"
            return dict(status="dropped", stage="dedup", reason=f"{kind} of {keep_id}",
                        duplicate_of=keep_id, duplicate_distance=float(d))  # fmt: skip
        b = int(self.bucket[i])
        if b < 0:
            return dict(status="dropped", stage="bucket",
                reason="fits no bucket (too small or too short for the bucket table)")  # fmt: skip
        s = int(self.stratum[i])
        t0, t1 = self.tag_start[i], self.tag_start[i + 1]
        return {
            **self.buckets[b],
            "status": "kept",
            "tags": " ".join(self.vocab[t] for t in self.tag_ids[t0:t1].tolist()),
            "stratum": self.vocab[s] if s >= 0 else "",
            "weight": self.raw[s + 1] / self.mean,
        }


def _rows_of(rec: dict, decided: _Decisions) -> tuple[list[dict], dict]:
    """A record's manifest rows (clip order) and its videos row, with the decisions."""
    rows = []
    for c in rec["clips"]:
        c = {**c, **decided.take(c["clip_id"])} if c["status"] == "passed" else c
        rows.append(
            {k: (" ".join(c[k]) if k == "phash" and k in c else c.get(k)) for k in _CLIP_COLUMNS}
        )
    p, sc = rec["probe"] or {}, rec["scenes"] or {}
    video = {
        "key": rec["key"], "path": rec["path"], "source": rec["source"], "status": rec["status"],
        "stage": rec["stage"], "reason": rec["reason"], "num_clips": len(rec["clips"]),
        "num_kept": sum(r["status"] == "kept" for r in rows),
        "duration_s": p.get("duration_s"), "fps": p.get("fps"), "width": p.get("width"),
        "height": p.get("height"), "rotation": p.get("rotation"), "codec": p.get("codec"),
        "has_audio": p.get("has_audio"), "num_frames": sc.get("num_frames"),
        "cuts": " ".join(map(str, sc.get("cuts", []))),
        "transitions": " ".join(f"{a}-{b}" for a, b in sc.get("transitions", [])),
    }  # fmt: skip
    return rows, video


def finalize(records: list[dict], cfg: CurationConfig) -> tuple[list[dict], list[dict]]:
    """Dedup, tags and weights, buckets: returns (clip rows, video rows), sorted by id."""
    records = sorted(records, key=lambda r: r["key"])
    decided = _Decisions(records, cfg)
    rows, videos = [], []
    for r in records:
        rr, v = _rows_of(r, decided)
        rows += rr
        videos.append(v)
    rows.sort(key=lambda c: c["clip_id"])
    return rows, videos


# -- engines ---------------------------------------------------------------------------


@dataclass
class CurationResult:
    """Where a run wrote its outputs and what it did."""

    out_dir: Path
    manifest: Path
    videos: Path
    counts: dict[str, int] = field(default_factory=dict)
    processed: int = 0
    """Videos processed in this run (the rest were resumed from records)."""

    def table(self) -> pa.Table:
        import pyarrow.parquet as pq

        return pq.read_table(self.manifest)


def _record_path(out: Path, key: str) -> Path:
    return out / "records" / f"{key}.json"


def load_record(out: Path, item: InputItem, fingerprint: str) -> dict | None:
    p = _record_path(out, item.key)
    if not p.exists():
        return None
    try:
        rec = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (
        rec.get("fingerprint") != fingerprint
        or rec.get("version") != RECORD_VERSION
        or rec.get("path") != item.path
    ):
        return None
    return rec


def save_record(out: Path, rec: dict) -> None:
    """Write one video's record atomically (and durably: a resumed run trusts it)."""
    atomic_write_bytes(
        _record_path(out, rec["key"]),
        json.dumps(rec, sort_keys=True, separators=(",", ":")).encode(),
    )


def _stage_clips(timing: dict, rec: dict) -> dict:
    """Per-stage clip counts beside the seconds: what reached each stage."""
    clips = rec["clips"]
    return {
        **timing,
        "videos": 1,
        "clips": len(clips),
        "clips_cpu": sum(c.get("sharpness") is not None or c["stage"] == "decode" for c in clips),
        "clips_models": sum(
            any(k in c for k in ("aesthetic", "artifact", "caption_source", "model_note"))
            for c in clips
        ),
    }


def _local_engine(todo: list[InputItem], cfg: CurationConfig, models: Models | None,
                  out: Path, progress: bool) -> Iterator[dict]:  # fmt: skip
    """Yields one small stats dict per finished video (its record is already on disk)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="curate", unit="video", disable=not progress)
    try:
        if cfg.workers == 1 or len(todo) <= 1:
            for item in todo:
                rec, timing = _process_timed(item, cfg, models)
                save_record(out, rec)
                bar.update()
                yield _stage_clips(timing, rec)
            return
        import concurrent.futures as cf
        import multiprocessing as mp

        # Bounded in-flight work (2 per worker) keeps memory flat for any input size.
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(cfg.workers, mp_context=ctx) as pool:
            pending: set = set()
            it = iter(todo)
            while True:
                while len(pending) < 2 * cfg.workers:
                    item = next(it, None)
                    if item is None:
                        break
                    pending.add(pool.submit(_process_timed, item, cfg, models))
                if not pending:
                    break
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    rec, timing = fut.result()
                    save_record(out, rec)
                    bar.update()
                    yield _stage_clips(timing, rec)
    finally:
        bar.close()


class _ParquetStream:
    """Rows appended in chunks to a Parquet file that appears atomically on ``close``."""

    def __init__(self, path: Path, schema: pa.Schema | None = None, chunk: int = 4096) -> None:
        import tempfile

        self.path, self.schema, self.chunk = path, schema, chunk
        fd, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        self.rows: list[dict] = []
        self.writer = None

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        import pyarrow.parquet as pq

        if not self.rows and self.writer is not None:
            return
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        if self.writer is None:
            self.schema = table.schema
            self.writer = pq.ParquetWriter(self.tmp, self.schema)
        self.writer.write_table(table)
        self.rows = []

    def close(self) -> None:
        from mugv_data.shards import finish_atomic

        self._flush()
        self.writer.close()
        finish_atomic(Path(self.tmp), self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        Path(self.tmp).unlink(missing_ok=True)


class Pipeline:
    """Curate raw videos into a clip manifest; ``run(inputs, out_dir)``.

    ``engine``: ``local`` or ``ray``. ``models``: optional model-stage callables (else
    built from the config's aesthetic and captions sections when set there).
    """

    def __init__(
        self,
        config: CurationConfig | None = None,
        *,
        engine: str = "local",
        models: Models | None = None,
        progress: bool = False,
    ) -> None:
        if engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
        self.config = config or CurationConfig()
        self.engine = engine
        self.models = models
        self.progress = progress
        self.stage_stats: dict[str, float] = {}
        """Summed stage seconds and clip counts of the last run (see ``summary.json``)."""

    def run(
        self, inputs: str | os.PathLike[str] | Iterable[InputItem], out_dir: str | os.PathLike[str]
    ) -> CurationResult:
        cfg = self.config
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"output {out} is a file; give a folder")
        items = discover_inputs(inputs, cfg)
        keys = [i.key for i in items]
        if len(set(keys)) != len(keys):
            raise ValueError("two inputs map to the same key; give them distinct paths")
        (out / "records").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(
            out / "config.json", json.dumps(cfg.to_dict(), indent=1, sort_keys=True).encode()
        )
        fp = cfg.fingerprint()
        # Only the keys to redo are kept: records stay on disk, never all in memory.
        todo = [item for item in items if load_record(out, item, fp) is None]
        del keys
        t0 = time.perf_counter()
        stats: dict[str, float] = {}
        if todo:
            check_model_settings(cfg, self.models, sorted({i.source for i in todo}))
            if self.engine == "ray":
                from mugv_data._ray_engine import run_ray

                stream = run_ray(todo, cfg, self.models, out, self.progress)
            else:
                stream = _local_engine(todo, cfg, self.models, out, self.progress)
            for st in stream:
                for k, v in st.items():
                    stats[k] = stats.get(k, 0) + v
        processed = len(todo)
        del todo
        self.stage_stats = stats
        ordered = sorted(items, key=lambda i: i.key)

        def records() -> Iterator[dict]:
            for item in ordered:
                rec = load_record(out, item, fp)
                if rec is None:
                    raise RuntimeError(f"record of {item.path} missing after the run: {out}")
                yield rec

        decided = _Decisions(records(), cfg)
        counts: dict[str, int] = {"videos": 0, "failed_videos": 0}
        clips_out = _ParquetStream(out / "manifest.parquet", _clip_schema())
        videos_out = _ParquetStream(out / "videos.parquet", _video_schema())
        try:
            if cfg.extract_clips:
                (out / "clips").mkdir(exist_ok=True)
            for rec in records():
                rows, video = _rows_of(rec, decided)
                counts["videos"] += 1
                counts["failed_videos"] += rec["status"] != "ok"
                for r in rows:
                    if cfg.extract_clips and r["status"] == "kept":
                        _extract_one(r, out)
                    key = "kept" if r["status"] == "kept" else f"dropped_{r['stage']}"
                    counts[key] = counts.get(key, 0) + 1
                    clips_out.add(r)
                videos_out.add(video)
            clips_out.close()
            videos_out.close()
        except BaseException:
            clips_out.abort()
            videos_out.abort()
            raise
        summary = {
            "counts": counts,
            "seconds": time.perf_counter() - t0,
            "processed": processed,
            "stages": stats,
        }
        atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1).encode())
        return CurationResult(
            out, out / "manifest.parquet", out / "videos.parquet", counts, processed
        )


def _extract_one(row: dict, out: Path) -> None:
    """A kept clip to ``clips/<clip_id>.mp4``; an existing file is kept (resume)."""
    from mugv_data._video import extract_clip

    rel = f"clips/{row['clip_id']}.mp4"
    if not (out / rel).exists():
        extract_clip(
            row["path"], row["start_frame"], row["end_frame"], row["fps"],
            out / "clips" / row["clip_id"],
        )  # fmt: skip
    row["clip_file"] = rel


def _video_schema() -> pa.Schema:
    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    return pa.schema([
        ("key", s), ("path", s), ("source", s), ("status", s), ("stage", s), ("reason", s),
        ("num_clips", i64), ("num_kept", i64), ("duration_s", f64), ("fps", f64),
        ("width", i64), ("height", i64), ("rotation", i64), ("codec", s),
        ("has_audio", pa.bool_()), ("num_frames", i64), ("cuts", s), ("transitions", s),
    ])  # fmt: skip


def _clip_schema() -> pa.Schema:
    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    types = {
        "duplicate_of": s, "model_note": s, "start_frame": i64, "end_frame": i64, "start_s": f64, "end_s": f64, "duration_s": f64,
        "fps": f64, "width": i64, "height": i64, "rotation": i64, "sharpness": f64, "motion": f64,
        "aesthetic": f64, "duplicate_distance": f64, "weight": f64, "bucket_height": i64,
        "bucket_width": i64, "bucket_frames": i64,
    }  # fmt: skip
    return pa.schema([(k, types.get(k, s)) for k in _CLIP_COLUMNS])


def curate(
    inputs: str | os.PathLike[str] | Iterable[InputItem],
    out_dir: str | os.PathLike[str],
    config: CurationConfig | None = None,
    *,
    engine: str = "local",
    models: Models | None = None,
    progress: bool = False,
) -> CurationResult:
    """Run the curation pipeline (see ``Pipeline``); resumes from ``out_dir`` if present."""
    return Pipeline(config, engine=engine, models=models, progress=progress).run(inputs, out_dir)
