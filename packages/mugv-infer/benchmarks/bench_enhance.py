"""Enhancer benchmark: time per enhancement (CPU, tiny config) and, on a GPU, the 1.3B enhancer
at 105 x 1280 x 720 (time and peak memory per memory option).

Run: ``python packages/mugv-infer/benchmarks/bench_enhance.py`` (CPU; writes its section of
benchmarks/RESULTS.md) or ``... --gpu`` on a CUDA machine. Weights are random: speed and
memory do not depend on their values. The GPU run replaces the umT5-XXL encoder by fixed
random text embeddings [1, 512, 4096] (the encoder runs once per prompt, and with offload
it is alone on the GPU), so its figures are the VAE encode, the two DiT passes and the
decode.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch

from mugv_infer import EnhancerQuirks, MUGVEnhancer


def _results():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Tokenizer:
    """Word ids of a fixed toy vocabulary, padded to ``max_length`` with EOS (the call
    signature the enhancer uses; speed does not depend on the vocabulary)."""

    def __call__(self, texts, *, max_length, **kwargs):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            words = [*[3 + len(w) % 5 for w in text.split()][: max_length - 1], 1]
            ids[i, : len(words)] = torch.tensor(words)
            mask[i, : len(words)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def build(
    *, dim, heads, layers, ffn, text_dim, t5_layers, vae_base, rank, device, dtype
) -> MUGVEnhancer:
    """Random components of the enhancer's shapes (in_channels 32, LoRA on every target)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import UMT5Config, UMT5EncoderModel

    from mugv_infer.enhance._weights import LORA_TARGET_REGEX

    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(
            num_attention_heads=heads, attention_head_dim=dim // heads, in_channels=32,
            out_channels=16, text_dim=text_dim, ffn_dim=ffn, num_layers=layers,
        ).to(dtype)  # fmt: skip
        config = LoraConfig(r=rank, lora_alpha=4.0, target_modules=LORA_TARGET_REGEX)
        inject_adapter_in_model(config, transformer)
        transformer.to(dtype).eval().requires_grad_(False)
        vae = AutoencoderKLWan(base_dim=vae_base).to(dtype).eval().requires_grad_(False)
        t5 = UMT5EncoderModel(
            UMT5Config(
                vocab_size=8,
                d_model=text_dim,
                d_kv=64,
                d_ff=64,
                num_layers=t5_layers,
                num_heads=max(1, text_dim // 64),
                is_encoder_decoder=False,
            )
        ).to(dtype)
    return MUGVEnhancer(transformer, vae, t5.eval(), _Tokenizer(), device=device,
                        quirks=EnhancerQuirks())  # fmt: skip


def cpu(repeats: int, threads: int) -> str:
    torch.set_num_threads(threads)
    enhancer = build(dim=64, heads=2, layers=2, ffn=96, text_dim=32, t5_layers=2, vae_base=8,
                     rank=16, device="cpu", dtype=torch.float32)  # fmt: skip
    rows = []
    for frames, h, w in [(17, 64, 64), (33, 128, 128)]:
        video = torch.rand(1, 3, frames, h, w) * 2 - 1
        runs = []
        for _ in range(repeats + 1):  # the first run warms up
            t0 = time.perf_counter()
            out = enhancer(video, "high quality", seed=0, output_type="pt")
            runs.append((time.perf_counter() - t0, out.timings))
        total = statistics.median(r[0] for r in runs[1:])
        stage = {k: statistics.median(r[1][k] for r in runs[1:]) for k in runs[-1][1]}
        tokens = out.latents.shape[2] * (h // 16) * (w // 16)
        rows.append(
            f"| {frames} x {h} x {w} | {tuple(out.latents.shape[1:])} | {tokens} | "
            f"{total * 1e3:.0f} | {stage['text'] * 1e3:.0f} | {stage['encode'] * 1e3:.0f} | "
            f"{stage['refine'] * 1e3:.0f} | {stage['decode'] * 1e3:.0f} |"
        )
    return (
        "CPU time per enhancement (one step, CFG 2.0: two DiT passes) of a tiny random "
        "enhancer: DiT 2 blocks x 64 wide (2 heads) with the rank-16 LoRA on every target, Wan "
        "VAE base width 8, umT5 2 layers x 32 wide over 512 tokens; float32, median of "
        f"{repeats} runs, {threads} threads, on a shared machine (other jobs running: "
        "noisy, an upper bound):\n\n"
        "| clip (N x H x W) | latent (C, T, h, w) | DiT tokens | total ms | text ms | encode ms "
        "| refine ms | decode ms |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )


def gpu() -> str:
    """The 1.3B enhancer (Wan2.1-T2V-1.3B shapes + rank-256 LoRA) at 105 x 1280 x 720."""
    dev = torch.device("cuda")
    rows = []
    for mode in ("none", "model", "block"):
        for tiling in (False, True):
            torch.cuda.empty_cache()
            enhancer = build(dim=1536, heads=12, layers=30, ffn=8960, text_dim=4096, t5_layers=1,
                             vae_base=96, rank=256, device="cpu" if mode != "none" else "cuda",
                             dtype=torch.bfloat16)  # fmt: skip
            enhancer.device = dev
            if mode == "model":
                enhancer.enable_model_offload()
            elif mode == "block":
                enhancer.enable_block_offload()
            if tiling:
                enhancer.enable_vae_tiling()
            video = torch.rand(1, 3, 105, 1280, 720) * 2 - 1
            ctx = torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16)
            torch.cuda.reset_peak_memory_stats()
            try:
                t0 = time.perf_counter()
                z = enhancer.encode_video(video)
                torch.cuda.synchronize()
                t1 = time.perf_counter()
                x = enhancer.refine(z, ctx, ctx, generator=torch.Generator().manual_seed(0))
                torch.cuda.synchronize()
                t2 = time.perf_counter()
                enhancer.decode_latents(x)
                torch.cuda.synchronize()
                t3 = time.perf_counter()
                peak = torch.cuda.max_memory_allocated() / 2**30
                rows.append(f"| {mode} | {tiling} | {t1 - t0:.1f} | {t2 - t1:.1f} | "
                            f"{t3 - t2:.1f} | {peak:.1f} |")  # fmt: skip
            except torch.OutOfMemoryError:
                rows.append(f"| {mode} | {tiling} | OOM | | | |")
            del enhancer
    return (
        "GPU: the 1.3B enhancer (random weights, bf16, rank-256 LoRA unmerged) at 105 x 1280 x "
        "720 (latent 16 x 27 x 160 x 90, 97,200 DiT tokens), text embeddings precomputed:\n\n"
        "| offload | VAE tiling | encode s | refine s (2 DiT passes) | decode s | peak GiB |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu", action="store_true", help="measure the 1.3B enhancer on CUDA")
    args = parser.parse_args()
    if args.gpu:
        body = gpu()
        name, command = "mugv-infer: enhancer (GPU)", "bench_enhance.py --gpu"
    else:
        body = cpu(args.repeats, args.threads) + (
            "\n\nGPU (1.3B enhancer at 105 x 1280 x 720: time and peak memory per memory "
            "option): not measured on GPU (no device lent); run `bench_enhance.py --gpu`. "
            "The arithmetic is in `docs/memory.md` (enhancer section)."
        )
        name, command = "mugv-infer: enhancer (CPU)", "bench_enhance.py"
    print(body)
    _results().write_section(name, body, command=f"python packages/mugv-infer/benchmarks/{command}")


if __name__ == "__main__":
    main()
