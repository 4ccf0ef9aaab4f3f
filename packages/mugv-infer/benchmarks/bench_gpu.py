"""GPU benchmark: 10b at 720p 5 s per memory option (time per step, end-to-end, peak memory).

Run on a CUDA machine: ``python packages/mugv-infer/benchmarks/bench_gpu.py``. Weights are
random bf16 (speed and memory do not depend on their values, and nothing is downloaded);
the text encoder is replaced by random embeddings of the T5 shape [300, 4096] with 120 valid
tokens (T5 time and memory are reported by ``docs/memory.md`` arithmetic only). Without a
GPU it records "not measured on GPU".

Modes: ``resident`` (everything on the GPU, the official way), ``model`` (component
offload), ``block`` (DiT streamed block by block, the 24 GB mode). Steps are timed over
``--steps`` sampler steps and extrapolated to 25 for the end-to-end figure, which adds the
measured decode.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

import mugv_dit
import mugv_vae
from mugv_infer import MUGVPipeline, OfficialQuirks


def _results():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RandomT5:
    dim = 4096

    def __call__(self, prompts):
        emb = torch.randn(len(prompts), 300, self.dim)
        mask = torch.zeros(len(prompts), 300, dtype=torch.bool)
        mask[:, :120] = True
        return emb, mask


def _random(module: torch.nn.Module, device: str) -> torch.nn.Module:
    module = module.to_empty(device=device)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.02)
    return module


def build(mode: str, preset: str, attention: str, device: str) -> MUGVPipeline:
    home = "cpu" if mode in ("model", "block") else device
    with torch.device("meta"):
        dit = mugv_dit.MUGDiT(mugv_dit.DiTConfig.preset(preset, attention_backend=attention))
        vae = mugv_vae.VideoVAE(mugv_vae.VAEConfig.preset("mugv"))
    # bf16 on the meta device first: 10b never exists in float32 (43 GB) anywhere.
    dit = _random(dit.to(torch.bfloat16), home).eval()
    vae = _random(vae.to(torch.bfloat16), home).eval()
    vae.scale.fill_(1.0)
    vae.shift.zero_()
    pipe = MUGVPipeline(dit, vae, RandomT5(), device=device, quirks=OfficialQuirks())
    if mode == "model":
        pipe.enable_model_offload()
    elif mode == "block":
        pipe.enable_block_offload(prefetch=1)
    return pipe


def measure(mode: str, args: argparse.Namespace) -> str:
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
    try:
        pipe = build(mode, args.preset, args.attention, args.device)
        if args.compile:
            pipe.compile()
        kwargs = dict(duration=args.duration, progress=False)
        if args.size:
            kwargs["height"], kwargs["width"] = map(int, args.size.split("x"))
        else:
            kwargs["aspect"] = "16:9"
        pipe("warm-up", steps=1, output_type="latent", **kwargs)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        out = pipe("benchmark", steps=args.steps, output_type="pt", **kwargs)
        if cuda:
            torch.cuda.synchronize()
    except torch.OutOfMemoryError:
        return f"| {mode} | out of memory | | | |"
    per_step = out.timings["sampling"] / args.steps
    end_to_end = 25 * per_step + out.timings["decode"] + out.timings["reference"]
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")
    del pipe
    return (
        f"| {mode} | {per_step:.2f} | {out.timings['decode']:.1f} | {end_to_end:.0f} | {peak:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="10b")
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "flash", "xformers"])
    parser.add_argument("--modes", default="block,model,resident")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", help="HxW instead of the 720p 16:9 size (dry runs)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the table without writing RESULTS.md"
    )
    args = parser.parse_args()
    results = _results()
    command = "python packages/mugv-infer/benchmarks/bench_gpu.py"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        body = (
            f"{args.preset} at 720p ({args.duration}), per memory option: not measured on GPU "
            "(no CUDA device). Arithmetic: `docs/memory.md`."
        )
        print(body)
        results.write_section("mugv-infer: 10b generation (GPU)", body, command=command)
        return
    if not args.device.startswith("cuda") and not args.dry_run:
        raise SystemExit("a CPU run of this GPU benchmark must be a --dry-run")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rows = [measure(mode, args) for mode in args.modes.split(",")]
    body = (
        f"{args.preset}, {args.size or '1280x720'} (HxW), {args.duration}, CFG in one batch, bf16, attention "
        f"{args.attention}{', torch.compile' if args.compile else ''}; random weights; "
        f"step time over {args.steps} steps, end-to-end = 25 steps + decode (T5 excluded):\n\n"
        "| mode | s / step | decode (s) | end-to-end (s) | peak GPU memory (GB) |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows)
    )
    print(body)
    if not args.dry_run:
        results.write_section("mugv-infer: 10b generation (GPU)", body, command=command)


if __name__ == "__main__":
    main()
