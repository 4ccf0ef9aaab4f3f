"""GPU benchmark of MUG-DiT (needs CUDA; not run on the CPU-only development machines).

    python packages/mugv-dit/benchmarks/bench_gpu.py [--blocks 2] [--attention auto|sdpa|flash|xformers]

1. Device copy bandwidth (``dst.copy_(src)`` on 1 GiB), the ceiling for element-wise ops.
2. Each fused Triton kernel, forward and backward, at the 720p 5 s shape in bf16
   (50,402 tokens x 3456): achieved bandwidth, its share of the copy bandwidth (target
   >= 80 %) and the speed-up over the eager torch reference.
3. Forward+backward model-FLOPs utilisation of ``--blocks`` 10b-width `MUGDiTBlock`s at
   50,402 tokens with 300 text tokens in bf16 (target >= 45 % on an H100), eager and
   under ``torch.compile`` (the kernels are torch.library custom ops: no graph break).

``--attention auto`` (the default) takes flash-attn, else xformers, else torch SDPA,
whichever is installed.

Figures go to the ``mugv-dit GPU`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import flops_per_block, results_module

TOKENS = 50_402  # 14 latent frames x 80 x 45 patches + start/end (reference §E)
HIDDEN, HEADS, TEXT = 3456, 48, 300
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1}


def _time_ms(fn, iters: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def copy_bandwidth() -> float:
    src = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6  # GB/s


def _measure(fn, wrt: torch.Tensor, backend: str) -> tuple[float, float]:
    """(forward ms, backward ms) of ``fn(backend)``; backward = (fwd+bwd) - fwd."""
    dy = torch.randn_like(fn(backend))
    fwd = _time_ms(lambda: fn(backend))
    both = _time_ms(lambda: torch.autograd.grad(fn(backend), [wrt], dy))
    return fwd, max(both - fwd, 1e-6)


def kernel_rows(copy_gbs: float) -> list[str]:
    from mugv_dit import gated_residual, modulated_layernorm, qk_norm_rope

    dt, dev = torch.bfloat16, "cuda"
    B, L, D, N, K = 1, TOKENS, HIDDEN, HEADS, HIDDEN // HEADS
    x = torch.randn(B, L, D, device=dev, dtype=dt, requires_grad=True)
    br = torch.randn(B, L, D, device=dev, dtype=dt, requires_grad=True)
    mod = torch.randn(B, 2, D, device=dev, dtype=dt, requires_grad=True)
    bias = torch.randn(D, device=dev, dtype=dt, requires_grad=True)
    use_t = torch.rand(B, L, device=dev) > 0.1
    q = torch.randn(B, L, N, K, device=dev, dtype=dt, requires_grad=True)
    w = torch.randn(K, device=dev, dtype=dt, requires_grad=True)
    ang = torch.rand(1, L, K // 2, device=dev) * 400
    cos, sin = ang.cos(), ang.sin()
    act = B * L * D * 2  # bytes of one bf16 activation
    # (name, fn(backend), input whose gradient is taken, bytes forward, bytes backward):
    # the [B, L, D] activations read and written (the [B, 2, D] vectors are negligible)
    ops = [
        ("modulated_layernorm", lambda be: modulated_layernorm(x, mod, mod, use_t, backend=be), x, 2 * act, 3 * act),
        ("gated_residual", lambda be: gated_residual(x, br, mod, use_t, bias, backend=be), br, 3 * act, 3 * act),
        ("qk_norm_rope", lambda be: qk_norm_rope(q, w, cos, sin, backend=be), q, 2 * act, 3 * act),
    ]  # fmt: skip
    rows = []
    for name, fn, wrt, fwd_bytes, bwd_bytes in ops:
        (tf, tb), (rf, rb) = (_measure(fn, wrt, be) for be in ("triton", "torch"))
        gf, gb = fwd_bytes / tf / 1e6, bwd_bytes / tb / 1e6
        rows.append(
            f"| {name} | {tf:.3f} / {tb:.3f} | {gf:.0f} ({100 * gf / copy_gbs:.0f} %) / "
            f"{gb:.0f} ({100 * gb / copy_gbs:.0f} %) | {rf / tf:.2f}x / {rb / tb:.2f}x |"
        )
    return rows


def pick_attention(requested: str) -> str:
    """``auto``: the fastest installed backend (flash-attn, xformers, then torch SDPA)."""
    if requested != "auto":
        return requested
    for backend, module in (("flash", "flash_attn"), ("xformers", "xformers")):
        if importlib.util.find_spec(module) is not None:
            return backend
    return "sdpa"


def mfu(
    n_blocks: int, attention: str, peak_tflops: float, compile_blocks: bool = False
) -> tuple[float, float]:
    from mugv_dit import DiTConfig, MUGDiTBlock

    cfg = DiTConfig.preset("10b", attention_backend=attention, kernel_backend="triton")
    dev, dt = "cuda", torch.bfloat16
    blocks = torch.nn.ModuleList(MUGDiTBlock(cfg) for _ in range(n_blocks)).to(dev, dt)
    for b in blocks:
        torch.nn.init.normal_(b.scale_shift_table, std=HIDDEN**-0.5)
    x0 = torch.randn(1, TOKENS, HIDDEN, device=dev, dtype=dt, requires_grad=True)
    t_mlp = torch.randn(1, 2, 6 * HIDDEN, device=dev, dtype=dt) * 0.1
    use_t = torch.ones(1, TOKENS, dtype=torch.bool, device=dev)
    use_t[:, [0, -1]] = False
    ang = torch.rand(1, TOKENS, 36, device=dev) * 100
    cos, sin = ang.cos(), ang.sin()
    text = torch.randn(1, TEXT, HIDDEN, device=dev, dtype=dt)
    run = [torch.compile(b, fullgraph=True) for b in blocks] if compile_blocks else list(blocks)

    def step():
        h = x0
        for b in run:
            h = b(
                h,
                t_mlp,
                use_t,
                cos,
                sin,
                text,
                None,
                attention_backend=attention,
                kernel_backend="triton",
            )
        h.float().square().mean().backward()

    ms = _time_ms(step, iters=5)
    flops = 3 * n_blocks * flops_per_block(TOKENS, HIDDEN, TEXT)
    achieved = flops / (ms / 1e3) / 1e12
    return ms, 100 * achieved / peak_tflops


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument(
        "--attention", default="auto", choices=["auto", "sdpa", "flash", "xformers"]
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak of the device"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device; CPU figures come from bench_cpu.py")
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    if peak is None:
        sys.exit(f"unknown peak bf16 TFLOP/s for {name}; pass --peak-tflops")
    attention = pick_attention(args.attention)
    copy_gbs = copy_bandwidth()
    lines = [
        f"Copy bandwidth (bf16, 1 GiB): {copy_gbs:.0f} GB/s. Kernels at {TOKENS} tokens x {HIDDEN} "
        "(q/k: 48 heads x 72), bf16:",
        "",
        "| kernel | time fwd / bwd (ms) | GB/s fwd / bwd (% of copy) | speed-up over eager torch fwd / bwd |",
        "|---|---|---|---|",
        *kernel_rows(copy_gbs),
    ]
    ms, pct = mfu(args.blocks, attention, peak)
    ms_c, pct_c = mfu(args.blocks, attention, peak, compile_blocks=True)
    lines += [
        "",
        f"{args.blocks} blocks of 10b width, {TOKENS} tokens, {TEXT} text tokens, bf16, "
        f"{attention} attention, triton kernels, forward+backward (no recompute; 3x forward "
        f"FLOPs, MFU of {peak:.0f} TFLOP/s): eager {ms:.1f} ms, MFU {pct:.1f} %; "
        f"torch.compile {ms_c:.1f} ms, MFU {pct_c:.1f} % ({ms / ms_c:.2f}x).",
    ]
    body = "\n".join(lines)
    print(body)
    results_module().write_section(
        "mugv-dit GPU",
        body,
        command="python packages/mugv-dit/benchmarks/bench_gpu.py " + " ".join(sys.argv[1:]),
    )


if __name__ == "__main__":
    main()
