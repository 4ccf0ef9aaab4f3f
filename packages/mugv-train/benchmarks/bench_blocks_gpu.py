"""GPU MFU and peak memory of 10b-width MUG-DiT blocks at 50,402 tokens (720p, 5 s), with
the Transformer Engine layer spec and with the local spec.

Forward + backward of ``--layers`` blocks (D 3456, 48 heads, MLP 13,824) on one GPU, TP 1,
bf16 weights (as Megatron's ``Float16Module`` holds them), full recompute as in the
official scripts, micro-batch 1, 300 caption tokens. ``--fp8`` adds the TE spec under
Megatron's FP8 context. Reports the time per step, achieved TFLOP/s, MFU against the
dense bf16 peak of the device (``mugv_train.flops.peak_flops``) and peak allocated memory,
and writes them to ``benchmarks/RESULTS.md``:

    python packages/mugv-train/benchmarks/bench_blocks_gpu.py --layers 2 [--fp8]

Without CUDA (or without transformer-engine for the TE rows) it records "not measured on
GPU" for what it could not run.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

# 720p 5 s: 1280 x 720 -> 160 x 90 latents -> 80 x 45 patches, 14 latent frames, + start/end
SEQUENCES = {"720p 5s": 14 * 80 * 45 + 2}  # 50,402 tokens
CAPTION = 300


def _results():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_results", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _has_te() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def _measure(impl: str, fp8: bool, layers: int, iters: int, tokens: int) -> dict[str, float]:
    """One block stack of ``impl`` at ``tokens`` tokens: seconds, TFLOP/s, MFU, peak GiB."""
    import torch

    from mugv_dit import DiTConfig
    from mugv_train import ParallelConfig, dit_forward_flops
    from mugv_train.flops import peak_flops
    from mugv_train.parallel import init_distributed
    from mugv_train.parallel._layers import MUGDiTBlockStack
    from mugv_train.parallel._model import megatron_transformer_config
    from mugv_train.parallel._spec import mugdit_layer_spec

    parallel = ParallelConfig(precision="bf16", recompute="full", transformer_impl=impl, fp8=fp8)
    init_distributed(parallel)
    cfg = DiTConfig.preset("10b", depth=layers)
    tcfg = megatron_transformer_config(cfg, parallel)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    stack = MUGDiTBlockStack(tcfg, mugdit_layer_spec(impl), 0, layers)
    stack = stack.to(device="cuda", dtype=torch.bfloat16).train()
    d, s = cfg.hidden_size, CAPTION
    if fp8:
        s = -(-s // 16) * 16  # TE's FP8 GEMM rows
        tokens = -(-tokens // 16) * 16
    bf = dict(device="cuda", dtype=torch.bfloat16)
    x = torch.randn(tokens, 1, d, requires_grad=True, **bf)
    mod = torch.randn(tokens, 1, 6 * d, **bf) * 0.1
    ctx = torch.randn(s, 1, d, **bf)
    cmask = torch.ones(1, s, dtype=torch.bool, device="cuda")
    angle = torch.rand(tokens, 1, 1, cfg.head_dim // 2, device="cuda") * 6.28
    rope = (angle.cos(), angle.sin())
    for i in range(iters + 1):
        if i == 1:  # the first step warms up kernels and TE's workspaces
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        y = stack(x, mod, ctx, cmask, rope, None)
        y.float().pow(2).mean().backward()
        x.grad = None
        stack.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / iters
    flops = 4.0 * dit_forward_flops(cfg, tokens - 2, CAPTION)  # fwd + recompute + 2 x bwd
    peak = peak_flops(torch.device("cuda"))
    del stack, x, y
    return {
        "s": dt,
        "tflops": flops / dt / 1e12,
        "mfu": flops / dt / peak if peak else float("nan"),
        "mem": torch.cuda.max_memory_allocated() / 2**30,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--fp8", action="store_true", help="add the TE spec under FP8")
    args = p.parse_args()
    import torch

    name = "mugv-train: 10b-width blocks (GPU)"
    cmd = f"python packages/mugv-train/benchmarks/bench_blocks_gpu.py --layers {args.layers}"
    cmd += " --fp8" if args.fp8 else ""
    if not torch.cuda.is_available():
        _results().write_section(
            name,
            "not measured on GPU (no CUDA device in this run): MFU and peak memory of "
            "10b-width blocks at 50,402 tokens (720p 5 s), TE spec and local spec",
            command=cmd,
        )
        print("not measured on GPU")
        return
    runs = [("local", False), ("transformer_engine", False)]
    if args.fp8:
        runs.append(("transformer_engine", True))
    rows = [
        "| spec | sequence | tokens | ms / step | TFLOP/s | MFU | peak memory GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for impl, fp8 in runs:
        label = "TE" if impl == "transformer_engine" else "local"
        label += " + FP8" if fp8 else ""
        for seq, tokens in SEQUENCES.items():
            if impl == "transformer_engine" and not _has_te():
                rows.append(
                    f"| {label} | {seq} | {tokens} | not measured: no transformer-engine |||||"
                )
                continue
            r = _measure(impl, fp8, args.layers, args.iters, tokens)
            rows.append(
                f"| {label} | {seq} | {tokens:,} | {r['s'] * 1e3:.0f} | {r['tflops']:.0f} | "
                f"{r['mfu']:.1%} | {r['mem']:.1f} |"
            )
            print(rows[-1], flush=True)
    body = (
        f"{args.layers} blocks of the 10b preset (D 3456, 48 heads, MLP 13,824), TP 1, bf16 "
        f"weights, full recompute, micro-batch 1, {CAPTION} caption tokens; MFU against the "
        "dense bf16 peak; FLOPs = 4 x forward (mugv_train.dit_forward_flops)\n\n" + "\n".join(rows)
    )
    _results().write_section(name, body, command=cmd)
    print(body)


if __name__ == "__main__":
    main()
