"""CPU soak of the Ray engine: N tiny synthetic videos, the driver SIGKILLed mid-run, a
resume, and the driver's memory sampled all along.

    python packages/mugv-data/benchmarks/soak_ray.py [--videos 1000] [--kill-at 0.4]

1. ``--videos`` one-scene videos (64x48 px, 18 frames at 24 fps, each its own seed, so
   none are duplicates) written to a temporary folder.
2. ``mugv-data curate --engine ray --workers 2`` as a driver process in its own session;
   when ``--kill-at`` of the records exist, the driver and its local Ray get SIGKILL.
3. The same command again: it resumes (videos with a record are skipped) and finishes.
4. An uninterrupted local-engine run of the same set, as the reference manifest.

Each driver samples its own RSS (and the record count) every 0.25 s. Figures go to
benchmarks/RESULTS.md under "mugv-data Ray soak".
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_DRIVER = r"""
import json, sys, threading, time
from pathlib import Path
import psutil
from mugv_data.cli import main
samples, records = Path(sys.argv[1]), Path(sys.argv[2]) / "records"
proc = psutil.Process()
t0 = time.time()
def sample():
    with samples.open("a") as f:
        while True:
            n = sum(1 for _ in records.glob("*.json")) if records.exists() else 0
            f.write(json.dumps({"t": time.time() - t0, "rss": proc.memory_info().rss, "records": n}) + "\n")
            f.flush()
            time.sleep(0.25)
threading.Thread(target=sample, daemon=True).start()
sys.exit(main(sys.argv[3:]))
"""


def _results_module():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_bench_results", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_videos(root: Path, n: int) -> None:
    from mugv_data._video import write_video
    from mugv_data.synthetic import render_scene

    root.mkdir(parents=True)
    for i in range(n):
        write_video(root / f"v{i:05d}.mp4", render_scene(18, 48, 64, seed=1000 + i), 24.0)


def _samples(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _manifest(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    for r in rows:
        r.pop("path")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--kill-at", type=float, default=0.4, help="share of records at the kill")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mugv-soak-"))
    t = time.perf_counter()
    make_videos(work / "in", args.videos)
    t_make = time.perf_counter() - t
    out = work / "ray"
    cmd = ["curate", str(work / "in"), "--out", str(out), "--preset", "synthetic",
           "--engine", "ray", "--workers", "2", "--quiet"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    load0 = os.getloadavg()[0]

    # Run 1: killed once --kill-at of the records are written.
    s1 = work / "samples1.jsonl"
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(s1), str(out), *cmd],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    target = int(args.kill_at * args.videos)
    try:
        while True:
            n = len(list((out / "records").glob("*.json"))) if (out / "records").exists() else 0
            if n >= target:
                break
            if proc.poll() is not None:
                raise SystemExit(f"driver ended before the kill: {proc.stderr.read()[-2000:]!r}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the driver's local Ray
    t_run1 = time.perf_counter() - t
    killed_manifest = (out / "manifest.parquet").exists()
    done_before = len(list((out / "records").glob("*.json")))
    leftovers = len(list((out / "records").glob(".*")))

    # Run 2: the resume.
    s2 = work / "samples2.jsonl"
    t = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(s2), str(out), *cmd],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    t_run2 = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"resume failed ({res.returncode}): {res.stderr[-2000:]}")
    processed = int(res.stdout.split("processed ", 1)[1].split()[0])
    summary = json.loads((out / "summary.json").read_text())

    # Reference: uninterrupted, local engine.
    from mugv_data import CurationConfig, curate

    t = time.perf_counter()
    ref = curate(
        work / "in",
        work / "local",
        CurationConfig.from_dict({"workers": 2}, base=CurationConfig.preset("synthetic")),
    )
    t_ref = time.perf_counter() - t
    same = _manifest(out) == _manifest(work / "local")
    load1 = os.getloadavg()[0]

    mib = 1 << 20
    samp1, samp2 = _samples(s1), _samples(s2)

    def rss_at(samples: list[dict], share: float) -> str:
        """RSS at the first sample with at least ``share`` of all records written."""
        for s in samples:
            if s["records"] >= share * args.videos:
                return f"{s['rss'] / mib:,.0f}"
        return "-"

    peak1 = max((s["rss"] for s in samp1), default=0) / mib
    peak2 = max((s["rss"] for s in samp2), default=0) / mib
    lines = [
        f"{args.videos} one-scene synthetic videos (64x48 px, 18 frames; written in "
        f"{t_make:.0f} s), preset `synthetic`, `mugv-data curate --engine ray --workers 2` "
        f"(local Ray, 4 videos per block). Load average {load0:.1f} -> {load1:.1f} on "
        f"{os.cpu_count()} cores (shared with other jobs).",
        "",
        "| step | result |",
        "|---|---|",
        f"| run 1, SIGKILL of the driver (and its Ray) at {target} records | killed after "
        f"{t_run1:.0f} s with {done_before} records written, no manifest "
        f"({'present!' if killed_manifest else 'none'}), {leftovers} temporary files left |",
        f"| run 2, resume | {processed} videos processed, {args.videos - processed} resumed "
        f"from records, {t_run2:.0f} s; {summary['counts'].get('kept', 0)} clips kept |",
        f"| manifest of kill + resume == uninterrupted local run ({t_ref:.0f} s) | "
        f"{'yes' if same else 'NO'} ({ref.counts.get('kept', 0)} kept) |",
        f"| driver RSS, run 1 (MiB) at 10 / 20 % of records, last sample before the kill; "
        f"peak | {rss_at(samp1, 0.1)} / {rss_at(samp1, 0.2)} / "
        f"{samp1[-1]['rss'] / mib if samp1 else 0:,.0f}; {peak1:,.0f} |",
        f"| driver RSS, run 2 (MiB) at 50 / 75 / 100 % of records; peak (incl. the "
        f"across-clip pass) | {rss_at(samp2, 0.5)} / {rss_at(samp2, 0.75)} / "
        f"{rss_at(samp2, 1.0)}; {peak2:,.0f} |",
    ]
    body = "\n".join(lines)
    print(body)
    (work / "soak.md").write_text(body)
    if not args.no_write:
        cmd_line = "python packages/mugv-data/benchmarks/soak_ray.py " + " ".join(sys.argv[1:])
        _results_module().write_section("mugv-data Ray soak", body, command=cmd_line.strip())


if __name__ == "__main__":
    main()
