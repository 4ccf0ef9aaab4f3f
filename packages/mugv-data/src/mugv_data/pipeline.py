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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from mugv_data._video import VideoError, probe, read_frames
from mugv_data.config import CurationConfig
from mugv_data.shards import atomic_write_bytes, write_parquet_atomic
from mugv_data.stages import quality
from mugv_data.stages.buckets import assign_bucket
from mugv_data.stages.dedup import duplicate_groups, entity_tags, stratified_weights
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
        if root.suffix.lower() == ".csv":
            import pyarrow.csv as pacsv

            rows = pacsv.read_csv(root).to_pylist()
        elif root.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(root).to_pylist()
        else:
            rows = [json.loads(line) for line in root.read_text().splitlines() if line.strip()]
        for i, r in enumerate(rows):
            if "path" not in r:
                raise ValueError(
                    f"{root}: row {i} has no 'path' column (need path[, caption, source])"
                )
            p = Path(r["path"])
            full = p if p.is_absolute() else root.parent / p
            cap = r.get("caption") or _sidecar_caption(full)
            items.append(
                InputItem(
                    str(full), str(r.get("source") or "default"), cap, video_key(str(r["path"]))
                )
            )
        return sorted(items, key=lambda i: i.key)
    return [InputItem(str(root), "default", _sidecar_caption(root), video_key(root.name))]


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


@dataclass
class Models:
    """Optional model stages: callables on lists of RGB frames.

    ``aesthetic(frames) -> float`` (LAION-style score), ``artifact(frames) -> (bool, str)``
    (True = has artifacts, with the model's answer), ``captioner(frames) -> str``.
    """

    aesthetic: Callable[[list], float] | None = None
    artifact: Callable[[list], tuple[bool, str]] | None = None
    captioner: Callable[[list], str] | None = None


_MODEL_CACHE: dict[str, Models] = {}


def models_for(cfg: CurationConfig, source: str, given: Models | None) -> Models:
    """Models from ``given`` or built (once per process) from the source's config."""
    scfg = cfg.for_source(source)
    key = json.dumps([scfg.aesthetic.__dict__, scfg.captions.__dict__], sort_keys=True, default=str)
    if key not in _MODEL_CACHE:
        m = Models()
        if scfg.aesthetic.enabled:
            from mugv_data.stages.aesthetic import AestheticPredictor

            m.aesthetic = AestheticPredictor.from_config(scfg.aesthetic)
        if scfg.captions.model:
            from mugv_data.stages.vlm import VLMStage

            vlm = VLMStage.from_config(scfg.captions)
            m.captioner = vlm.caption if scfg.captions.caption else None
            m.artifact = vlm.has_artifacts if scfg.captions.artifact_filter else None
        _MODEL_CACHE[key] = m
    built = _MODEL_CACHE[key]
    if given is None:
        return built
    return Models(
        aesthetic=given.aesthetic or built.aesthetic,
        artifact=given.artifact or built.artifact,
        captioner=given.captioner or built.captioner,
    )


