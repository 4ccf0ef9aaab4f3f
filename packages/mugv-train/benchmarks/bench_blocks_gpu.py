"""GPU MFU and peak memory of 10b-width MUG-DiT blocks at 360p and 720p sequence lengths.

Runs forward + backward of ``--layers`` blocks (D 3456, 48 heads) in bf16 on one GPU with
TP = 1 and reports achieved TFLOP/s, MFU against the dense bf16 peak and peak memory.
    python packages/mugv-train/benchmarks/bench_blocks_gpu.py --layers 2
On a machine without CUDA it records "not measured on GPU".
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

# latent tokens per sample: 360p 5 s (640x360 -> 80x45 latents -> 40x22 patches, 14 frames)
# and 720p 5 s (1280x720 -> 80x45 patches, 14 frames), reference §E
SEQUENCES = {"360p 5s": 14 * 40 * 22, "720p 5s": 14 * 80 * 45}


def _results():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_results", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args()
    import torch

    name = "mugv-train: 10b-width blocks (GPU)"
    cmd = f"python packages/mugv-train/benchmarks/bench_blocks_gpu.py --layers {args.layers}"
    if not torch.cuda.is_available():
        _results().write_section(
            name, "not measured on GPU (no CUDA device in this run)", command=cmd
        )
        print("not measured on GPU")
        return
    from mugv_dit import DiTConfig
    from mugv_train import ParallelConfig, dit_forward_flops
    from mugv_train.flops import peak_flops
    from mugv_train.parallel import init_distributed
    from mugv_train.parallel._layers import MUGDiTBlockStack
    from mugv_train.parallel._model import megatron_transformer_config
    from mugv_train.parallel._spec import mugdit_layer_spec

    parallel = ParallelConfig(precision="bf16", recompute="full")
    init_distributed(parallel)
    cfg = DiTConfig.preset("10b", depth=args.layers)
    tcfg = megatron_transformer_config(cfg, parallel)
    stack = MUGDiTBlockStack(tcfg, mugdit_layer_spec("local"), 0, args.layers).cuda().train()
    rows = ["| sequence | tokens | TFLOP/s | MFU | peak memory GiB |", "|---|---|---|---|---|"]
    for label, n in SEQUENCES.items():
        L, D, S = n + 2, cfg.hidden_size, 300
        x = torch.randn(L, 1, D, device="cuda", requires_grad=True)
        mod = torch.randn(L, 1, 6 * D, device="cuda")
        ctx = torch.randn(S, 1, D, device="cuda")
        cmask = torch.ones(1, S, dtype=torch.bool, device="cuda")
        half = cfg.head_dim // 2
        rope = (torch.ones(L, 1, 1, half, device="cuda"), torch.zeros(L, 1, 1, half, device="cuda"))
        torch.cuda.reset_peak_memory_stats()
        for i in range(args.iters + 1):
            if i == 1:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = stack(x, mod, ctx, cmask, rope, None)
            y.float().pow(2).mean().backward()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.iters
        flops = 4.0 * dit_forward_flops(cfg, n, S)  # recompute on
        tflops = flops / dt / 1e12
        mfu = flops / dt / peak_flops(torch.device("cuda"))
        mem = torch.cuda.max_memory_allocated() / 2**30
        rows.append(f"| {label} | {L} | {tflops:.1f} | {mfu:.1%} | {mem:.1f} |")
    body = (
        f"{args.layers} blocks, D 3456, bf16 autocast, full recompute, TP 1, local spec + SDPA\n\n"
        + "\n".join(rows)
    )
    _results().write_section(name, body, command=cmd)
    print(body)


if __name__ == "__main__":
    main()
