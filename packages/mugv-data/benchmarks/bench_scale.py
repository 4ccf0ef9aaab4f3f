"""Curation at scale on CPU: per-stage clips/s (local engine vs Ray, 1 and 2 workers),
bytes per clip of the outputs, and the driver's memory for 10,000 and 100,000 records.

    python packages/mugv-data/benchmarks/bench_scale.py [--videos 24] [--records 10000 100000]

1. Engines: the same synthetic set (``mugv_data.synthetic``, 64x48 px) curated by the local
   engine and by Ray (a local Ray of 1 and of 2 CPUs, started before the clock runs), each
   into a fresh folder. Per-stage rates are clips (or videos) over the seconds the stage
   took, summed over workers (``summary.json``); end to end is clips over wall time.
2. Bytes per clip: the records folder, ``manifest.parquet`` and ``videos.parquet`` of the
   run above, divided by its clips.
3. Driver memory: ``N`` synthetic records (two passed clips each, random perceptual hashes,
   captions from the synthetic ontology) written as a finished run would leave them, then
   ``curate`` on a JSONL manifest of the ``N`` inputs in a fresh process: every video is
   resumed, so the driver does what it does at the end of any run (read the manifest, find
   the records, dedup / tags / weights / buckets, stream the Parquet outputs). Peak RSS of
   that process minus its RSS after a 100-record warm-up run (imports and caches loaded).

Figures go to benchmarks/RESULTS.md under "mugv-data scale" (GPU stages: not measured on GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _results_module():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_bench_results", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- 1 + 2: engines and bytes --------------------------------------------------------------


def bench_engines(root: Path, work: Path) -> tuple[list[tuple], dict]:
    import ray

    from mugv_data import CurationConfig
    from mugv_data._ray_engine import _start_local_ray
    from mugv_data.pipeline import Pipeline

    base = CurationConfig.preset("synthetic")
    rows, sizes = [], {}
    for engine, workers in (("local", 1), ("local", 2), ("ray", 1), ("ray", 2)):
        cfg = CurationConfig.from_dict({"workers": workers}, base=base)
        if engine == "ray":
            _start_local_ray(ray, workers)
        out = work / f"{engine}{workers}"
        pipe = Pipeline(cfg, engine=engine)
        t = time.perf_counter()
        res = pipe.run(root, out)
        wall = time.perf_counter() - t
        if engine == "ray":
            ray.shutdown()
        st = pipe.stage_stats
        rows.append((engine, workers, st, wall, res.counts))
        sizes = {
            "clips": int(st["clips"]),
            "videos": res.counts["videos"],
            "records": _du(out / "records"),
            "manifest": _du(out / "manifest.parquet"),
            "videos.parquet": _du(out / "videos.parquet"),
        }
    return rows, sizes


# -- 3: driver memory ----------------------------------------------------------------------

_DRIVER = r"""
import json, resource, sys, time
from pathlib import Path
import psutil
from mugv_data import CurationConfig, curate
proc = psutil.Process()
cfg = CurationConfig.preset("synthetic")
curate(sys.argv[3], sys.argv[4], cfg)  # a 100-record warm-up: every import and cache loaded
base_rss = proc.memory_info().rss
t = time.perf_counter()
res = curate(sys.argv[1], sys.argv[2], cfg)
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"base": base_rss, "peak": peak, "wall": wall, "processed": res.processed,
                  "videos": res.counts["videos"], "kept": res.counts.get("kept", 0)}))
