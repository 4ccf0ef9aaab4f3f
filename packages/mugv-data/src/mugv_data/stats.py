"""Summaries of a curation run: a text table and PNG histograms.

``summarize(out_dir)`` returns counts by outcome, by drop stage and by bucket, and score
quantiles; ``plot(out_dir, png_dir)`` writes histograms of durations, resolutions, scores
and buckets; ``explain(out_dir, query)`` says why each matching clip was kept or dropped.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

__all__ = ["explain", "format_summary", "plot", "summarize"]


def _load(out_dir: Path) -> tuple[list[dict], list[dict], dict]:
    out_dir = Path(out_dir)
    m = out_dir / "manifest.parquet"
    if not m.exists():
        raise FileNotFoundError(f"no manifest.parquet in {out_dir}; run `mugv-data curate` first")
    clips = pq.read_table(m).to_pylist()
    videos = (
        pq.read_table(out_dir / "videos.parquet").to_pylist()
        if (out_dir / "videos.parquet").exists()
        else []
    )
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    return clips, videos, cfg


def summarize(out_dir: str | os.PathLike[str]) -> dict:
    clips, videos, _ = _load(Path(out_dir))
    kept = [c for c in clips if c["status"] == "kept"]
    out = {
        "videos": len(videos),
        "failed_videos": sum(v["status"] == "failed" for v in videos),
        "failure_reasons": dict(Counter(v["reason"] for v in videos if v["status"] == "failed")),
        "clips": len(clips),
        "kept": len(kept),
        "kept_hours": sum(c["duration_s"] for c in kept) / 3600,
        "dropped_by_stage": dict(Counter(c["stage"] for c in clips if c["status"] == "dropped")),
        "buckets": dict(sorted(Counter(c["bucket"] for c in kept).items())),
        "scores": {},
    }
    for key in ("sharpness", "motion", "aesthetic", "duration_s"):
        vals = np.array([c[key] for c in clips if c.get(key) is not None], dtype=float)
        if vals.size:
            q = np.quantile(vals, [0.0, 0.1, 0.5, 0.9, 1.0])
            out["scores"][key] = dict(zip(["min", "p10", "p50", "p90", "max"], map(float, q)))
    return out


def format_summary(s: dict) -> str:
    lines = [
        f"videos           {s['videos']}  (failed {s['failed_videos']})",
        f"clips            {s['clips']}  kept {s['kept']}  ({s['kept_hours'] * 3600:.1f} s)",
    ]
    for reason, n in sorted(s["failure_reasons"].items()):
        lines.append(f"  failed: {n:5d}  {reason}")
    for stage, n in sorted(s["dropped_by_stage"].items()):
        lines.append(f"  dropped at {stage:<10s} {n:5d}")
    lines.append("score            min      p10      p50      p90      max")
    for key, q in s["scores"].items():
        lines.append(
            f"{key:<12s}" + "".join(f"{q[k]:9.2f}" for k in ("min", "p10", "p50", "p90", "max"))
        )
    lines.append("bucket                          clips")
    for b, n in s["buckets"].items():
        lines.append(f"  {b:<30s}{n:5d}")
    return "\n".join(lines)


def plot(
    out_dir: str | os.PathLike[str], png_dir: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Write durations / resolutions / scores / buckets histograms as PNGs; returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mugv_data.shards import atomic_write_bytes

    clips, videos, cfg = _load(Path(out_dir))
    png = Path(png_dir) if png_dir else Path(out_dir) / "stats"
    png.mkdir(parents=True, exist_ok=True)
    kept = [c for c in clips if c["status"] == "kept"]
    written = []

    def save(fig, name: str) -> None:
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(png / name, buf.getvalue())
        written.append(png / name)

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist([c["duration_s"] for c in clips], bins=20, alpha=0.5, label="all clips")
    ax.hist([c["duration_s"] for c in kept], bins=20, alpha=0.7, label="kept")
    ax.set(xlabel="duration (s)", ylabel="clips", title="Clip durations")
    ax.legend()
    save(fig, "durations.png")

    fig, ax = plt.subplots(figsize=(5, 3))
    res = Counter(f"{v['width']}x{v['height']}" for v in videos if v.get("width"))
    ax.bar(list(res), list(res.values()))
    ax.set(ylabel="videos", title="Input resolutions (W x H)")
    ax.tick_params(axis="x", rotation=45)
    save(fig, "resolutions.png")

    default = cfg.get("default", {})
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    for ax, key in zip(axes, ("sharpness", "motion", "aesthetic")):
        vals = [c[key] for c in clips if c.get(key) is not None]
        ax.hist(vals, bins=20) if vals else ax.text(0.5, 0.5, "not measured", ha="center")
        section = default.get(key, {})
        for t in (section.get("min"), section.get("max")):
            if t is not None and vals:
                ax.axvline(t, color="red", linestyle="--")
        ax.set(title=key, xlabel="score")
    save(fig, "scores.png")

    fig, ax = plt.subplots(figsize=(6, 3))
    buckets = Counter(c["bucket"] for c in kept)
    ax.barh(list(buckets), list(buckets.values()))
    ax.set(xlabel="kept clips", title="Buckets")
    save(fig, "buckets.png")
    return written


def explain(out_dir: str | os.PathLike[str], query: str) -> str:
    """Why each clip matching ``query`` (a clip id, video key, file name or path) was kept or
    dropped, with its scores and the thresholds that applied."""
    clips, videos, _cfg = _load(Path(out_dir))
    q = str(query)
    name = Path(q).name
    hits_v = [v for v in videos if q in (v["key"], v["path"]) or Path(v["path"]).name == name]
    hits_c = [
        c for c in clips
        if q == c["clip_id"] or c["video_key"] in {v["key"] for v in hits_v} or q == c["video_key"]
    ]  # fmt: skip
    if not hits_v and not hits_c:
        raise KeyError(f"no clip or video matches {query!r} in {out_dir}")
    lines = []
    for v in hits_v:
        state = v["status"] if v["status"] != "failed" else f"FAILED at {v['stage']}: {v['reason']}"
        lines.append(f"video {v['key']} ({v['path']}): {state}")
        if v["status"] == "ok":
            lines.append(
                f"  {v['width']}x{v['height']} {v['fps']:.3g} fps {v['duration_s']:.2f} s "
                f"rotation {v['rotation']} codec {v['codec']}; cuts at [{v['cuts']}], "
                f"gradual transitions [{v['transitions']}]"
            )
    for c in hits_c:
        verdict = "KEPT" if c["status"] == "kept" else f"DROPPED at {c['stage']}: {c['reason']}"
        lines.append(
            f"clip {c['clip_id']} frames [{c['start_frame']}, {c['end_frame']}) {c['duration_s']:.2f} s: {verdict}"
        )
        scores = [
            f"{k} {c[k]:.2f}" for k in ("sharpness", "motion", "aesthetic") if c.get(k) is not None
        ]
        if scores:
            lines.append("  " + ", ".join(scores))
        if c["status"] == "kept":
            lines.append(f"  bucket {c['bucket']} weight {c['weight']:.3f} tags [{c['tags']}]")
    return "\n".join(lines)
