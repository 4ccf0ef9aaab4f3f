"""Before/after CPU speed of the DiT and the VAE against an earlier commit, in one run.

The baseline is checked out with ``git worktree add`` into a temporary folder (removed at
the end). Each case runs in two long-lived worker processes, one importing the baseline's
``mugv_dit`` / ``mugv_vae`` sources and one the working tree's, with the same weights (the
current worker writes its state dict, the baseline worker loads it) and the same inputs.
The parent then times them alternately, A B A B ..., one repetition at a time, so both see
the same machine load; it reports the median of each, the median of the per-pair ratios
(baseline / current: > 1 means the current code is faster) and the spread of those ratios
(25th-75th percentile), plus the max-abs difference of the two outputs (numerics unchanged).

Cases (fp32, 2 intra-op threads):
  * DiT forward + backward, depth 4, width 576, batch 2, 258 tokens (and a larger one);
  * VAE encode, ``mugv`` topology, 17 x 64 x 64 (and a larger one).

    python benchmarks/bench_speed_vs_main.py [--baseline REV] [--reps N] [--cases a,b]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2

CASES: dict[str, dict] = {
    "dit-576": dict(kind="dit", depth=4, hidden=576, heads=8, batch=2, latent=(24, 4, 16, 16),
                    text=300, valid=120, reps=10),
    "dit-864": dict(kind="dit", depth=4, hidden=864, heads=12, batch=2, latent=(24, 4, 24, 24),
                    text=300, valid=120, reps=8),
    "vae-17x64x64": dict(kind="vae", frames=17, height=64, width=64, reps=5),
    "vae-9x96x96": dict(kind="vae", frames=9, height=96, width=96, reps=5),
}  # fmt: skip


def _describe(name: str) -> str:
    c = CASES[name]
    if c["kind"] == "dit":
        _, T, H, W = c["latent"]
        tokens = T * (H // 2) * (W // 2) + 2
        return (
            f"DiT fwd+bwd, depth {c['depth']}, width {c['hidden']} ({c['heads']} heads), "
            f"batch {c['batch']}, {tokens} tokens, text {c['text']} ({c['valid']} valid)"
        )
    return f"VAE encode, mugv topology, {c['frames']} x {c['height']} x {c['width']}"


# ---------------------------------------------------------------------------------------
# worker: one model, one repetition per "run" line on stdin
# ---------------------------------------------------------------------------------------


def _worker(src_root: str, name: str, weights: str, out: str) -> None:
    root = Path(src_root)
    sys.path[:0] = [str(root / "packages" / p / "src") for p in ("mugv-dit", "mugv-vae")]
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    c = CASES[name]
    g = torch.Generator().manual_seed(1)
    if c["kind"] == "dit":
        from mugv_dit import DiTConfig, MUGDiT

        model = MUGDiT(DiTConfig(depth=c["depth"], hidden_size=c["hidden"], num_heads=c["heads"]))
        B, S = c["batch"], c["text"]
        x = torch.randn(B, *c["latent"], generator=g)
        text = torch.randn(B, S, model.config.text_dim, generator=g)
        mask = torch.zeros(B, S, dtype=torch.bool)
        mask[:, : c["valid"]] = True
        t = torch.linspace(100.0, 900.0, B)
        model.train()

        def step() -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            y = model(x, t, text, mask)
            y.square().mean().backward()
            return torch.cat([y.detach().flatten(), model.blocks[0].attn.qkv.weight.grad.flatten()])

    else:
        from mugv_vae import VAEConfig, VideoVAE

        model = VideoVAE(VAEConfig.preset("mugv")).eval()
        video = torch.rand(1, 3, c["frames"], c["height"], c["width"], generator=g) * 2 - 1

        def step() -> torch.Tensor:
            with torch.no_grad():
                return model.encode(video)

    if Path(weights).exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:  # random weights everywhere (the DiT's zero-initialised layers included)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02 + p)
        torch.save(model.state_dict(), weights)
    torch.save(step(), out)  # warm-up run, and the output to compare
    module = sys.modules["mugv_dit" if c["kind"] == "dit" else "mugv_vae"]
    print(f"{name}: code from {Path(module.__file__).parent}", file=sys.stderr, flush=True)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        print(json.dumps([time.perf_counter() - t0, time.process_time() - c0]), flush=True)


# ---------------------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------------------


class _Worker:
    def __init__(self, root: Path, name: str, weights: Path, out: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(root), name, str(weights), str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")

    def _expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == word:
                return
        raise RuntimeError(f"worker exited with {self.proc.wait()}")

    def run(self) -> tuple[float, float]:
        """One repetition: (wall seconds, process CPU seconds)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        wall, cpu = json.loads(self.proc.stdout.readline())
        return float(wall), float(cpu)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def measure(name: str, baseline_root: Path, reps: int, tmp: Path) -> dict:
    import torch

    weights = tmp / f"{name}.weights.pt"
    cur = _Worker(ROOT, name, weights, tmp / f"{name}.current.pt")
    base = _Worker(baseline_root, name, weights, tmp / f"{name}.baseline.pt")
    a_out = torch.load(tmp / f"{name}.current.pt", weights_only=True)
    b_out = torch.load(tmp / f"{name}.baseline.pt", weights_only=True)
    diff = float((a_out - b_out).abs().max())
    scale = float(b_out.abs().max())
    tb, tc, cb, cc = [], [], [], []
    try:
        for i in range(reps):
            order = (base, cur) if i % 2 == 0 else (cur, base)
            times = {id(w): w.run() for w in order}
            tb.append(times[id(base)][0])
            tc.append(times[id(cur)][0])
            cb.append(times[id(base)][1])
            cc.append(times[id(cur)][1])
            print(f"{name} rep {i}: baseline {tb[-1]:.3f} s, current {tc[-1]:.3f} s", flush=True)
    finally:
        cur.close()
        base.close()
    ratios = [b / c for b, c in zip(tb, tc)]
    return dict(
        cpu_ratio=statistics.median([b / c for b, c in zip(cb, cc)]),
        name=name,
        baseline_s=statistics.median(tb),
        current_s=statistics.median(tc),
        ratio=statistics.median(ratios),
        ratio_q25=_quantile(ratios, 0.25),
        ratio_q75=_quantile(ratios, 0.75),
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        reps=reps,
        max_abs_diff=diff,
        max_abs=scale,
    )


