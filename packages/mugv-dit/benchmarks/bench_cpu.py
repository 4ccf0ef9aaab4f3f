"""CPU benchmark of MUG-DiT: forward and forward+backward time and peak memory, plus the
Triton-interpreter correctness of every fused kernel (max error against the fp32 reference).

    .venv/bin/python packages/mugv-dit/benchmarks/bench_cpu.py

Each configuration runs in its own subprocess so that its peak resident memory (ru_maxrss)
is its own. Figures are written to the ``mugv-dit CPU`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    # name: (config kwargs, latent [C, T, H, W], text tokens)
    "debug preset (288/4, 2 blocks)": ({"preset": "debug"}, (24, 4, 16, 16), 300),
    "mid-size (576/8, 4 blocks)": (
        {"depth": 4, "hidden_size": 576, "num_heads": 8},
        (24, 4, 32, 32),
        300,
    ),
}
REPEATS = 5
# One intra-op thread: the 2-core machine is shared, and with 2 OpenMP threads under load
# every element-wise op stalls (measured 10x slower); best-of-N hides the remaining noise.
THREADS = 1


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(name: str) -> dict:
    import torch

    from mugv_dit import DiTConfig, MUGDiT

    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    kwargs, (C, T, H, W), S = CASES[name]
    cfg = DiTConfig.preset("debug") if "preset" in kwargs else DiTConfig(**kwargs)
    model = MUGDiT(cfg)
    x = torch.randn(1, C, T, H, W)
    text = torch.randn(1, S, cfg.text_dim)
    mask = torch.ones(1, S, dtype=torch.bool)
    mask[:, 120:] = False
    t = torch.tensor([500.0])
    tokens = T * (H // 2) * (W // 2) + 2
    base = _rss_mib()
    with torch.no_grad():
        model(x, t, text, mask)  # warm-up
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            model(x, t, text, mask)
            times.append(time.perf_counter() - start)
        fwd = min(times)
    fwd_peak = _rss_mib()
    model.train()
    model(x, t, text, mask).square().mean().backward()  # warm-up
    times = []
    for _ in range(REPEATS):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        model(x, t, text, mask).square().mean().backward()
        times.append(time.perf_counter() - start)
    fwd_bwd = min(times)
    return {
        "params": model.num_parameters(),
        "tokens": tokens,
        "fwd_ms": fwd * 1e3,
        "fwd_bwd_ms": fwd_bwd * 1e3,
        "base_rss": base,
        "fwd_peak_rss": fwd_peak,
        "peak_rss": _rss_mib(),
    }


def kernel_errors() -> list[tuple[str, float, float]]:
    """Max |triton - reference| for the output and the largest over all gradients."""
    os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from mugv_dit import gated_residual, modulated_layernorm, qk_norm_rope
    from mugv_dit.kernels.reference import (
        gated_residual_ref,
        modulated_layernorm_ref,
        qk_norm_rope_ref,
    )

    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).requires_grad_(True)

    B, L, D, N, K = 2, 67, 96, 5, 72
    use_t = torch.rand(B, L, generator=g) > 0.3
    angles = torch.rand(1, L, K // 2, generator=g) * 100
    cases = [
        ("modulated_layernorm", (rnd(B, L, D), rnd(B, 2, D), rnd(B, 2, D), use_t),
         lambda *a: modulated_layernorm(*a, backend="triton"), modulated_layernorm_ref),
        ("gated_residual", (rnd(B, L, D), rnd(B, L, D), rnd(B, 2, D), use_t, rnd(D)),
         lambda *a: gated_residual(*a, backend="triton"), gated_residual_ref),
        ("qk_norm_rope", (rnd(B, L, N, K), rnd(K), angles.cos(), angles.sin()),
         lambda *a: qk_norm_rope(*a, backend="triton"), qk_norm_rope_ref),
    ]  # fmt: skip
    rows = []
    for name, inputs, fast, ref in cases:
        out, want = fast(*inputs), ref(*inputs)
        dy = torch.randn(out.shape, generator=g)
        wrt = [t for t in inputs if t.requires_grad]
        ga = torch.autograd.grad(out, wrt, dy)
        gb = torch.autograd.grad(want, wrt, dy)
        grad_err = max((a - b).abs().max().item() for a, b in zip(ga, gb))
        rows.append((name, (out - want).abs().max().item(), grad_err))
    return rows


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        print(json.dumps(run_case(sys.argv[2])))
        return
    if len(sys.argv) == 2 and sys.argv[1] == "--kernels":
        print(json.dumps(kernel_errors()))
        return
    me = str(Path(__file__).resolve())
    lines = [
        "| config | params | tokens | forward (ms) | fwd+bwd (ms) | peak RSS fwd / fwd+bwd (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name in CASES:
        out = subprocess.run(
            [sys.executable, me, "--case", name], capture_output=True, text=True, check=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        lines.append(
            f"| {name} | {r['params'] / 1e6:.1f} M | {r['tokens']} | {r['fwd_ms']:.1f} | "
            f"{r['fwd_bwd_ms']:.1f} | {r['fwd_peak_rss']:.0f} / {r['peak_rss']:.0f} "
            f"(after build {r['base_rss']:.0f}) |"
        )
        print(lines[-1], flush=True)
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run(
        [sys.executable, me, "--kernels"], capture_output=True, text=True, check=True, env=env
    )
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    lines += [
        "",
        "Triton kernels through the interpreter (TRITON_INTERPRET=1), fp32, B=2 L=67 D=96 "
        "(q/k: 5 heads x 72), max abs error against the fp32 torch reference:",
        "",
        "| kernel | forward | worst gradient |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {f:.2e} | {gr:.2e} |" for n, f, gr in rows]
    lines += [
        "",
        f"Batch 1, text 300 tokens (120 valid), fp32, SDPA, torch kernel backend, {THREADS} "
        f"thread, best of {REPEATS} runs after one warm-up (shared machine). GPU figures (kernel bandwidth, MFU): "
        "not measured on GPU (run `benchmarks/bench_gpu.py` on a CUDA machine).",
    ]
    body = "\n".join(lines)
    print(body)
    results_module().write_section(
        "mugv-dit CPU", body, command="python packages/mugv-dit/benchmarks/bench_cpu.py"
    )


def results_module():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import results_module as load

    return load()


if __name__ == "__main__":
    main()
