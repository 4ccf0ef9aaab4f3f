"""CPU steps/s of the debug recipe on synthetic shards; writes benchmarks/RESULTS.md.

python packages/mugv-train/benchmarks/bench_debug_cpu.py [--steps 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import tempfile
import time
from pathlib import Path


def _results():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_results", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    import torch

    from mugv_train import LogConfig, train, write_synthetic_shards
    from mugv_train.recipes import debug

    with tempfile.TemporaryDirectory() as tmp:
        shards = write_synthetic_shards(
            Path(tmp) / "shards", num_samples=32, frames=2, height=8, width=8
        )
        cfg = debug(str(shards), str(Path(tmp) / "out"))
        cfg = dataclasses.replace(
            cfg, train_steps=args.steps, log=LogConfig(log_every=10, tensorboard=False, progress=False),
            checkpoint=dataclasses.replace(cfg.checkpoint, save_every=10_000),
        )  # fmt: skip
        t0 = time.perf_counter()
        result = train(cfg)
        dt = time.perf_counter() - t0
    tokens = 2 * 2 * 4 * 4  # batch 2 x (2 latent frames x 4 x 4 patches)
    body = (
        "| setting | value |\n|---|---|\n"
        f"| model | debug preset (2 blocks, D 288, 4 heads), text dim 384 |\n"
        f"| batch | 2 x [24, 2, 8, 8] latents ({tokens} video tokens per step) |\n"
        f"| steps | {args.steps} (includes model build, data open, final export) |\n"
        f"| CPU steps/s | {args.steps / dt:.2f} |\n"
        f"| CPU tokens/s | {args.steps * tokens / dt:.0f} |\n"
        f"| threads | {torch.get_num_threads()} |\n"
        f"| machine load (1-min average, shared cores) | {os.getloadavg()[0]:.1f} |\n"
        f"| loss first -> last | {result.losses[0]:.3f} -> {result.losses[-1]:.3f} |\n"
        "| GPU MFU / memory (10b-width blocks, 360p / 720p) | not measured on GPU "
        "(script: `packages/mugv-train/benchmarks/bench_blocks_gpu.py`) |\n"
    )
    _results().write_section(
        "mugv-train: debug recipe (CPU)",
        body,
        command=f"python packages/mugv-train/benchmarks/bench_debug_cpu.py --steps {args.steps}",
    )
    print(body)


if __name__ == "__main__":
    main()
