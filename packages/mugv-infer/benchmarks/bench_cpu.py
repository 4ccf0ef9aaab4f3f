"""CPU benchmark: time per sampling step of the debug model, and the step cache trade-off.

Run: ``python packages/mugv-infer/benchmarks/bench_cpu.py`` (writes its section of
benchmarks/RESULTS.md). Weights are random (speed does not depend on their values); the
text encoder is replaced by fixed random embeddings of the official shape (300 tokens).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from pathlib import Path

import torch

import mugv_dit
import mugv_vae
from mugv_infer import MUGVPipeline, OfficialQuirks, psnr


def _results():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FixedText:
    """Fixed random text embeddings [S=300, E] per prompt, 40 valid tokens (a short prompt).

    The same prompt always gets the same embedding, so runs are comparable.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, prompts):
        gens = [torch.Generator().manual_seed(sum(map(ord, p))) for p in prompts]
        emb = torch.stack([torch.randn(300, self.dim, generator=g) for g in gens])
        mask = torch.zeros(len(prompts), 300, dtype=torch.bool)
        mask[:, :40] = True
        return emb, mask


def build(text_dim: int) -> MUGVPipeline:
    torch.manual_seed(0)
    dit = mugv_dit.MUGDiT(mugv_dit.DiTConfig.preset("debug", text_dim=text_dim))
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vae = mugv_vae.VideoVAE(mugv_vae.VAEConfig.preset("debug"))
    return MUGVPipeline(dit.eval(), vae.eval(), FixedText(text_dim), quirks=OfficialQuirks())


def time_per_step(pipe, frames, height, width, steps, repeats):
    runs = []
    for _ in range(repeats + 1):  # first run warms up
        out = pipe("p", duration=frames, height=height, width=width, steps=steps,
                   output_type="latent", progress=False)  # fmt: skip
        runs.append(out.timings["sampling"] / steps)
    return statistics.median(runs[1:]), tuple(out.latents.shape)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = build(text_dim=4096)
    rows = []
    for frames, h, w in [(17, 48, 48), (33, 128, 128), (105, 128, 224)]:
        per_step, shape = time_per_step(pipe, frames, h, w, steps=4, repeats=args.repeats)
        tokens = shape[2] * (shape[3] // 2) * (shape[4] // 2) + 2
        rows.append(
            f"| {frames} x {h} x {w} | {tuple(shape[1:])} | {tokens} | {per_step * 1e3:.1f} |"
        )
    table = (
        "CPU time per sampling step of the `debug` DiT (2 blocks, 288 wide), CFG in one batch "
        "(2 x tokens), 300-token text, float32, median of "
        f"{args.repeats} runs, {args.threads} threads:\n\n"
        "| clip (N x H x W) | latent (C, T, h, w) | tokens | ms / step |\n|---|---|---|---|\n"
        + "\n".join(rows)
    )

    # Step cache: 25 steps against the uncached run, and against plain sampling with as many
    # DiT calls as the cache made (the fair baseline for a given compute budget).
    kwargs = dict(duration=33, height=128, width=128, output_type="latent", progress=False)
    refs = [pipe("p", steps=25, **kwargs) for _ in range(3)]
    ref = refs[0]
    t_ref = statistics.median(r.timings["sampling"] for r in refs)
    span = float(ref.latents.max() - ref.latents.min())
    cache_rows = []
    for threshold in (0.05, 0.1, 0.2, 0.4):
        pipe.enable_step_cache(threshold)
        out = pipe("p", steps=25, **kwargs)
        calls = 25 - len(pipe.step_cache.skipped_steps)
        pipe.disable_step_cache()
        plain = pipe("p", steps=calls, **kwargs)
        cache_rows.append(
            f"| {threshold} | {calls} / 25 | {25 / calls:.2f}x | "
            f"{t_ref / out.timings['sampling']:.2f}x | "
            f"{psnr(out.latents, ref.latents, span):.1f} | "
            f"{psnr(plain.latents, ref.latents, span):.1f} |"
        )
    plain24 = psnr(pipe("p", steps=24, **kwargs).latents, ref.latents, span)
    cache = (
        "\n\nStep cache (TeaCache-style, `enable_step_cache(threshold)`), debug DiT, "
        "33 x 128 x 128, 25 steps. PSNR of the final latents against the uncached 25-step "
        "run (peak = latent range), next to plain sampling with the same number of DiT "
        "calls:\n\n"
        "| threshold | DiT calls | ideal speed-up | measured sampling speed-up | PSNR cache "
        "(dB) | PSNR plain, same calls (dB) |\n|---|---|---|---|---|---|\n"
        + "\n".join(cache_rows)
        + "\n\n"
        f"For scale: plain 24 steps vs 25 steps is {plain24:.1f} dB. Weights are random, so "
        "these PSNRs show the knob's trend only; quality must be re-measured with the "
        "official checkpoint. Measured speed-ups are single runs on a shared 2-core machine "
        "(noisy)."
    )
    gpu = (
        "\n\nGPU (10b at 720p 5 s: time per step, end-to-end time, peak memory per memory "
        "option): not measured on GPU (no device lent); see `bench_gpu.py` and "
        "`docs/memory.md` for the arithmetic."
    )
    body = table + cache + gpu
    print(body)
    _results().write_section(
        "mugv-infer: sampling (CPU)",
        body,
        command="python packages/mugv-infer/benchmarks/bench_cpu.py",
    )


if __name__ == "__main__":
    main()
