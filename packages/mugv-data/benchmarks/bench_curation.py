"""Curation throughput: clips per minute per stage and end to end, decode vs compute.

Runs on the synthetic set (``mugv_data.synthetic``) at a chosen size, on this machine's
CPU, and records the figures in benchmarks/RESULTS.md under "mugv-data curation".

    python packages/mugv-data/benchmarks/bench_curation.py [--width 256 --height 192 --num 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--num", type=int, default=8, help="plain clips besides the special cases")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from mugv_data import CurationConfig, curate
    from mugv_data._video import iter_small_frames, read_frames
    from mugv_data.pipeline import discover_inputs, probe_stage, scene_stage
    from mugv_data.stages import quality
    from mugv_data.synthetic import make_synthetic_set

    tmp = Path(tempfile.mkdtemp(prefix="mugv-bench-"))
    vids = make_synthetic_set(tmp / "in", num_good=args.num, width=args.width, height=args.height)
    # Motion scales with frame size; keep the synthetic preset's buckets but relax motion.
    base = CurationConfig.preset("synthetic")
    cfg = CurationConfig.from_dict(
        {"default": {"motion": {"max": 1000.0}}, "buckets": {"resolutions": {"tiny": 1.0}}},
        base=base,
    )
    items = discover_inputs(tmp / "in", cfg)
    ok = [i for i in items if "truncated" not in i.path and "not_a_video" not in i.path]
    frames_total = sum(v.num_frames for v in vids if v.expect != "failed")

    def best_of(fn, repeats: int = 3) -> float:
        """Minimum wall time over repeats: the machine is shared, the minimum is the signal."""
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    recs = [probe_stage(i, cfg) for i in ok]
    t_probe = best_of(lambda: [probe_stage(i, cfg) for i in ok])

    def decode_all() -> None:
        for i in ok:
            for _ in iter_small_frames(i.path, cfg.default.scenes.analysis_max_side):
                pass

    t_scene_decode = best_of(decode_all)
    t_scene = best_of(lambda: [scene_stage(r, cfg) for r in recs])
    recs = [scene_stage(r, cfg) for r in recs]
    clips = [c for r in recs for c in r["clips"] if c["status"] == "pending"]

    plans = []
    for c in clips:
        s, e = c["start_frame"], c["end_frame"]
        sh = quality.evenly_spaced(s, e, cfg.default.sharpness.num_frames)
        hs = quality.evenly_spaced(s, e, cfg.dedup.num_frames)
        pairs = quality.motion_pairs(s, e)
        idx = sorted(set(sh) | set(hs) | {i for p in pairs for i in p})
        plans.append((c, sh, hs, pairs, idx))
    t_dec = best_of(lambda: [read_frames(c["path"], idx, fps=c["fps"]) for c, *_, idx in plans])
    decoded = [read_frames(c["path"], idx, fps=c["fps"]) for c, *_, idx in plans]
    t_sharp = best_of(
        lambda: [quality.sharpness([fr[i] for i in p[1]]) for p, fr in zip(plans, decoded)]
    )
    t_motion = best_of(
        lambda: [
            quality.motion([(fr[a], fr[b]) for a, b in p[3]], cfg.default.motion)
            for p, fr in zip(plans, decoded)
        ]
    )
    t_hash = best_of(
        lambda: [[quality.phash(fr[i]) for i in p[2]] for p, fr in zip(plans, decoded)]
    )

    e2e = {}
    for workers in (1, 2):
        c = CurationConfig.from_dict({"workers": workers}, base=cfg)
        t = time.perf_counter()
        res = curate(tmp / "in", tmp / f"out{workers}", c)
        e2e[workers] = (time.perf_counter() - t, res.counts.get("kept", 0), len(res.table()))

    # Pre-encoding with the debug VAE (random weights: speed only) and a trivial text
    # encoder, split into frame decode + resize vs VAE compute.
    import torch

    from mugv_data.stages.encode import clip_pixels
    from mugv_vae import VAEConfig, VideoVAE

    torch.manual_seed(0)
    vae = VideoVAE(VAEConfig.preset("debug")).eval()
    kept = [r for r in res.table().to_pylist() if r["status"] == "kept"][:6]
    t_enc_dec = t_enc_vae = 0.0
    for r in kept:
        t = time.perf_counter()
        px = clip_pixels({**r, "bucket_fps": cfg.buckets.fps})
        t_enc_dec += time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad():
            vae.encode(px[None])
        t_enc_vae += time.perf_counter() - t

    n_vid, n_clip = len(ok), len(clips)

    def per_min(n: float, sec: float) -> str:
        return f"{60 * n / sec:,.0f}" if sec > 0 else "-"

    scene_compute = max(t_scene - t_scene_decode, 0.0)
    rows = [
        ("probe (open + first frame)", f"{n_vid} videos", per_min(n_vid, t_probe), f"{t_probe:.2f}", "decode-bound"),
        ("scene split", f"{n_vid} videos, {frames_total} frames", per_min(n_vid, t_scene), f"{t_scene:.2f}",
         f"decode {t_scene_decode:.2f} s / detect {scene_compute:.2f} s"),
        ("clip frames (seek + decode)", f"{n_clip} clips", per_min(n_clip, t_dec), f"{t_dec:.2f}", "decode"),
        ("sharpness", f"{n_clip} clips", per_min(n_clip, t_sharp), f"{t_sharp:.3f}", "compute"),
        ("motion (Farneback, 3 pairs)", f"{n_clip} clips", per_min(n_clip, t_motion), f"{t_motion:.3f}", "compute"),
        ("perceptual hash", f"{n_clip} clips", per_min(n_clip, t_hash), f"{t_hash:.3f}", "compute"),
    ]  # fmt: skip
    for w, (sec, n_kept, total) in e2e.items():
        rows.append((f"end to end, {w} worker(s)", f"{len(items)} files -> {total} clips ({n_kept} kept)",
                     per_min(total, sec), f"{sec:.2f}", "incl. dedup, buckets, Parquet"))  # fmt: skip
    rows.append(("encode: frames (decode + resize)", f"{len(kept)} kept clips", per_min(len(kept), t_enc_dec),
                 f"{t_enc_dec:.2f}", "decode"))  # fmt: skip
    rows.append(("encode: debug VAE", f"{len(kept)} clips, 9-25 frames at 48x64", per_min(len(kept), t_enc_vae),
                 f"{t_enc_vae:.2f}", "compute (the 10B-stack VAE is far heavier)"))  # fmt: skip
    decode = t_scene_decode + t_dec + t_probe
    compute = scene_compute + t_sharp + t_motion + t_hash
    lines = [
        f"Synthetic set: {len(items)} files, {args.width}x{args.height} px, 24 fps, 1.5-4.5 s "
        f"per file; {n_clip} candidate clips. Stage rows run in one process (best of 3); "
        "the VAE row encodes the first 6 kept clips. Machine load "
        f"average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared "
        "with other jobs, so figures are pessimistic; each spawned worker starts a fresh "
        "interpreter, which weighs on a set this small).",
        "",
        "| stage | work | clips (or videos) / min | seconds | where the time goes |",
        "|---|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows],
        "",
        f"Decode vs compute over the per-stage rows: decode {decode:.2f} s "
        f"({100 * decode / (decode + compute):.0f} %), compute {compute:.2f} s "
        f"({100 * compute / (decode + compute):.0f} %).",
        "Model stages (aesthetics, VLM) depend on the model chosen and are not in "
        "this table. GPU: not measured on GPU (the curation stages are CPU stages).",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        cmd = "python packages/mugv-data/benchmarks/bench_curation.py " + " ".join(sys.argv[1:])
        _results_module().write_section("mugv-data curation", body, command=cmd.strip())


if __name__ == "__main__":
    main()