def clip_stage(clip: dict, cfg: CurationConfig, models: Models | None = None) -> dict:
    """Stage 3 for one clip: decode only the frames the filters need, once, and score.

    Cheap scores (sharpness, motion, hashes) are always recorded; model stages run only
    on clips that passed the cheap filters. Sets ``status`` to ``passed`` or ``dropped``.
    """
    if clip["status"] != "pending":
        return clip
    scfg = cfg.for_source(clip["source"])
    m = models_for(cfg, clip["source"], models)
    s, e = clip["start_frame"], clip["end_frame"]
    plan = {
        "sharpness": quality.evenly_spaced(s, e, scfg.sharpness.num_frames),
        "hash": quality.evenly_spaced(s, e, cfg.dedup.num_frames),
        "aesthetic": quality.evenly_spaced(s, e, scfg.aesthetic.num_frames) if m.aesthetic else [],
        "vlm": quality.evenly_spaced(s, e, scfg.captions.num_frames)
        if (m.captioner or m.artifact)
        else [],
    }
    pairs = quality.motion_pairs(s, e)
    wanted = {i for v in plan.values() for i in v} | {i for p in pairs for i in p}
    clip = dict(clip)
    try:
        frames = read_frames(clip["path"], sorted(wanted), fps=clip["fps"])
    except VideoError as ex:
        return {**clip, "status": "dropped", "stage": "decode", "reason": ex.reason}
    missing = wanted - set(frames)
    if missing:
        return {**clip, "status": "dropped", "stage": "decode",
                "reason": f"frames {sorted(missing)[:5]} did not decode"}  # fmt: skip

    def pick(idx: list[int]) -> list:
        return [frames[i] for i in idx]

    clip["sharpness"] = quality.sharpness(pick(plan["sharpness"]))
    clip["motion"] = quality.motion([(frames[a], frames[b]) for a, b in pairs], scfg.motion)
    clip["phash"] = [f"{quality.phash(f):016x}" for f in pick(plan["hash"])]
    checks = [
        (
            "sharpness",
            scfg.sharpness.enabled,
            clip["sharpness"],
            scfg.sharpness.min,
            scfg.sharpness.max,
        ),
        ("motion", scfg.motion.enabled, clip["motion"], scfg.motion.min, scfg.motion.max),
    ]
    for name, enabled, val, lo, hi in checks:
        if enabled and not lo <= val <= hi:
            return {**clip, "status": "dropped", "stage": name,
                    "reason": f"{name} {val:.2f} outside [{lo:g}, {hi:g}]"}  # fmt: skip
    if m.aesthetic is not None:
        clip["aesthetic"] = float(m.aesthetic(pick(plan["aesthetic"])))
        if clip["aesthetic"] < scfg.aesthetic.min:
            return {**clip, "status": "dropped", "stage": "aesthetic",
                    "reason": f"aesthetic {clip['aesthetic']:.2f} below {scfg.aesthetic.min:g}"}  # fmt: skip
    if m.artifact is not None:
        flagged, answer = m.artifact(pick(plan["vlm"]))
        clip["artifact"] = answer
        if flagged:
            return {**clip, "status": "dropped", "stage": "artifact",
                    "reason": f"artifact filter: {answer.strip()[:80]}"}  # fmt: skip
    if m.captioner is not None and not clip["caption"]:
        clip["caption"] = m.captioner(pick(plan["vlm"])).strip()
        clip["caption_source"] = "model"
    clip["status"] = "passed"
    return clip


def process_video(item: InputItem, cfg: CurationConfig, models: Models | None = None) -> dict:
    """All per-video stages for one input; always returns a record, never raises on bad media."""
    rec = scene_stage(probe_stage(item, cfg), cfg)
    rec["clips"] = [clip_stage(c, cfg, models) for c in rec["clips"]]
    return rec


# -- across clips --------------------------------------------------------------------------

_CLIP_COLUMNS = [
    "clip_id", "video_key", "path", "source", "status", "stage", "reason",
    "start_frame", "end_frame", "start_s", "end_s", "duration_s", "fps", "width", "height",
    "rotation", "caption", "sharpness", "motion", "aesthetic", "artifact", "phash",
    "duplicate_of", "duplicate_distance", "tags", "stratum", "weight", "bucket", "tier",
    "aspect", "bucket_height", "bucket_width", "bucket_frames", "clip_file",
]  # fmt: skip


def finalize(records: list[dict], cfg: CurationConfig) -> tuple[list[dict], list[dict]]:
    """Dedup, tags and weights, buckets: returns (clip rows, video rows), sorted by id."""
    records = sorted(records, key=lambda r: r["key"])
    clips = [dict(c) for r in records for c in r["clips"]]
    clips.sort(key=lambda c: c["clip_id"])
    passed = [c for c in clips if c["status"] == "passed"]
    if cfg.dedup.enabled:
        dups = duplicate_groups(passed, cfg.dedup)
        for c in passed:
            if c["clip_id"] in dups:
                keep, d = dups[c["clip_id"]]
                kind = "exact duplicate" if d == 0 else f"near duplicate (distance {d:.1f})"
                c.update(status="dropped", stage="dedup", reason=f"{kind} of {keep}",
                         duplicate_of=keep, duplicate_distance=float(d))  # fmt: skip
    for c in clips:
        if c["status"] != "passed":
            continue
        b = assign_bucket(c["width"], c["height"], c["duration_s"], cfg.buckets)
        if b is None:
            c.update(status="dropped", stage="bucket",
                     reason="fits no bucket (too small or too short for the bucket table)")  # fmt: skip
        else:
            c.update(b)
    kept = [c for c in clips if c["status"] == "passed"]
    tags = [entity_tags(c["caption"], cfg.balance) for c in kept]
    strata, weights = stratified_weights(tags, cfg.balance)
    for c, t, s, w in zip(kept, tags, strata, weights):
        c.update(status="kept", tags=" ".join(t), stratum=s, weight=w)
    rows = [
        {k: (" ".join(c[k]) if k == "phash" and k in c else c.get(k)) for k in _CLIP_COLUMNS}
        for c in clips
    ]
    videos = []
    for r in records:
        p = r["probe"] or {}
        videos.append(
            {
                "key": r["key"], "path": r["path"], "source": r["source"], "status": r["status"],
                "stage": r["stage"], "reason": r["reason"], "num_clips": len(r["clips"]),
                "num_kept": sum(c["clip_id"] in {k["clip_id"] for k in kept} for c in r["clips"]),
                "duration_s": p.get("duration_s"), "fps": p.get("fps"), "width": p.get("width"),
                "height": p.get("height"), "rotation": p.get("rotation"), "codec": p.get("codec"),
                "has_audio": p.get("has_audio"),
                "num_frames": (r["scenes"] or {}).get("num_frames"),
                "cuts": " ".join(map(str, (r["scenes"] or {}).get("cuts", []))),
                "transitions": " ".join(f"{a}-{b}" for a, b in (r["scenes"] or {}).get("transitions", [])),
            }
        )  # fmt: skip
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
    atomic_write_bytes(
        _record_path(out, rec["key"]), json.dumps(rec, sort_keys=True, indent=1).encode()
    )