"""


def write_fake_run(n: int, work: Path, template: dict, fingerprint: str) -> tuple[Path, Path]:
    """``n`` records as a finished run leaves them, and the JSONL manifest of their inputs."""
    from mugv_data.pipeline import RECORD_VERSION, video_key
    from mugv_data.synthetic import _ACTIONS, _SCENES, _SUBJECTS

    rng = random.Random(n)
    src, out = work / f"inputs{n}", work / f"run{n}"
    (out / "records").mkdir(parents=True)
    src.mkdir()
    with open(src / "manifest.jsonl", "w") as man:
        for i in range(n):
            rel = f"v{i:07d}.mp4"
            key = video_key(rel)
            man.write(json.dumps({"path": rel}) + "\n")
            clips = []
            for k, c in enumerate(template["clips"][:2]):
                cap = (
                    f"A {rng.choice(_SUBJECTS)} {rng.choice(_ACTIONS)} across a "
                    f"{rng.choice(_SCENES)}."
                )
                hashes = [f"{rng.getrandbits(64):016x}" for _ in c["phash"]]
                clips.append({**c, "clip_id": f"{key}-{k:03d}", "video_key": key,
                              "path": str(src / rel), "caption": cap, "phash": hashes,
                              "status": "passed"})  # fmt: skip
            rec = {**template, "key": key, "path": str(src / rel), "clips": clips,
                   "fingerprint": fingerprint, "version": RECORD_VERSION, "caption": None}  # fmt: skip
            # Plain writes: a finished run's records, not the pipeline's fsynced writer.
            (out / "records" / f"{key}.json").write_text(
                json.dumps(rec, sort_keys=True, separators=(",", ":"))
            )
    return src / "manifest.jsonl", out


def bench_driver(counts: list[int], work: Path, template: dict) -> list[dict]:
    from mugv_data import CurationConfig

    fp = CurationConfig.preset("synthetic").fingerprint()
    warm = write_fake_run(100, work, template, fp)
    out = []
    for n in counts:
        t = time.perf_counter()
        manifest, run = write_fake_run(n, work, template, fp)
        t_write = time.perf_counter() - t
        res = subprocess.run(
            [sys.executable, "-c", _DRIVER, str(manifest), str(run), *map(str, warm)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r.update(n=n, write=t_write, records_bytes=_du(run / "records"))
        out.append(r)
        print(f"driver {n}: {r}", flush=True)
        subprocess.run(["rm", "-rf", str(run), str(manifest.parent)], check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=24, help="plain synthetic videos (engines)")
    ap.add_argument("--records", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from mugv_data.synthetic import make_synthetic_set

    work = Path(tempfile.mkdtemp(prefix="mugv-scale-"))
    make_synthetic_set(work / "in", num_good=args.videos, include_failures=False)
    load0 = os.getloadavg()[0]
    rows, sizes = bench_engines(work / "in", work)
    template = next(
        json.loads(p.read_text())
        for p in sorted((work / "ray2" / "records").glob("good_*.json"))
        if sum(c["status"] == "passed" for c in json.loads(p.read_text())["clips"]) >= 1
    )
    template["clips"] = [c for c in template["clips"] if c["status"] == "passed"] * 2
    driver = bench_driver(args.records, work, template)
    load1 = os.getloadavg()[0]

    def rate(n: float, s: float) -> str:
        return f"{n / s:,.1f}" if s > 0 else "-"

    lines = [
        f"Engines: `make_synthetic_set(num_good={args.videos}, include_failures=False)`, "
        f"64x48 px, 24 fps: {sizes['videos']} videos, {sizes['clips']} candidate clips, preset "
        "`synthetic`, no model stages. Ray: a local Ray of 1 or 2 CPUs started before the "
        "clock (its start-up, ~5-10 s, is not counted). Per-stage rates: clips (videos for "
        "probe + scenes) over the stage's seconds summed over workers, i.e. per worker; end "
        "to end: clips over wall time, including the across-clip pass and the Parquet "
        f"outputs. Load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores, shared "
        "with other jobs: the 2-worker rows cannot scale on a loaded 2-core machine.",
        "",
        "| engine | workers | probe + scenes (videos/s per worker) | clip CPU stage "
        "(clips/s per worker) | end to end (clips/s) | wall (s) | kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine, w, st, wall, counts in rows:
        lines.append(
            f"| {engine} | {w} | {rate(st['videos'], st['probe_scenes'])} | "
            f"{rate(st['clips_cpu'], st['clip_cpu'])} | {rate(st['clips'], wall)} | "
            f"{wall:.1f} | {counts.get('kept', 0)} |"
        )
    c = max(1, sizes["clips"])
    lines += [
        "",
        "Model stages (aesthetics, RAFT, VLM captioner / artifact filter, VAE and text "
        "pre-encoding): not measured on GPU (no GPU lent to this session).",
        "",
        f"Bytes per clip (the 2-worker Ray run, {sizes['clips']} clips of {sizes['videos']} "
        f"videos): records {sizes['records'] / c:,.0f} B, `manifest.parquet` "
        f"{sizes['manifest'] / c:,.0f} B, `videos.parquet` {sizes['videos.parquet'] / c:,.0f} B "
        "(per clip; small runs pay Parquet's fixed footer, so the Parquet figures fall with "
        "size).",
        "",
        "Driver memory: N records (2 passed clips each, random hashes, so dedup keeps all) and "
        "a JSONL manifest of N inputs; `curate` in a fresh process resumes every video. "
        "Growth = peak RSS minus the RSS after a 100-record warm-up run in the same process.",
        "",
        "| records | clips | records on disk | driver RSS after warm-up | peak RSS | growth | "
        "growth per clip | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    mib = 1 << 20
    for r in driver:
        growth = r["peak"] - r["base"]
        lines.append(
            f"| {r['n']:,} | {2 * r['n']:,} | {r['records_bytes'] / mib:,.0f} MiB | "
            f"{r['base'] / mib:,.0f} MiB | {r['peak'] / mib:,.0f} MiB | {growth / mib:,.0f} MiB | "
            f"{growth / (2 * r['n']):,.0f} B | {r['wall']:.1f} |"
        )
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        cmd = "python packages/mugv-data/benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
        _results_module().write_section("mugv-data scale", body, command=cmd.strip())


if __name__ == "__main__":
    main()
