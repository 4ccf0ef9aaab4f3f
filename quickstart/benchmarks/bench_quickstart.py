"""Wall time per stage of the full quickstart, and what the run measured.

    python quickstart/benchmarks/bench_quickstart.py [--out DIR] [--fast]

Runs ``mugv-quickstart`` into ``--out`` (a finished run there is reused: its recorded
stage times are read back) and writes the "quickstart" section of benchmarks/RESULTS.md:
seconds per stage, the total against the 15-minute target, the caption agreement of the
trained and untrained DiT and the VAE's held-out PSNR.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

STAGES = ["synth", "curate", "vae", "encode", "dit", "generate", "evaluate", "report"]


def _results_module():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_mugv_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("quickstart-bench"))
    p.add_argument("--fast", action="store_true")
    args = p.parse_args()
    cmd = [sys.executable, "-m", "mugv_quickstart", "--out", str(args.out)]
    cmd += ["--fast"] if args.fast else []
    subprocess.run(cmd, check=True)

    done = {n: json.loads((args.out / n / "done.json").read_text()) for n in STAGES}
    total = sum(d["seconds"] for d in done.values())
    rows = "\n".join(f"| {n} | {done[n]['seconds']:.1f} |" for n in STAGES)
    agree = done["evaluate"]["summary"]["agreement"]
    acc = "\n".join(
        f"| {name} | {100 * a['colour']:.0f}% | {100 * a['direction']:.0f}% | "
        f"{100 * a['both']:.0f}% |"
        for name, a in agree.items()
    )
    latent = "\n".join(
        f"| {name} | {100 * a['colour']:.0f}% | {100 * a['direction']:.0f}% | {a['std']:.3f} |"
        for name, a in done["evaluate"]["summary"]["latent"].items()
    )
    vae = done["vae"]["summary"]
    body = f"""Preset `{"fast" if args.fast else "full"}`, seed 0, 1 torch thread. Stage times of
the run that finished each stage (a shared machine's load inflates them).

| stage | seconds |
|---|---|
{rows}
| **total** | **{total:.1f}** ({total / 60:.1f} min; target <= 15 min on 2 cores) |

Caption agreement of generated clips ({agree["real"]["count"]} held-out clips; chance 25%):

| clips | colour | direction | both |
|---|---|---|---|
{acc}

Latent probes (linear, fitted on the real training latents; no decoder involved):

| latents | colour | direction | latent std |
|---|---|---|---|
{latent}

VAE held-out PSNR: {vae["psnr_heldout"]:.2f} dB (untrained {vae["psnr_untrained"]:.2f} dB).
GPU: not measured on GPU (the quickstart is a CPU program).
"""
    mode = " --fast" if args.fast else ""
    where = _results_module().write_section(
        "quickstart", body, command=f"python quickstart/benchmarks/bench_quickstart.py{mode}"
    )
    print(f"wrote the quickstart section of {where}")


if __name__ == "__main__":
    main()