def _results_module():
    spec = importlib.util.spec_from_file_location("_results", ROOT / "benchmarks" / "_results.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="8774b2b", help="git revision to compare against")
    parser.add_argument("--reps", type=int, default=None, help="alternating repetitions per case")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--no-write", action="store_true", help="print only, no RESULTS.md")
    parser.add_argument(
        "--include",
        default=None,
        help="JSON list of rows printed by an earlier run against the same baseline, put in "
        "the table first (when one run cannot measure every case)",
    )
    args = parser.parse_args()
    names = [n for n in args.cases.split(",") if n]
    rows = json.loads(Path(args.include).read_text()) if args.include else []
    earlier = {r["name"] for r in rows}
    with tempfile.TemporaryDirectory(prefix="mugv-speed-") as tmp_name:
        tmp = Path(tmp_name)
        wt = tmp / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), args.baseline],
            check=True,
            capture_output=True,
        )
        rev = subprocess.run(
            ["git", "-C", str(wt), "rev-parse", "--short", "HEAD"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        try:
            for name in names:
                reps = args.reps or CASES[name]["reps"]
                rows.append(measure(name, wt, reps, tmp))
                print(rows[-1], flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False
            )
    lines = [
        "| case | baseline s (median) | current s (median) | speed-up (median of pair "
        "ratios) | ratio IQR | ratio min-max | CPU-time speed-up | pairs "
        "| max-abs output diff (of max-abs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {_describe(r['name'])} | {r['baseline_s']:.3f} | {r['current_s']:.3f} "
            f"| {r['ratio']:.2f}x | {r['ratio_q25']:.2f}-{r['ratio_q75']:.2f} "
            f"| {r['ratio_min']:.2f}-{r['ratio_max']:.2f} | {r['cpu_ratio']:.2f}x | {r['reps']} "
            f"| {r['max_abs_diff']:.2g} ({r['max_abs']:.2g}) |"
        )
    body = "\n".join(
        [
            f"Baseline: commit {rev} (`git worktree`), current: the working tree. fp32, CPU, "
            f"{THREADS} intra-op threads, same weights and inputs, one warm-up each, then "
            "alternating single repetitions (A B, B A, ...). The machine is shared with other "
            "jobs, so single timings swing; the ratio of each adjacent pair is the robust "
            "figure; CPU-time speed-up = median pair ratio of process CPU seconds. Weights: "
            "the initialisation plus N(0, 0.02) noise on every parameter (so no layer is zero). "
            "DiT output diff: the prediction and block 0's qkv weight gradient."
            + (
                f" Rows {', '.join(sorted(earlier))} come from an earlier run of this script "
                "against the same baseline (`--include`), the others from this run."
                if earlier
                else ""
            ),
            "",
            *lines,
            "",
            "GPU: not measured on GPU.",
        ]
    )
    print(body)
    if not args.no_write:
        cmd = "python benchmarks/bench_speed_vs_main.py" + (
            f" --baseline {args.baseline}" if args.baseline != "8774b2b" else ""
        )
        if earlier:
            cmd += f" --cases {args.cases} --reps {args.reps} --include ROWS.json"
        _results_module().write_section("speed vs main (CPU)", body, command=cmd)


if __name__ == "__main__":
    main()