def _local_engine(todo: list[InputItem], cfg: CurationConfig, models: Models | None,
                  out: Path, progress: bool) -> Iterator[dict]:  # fmt: skip
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="curate", unit="video", disable=not progress)
    try:
        if cfg.workers == 1 or len(todo) <= 1:
            for item in todo:
                rec = process_video(item, cfg, models)
                save_record(out, rec)
                bar.update()
                yield rec
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
                    pending.add(pool.submit(process_video, item, cfg, models))
                if not pending:
                    break
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    rec = fut.result()
                    save_record(out, rec)
                    bar.update()
                    yield rec
    finally:
        bar.close()


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

    def run(
        self, inputs: str | os.PathLike[str] | Iterable[InputItem], out_dir: str | os.PathLike[str]
    ) -> CurationResult:
        cfg = self.config
        out = Path(out_dir)
        (out / "records").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(
            out / "config.json", json.dumps(cfg.to_dict(), indent=1, sort_keys=True).encode()
        )
        items = discover_inputs(inputs, cfg)
        keys = [i.key for i in items]
        if len(set(keys)) != len(keys):
            raise ValueError("two inputs map to the same key; give them distinct paths")
        fp = cfg.fingerprint()
        records, todo = [], []
        for item in items:
            rec = load_record(out, item, fp)
            (records.append(rec) if rec is not None else todo.append(item))
        t0 = time.perf_counter()
        if self.engine == "ray":
            from mugv_data._ray_engine import run_ray

            new = list(run_ray(todo, cfg, self.models, out))
        else:
            new = list(_local_engine(todo, cfg, self.models, out, self.progress))
        records += new
        rows, videos = finalize(records, cfg)
        if cfg.extract_clips:
            _extract(rows, out, self.progress)
        write_parquet_atomic(
            pa.Table.from_pylist(rows, schema=_clip_schema()), out / "manifest.parquet"
        )
        write_parquet_atomic(pa.Table.from_pylist(videos), out / "videos.parquet")
        counts: dict[str, int] = {
            "videos": len(records),
            "failed_videos": sum(r["status"] != "ok" for r in records),
        }
        for r in rows:
            key = "kept" if r["status"] == "kept" else f"dropped_{r['stage']}"
            counts[key] = counts.get(key, 0) + 1
        summary = {"counts": counts, "seconds": time.perf_counter() - t0, "processed": len(new)}
        atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1).encode())
        return CurationResult(
            out, out / "manifest.parquet", out / "videos.parquet", counts, len(new)
        )


def _extract(rows: list[dict], out: Path, progress: bool) -> None:
    """Kept clips to ``clips/<clip_id>.mp4``; existing files are kept (resume)."""
    from tqdm.auto import tqdm

    from mugv_data._video import extract_clip

    (out / "clips").mkdir(exist_ok=True)
    kept = [r for r in rows if r["status"] == "kept"]
    for r in tqdm(kept, desc="extract", unit="clip", disable=not progress):
        rel = f"clips/{r['clip_id']}.mp4"
        if not (out / rel).exists():
            extract_clip(
                r["path"], r["start_frame"], r["end_frame"], r["fps"], out / "clips" / r["clip_id"]
            )
        r["clip_file"] = rel


def _clip_schema() -> pa.Schema:
    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    types = {
        "start_frame": i64, "end_frame": i64, "start_s": f64, "end_s": f64, "duration_s": f64,
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
