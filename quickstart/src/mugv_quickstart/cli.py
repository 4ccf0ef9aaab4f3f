"""``mugv-quickstart``: raw clips to generated video on a CPU, with every package of the stack.

    mugv-quickstart                       # the full run into ./quickstart-out (~15 min, 2 cores)
    mugv-quickstart --fast --out DIR      # the reduced run the tests use (~2-3 min)
    mugv-quickstart --seed 1 --out DIR    # another seed; rerun the same line to resume

Threads are set before torch is imported: these models are tiny, so intra-op threads
gain little and, on a busy machine, spinning OpenMP workers cost far more than they
give (measured 5-10x slower VAE steps at 2 threads on a loaded 2-core box).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mugv-quickstart",
        description=(
            "Synthesize a captioned video set, curate it (mugv-data), train a debug VAE "
            "(mugv-vae) and DiT (mugv-train), generate T2V and I2V clips (mugv-infer) and "
            "write a report. Interrupted? Run the same command again: finished stages are "
            "skipped."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("quickstart-out"),
                   help="output folder (default: ./quickstart-out)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the whole run (default: 0)")
    p.add_argument("--fast", action="store_true",
                   help="the reduced run (fewer clips and steps; what the tests run)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: 1; see the module docstring)")  # fmt: skip
    p.add_argument("--stop-after", metavar="STAGE", default=None,
                   help="stop after this stage (synth, curate, vae, encode, dit, generate, "
                   "evaluate, report); rerun without it to go on")  # fmt: skip
    return p


_STAGE_NAMES = ("synth", "curate", "vae", "encode", "dit", "generate", "evaluate", "report")


def _bad_input(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments (checked before torch loads), or None."""
    if args.threads < 1:
        return f"--threads must be >= 1, got {args.threads}"
    if args.seed < 0:
        return f"--seed must be >= 0, got {args.seed}"
    if args.stop_after is not None and args.stop_after not in _STAGE_NAMES:
        return f"--stop-after {args.stop_after!r} is not a stage; choose one of {_STAGE_NAMES}"
    if args.out.exists() and not args.out.is_dir():
        return f"--out {args.out} exists and is not a folder"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _bad_input(args)
    if problem is not None:
        print(f"mugv-quickstart: error: {problem}", file=sys.stderr)
        return 2
    # Before torch loads OpenMP: idle workers sleep instead of spinning.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: all runs offline

    import torch

    from mugv_quickstart.config import QuickstartConfig
    from mugv_quickstart.runner import RunError, run_stages
    from mugv_quickstart.stages import STAGES

    torch.set_num_threads(args.threads)
    config = QuickstartConfig.preset("fast" if args.fast else "full", seed=args.seed)
    start = time.perf_counter()
    try:
        results = run_stages(STAGES, args.out, config, stop_after=args.stop_after)
    except (RunError, ValueError, FileNotFoundError) as e:
        print(f"mugv-quickstart: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "mugv-quickstart: interrupted; finished stages are kept, rerun to resume",
            file=sys.stderr,
        )
        return 130
    spent = time.perf_counter() - start
    if "report" in results:
        out = args.out / "report"
        print(
            f"\nDone in {spent / 60:.1f} min. Report: {out / 'report.md'}\n"
            f"Contact sheet: {out / 'contact_sheet.png'}  Loss curves: {out / 'loss_curves.png'}\n"
            f"Videos: {args.out / 'generate'}/{{trained,untrained}}/{{t2v,i2v}}/*.mp4\n"
            f"Regenerate them: uv run sh {args.out / 'generate' / 'regenerate.sh'}",
            file=sys.stderr,
        )
        band = results["report"].get("band") if isinstance(results["report"], dict) else None
        if band is not None:
            print(f"Figures within the range seen on other machines: {band}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
