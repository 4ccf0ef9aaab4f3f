"""CPU figures of the diffusers integration: pipeline time with and without diffusers'
offload modes (target = the CPU itself, so the figure is the hooks' overhead), and the
size and speed of the torchao-quantized debug DiT.

    uv run python packages/mugv-infer/benchmarks/bench_diffusers.py

Writes the "mugv-infer diffusers integration (CPU)" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

import torch

import mugv_dit
import mugv_vae
from mugv_infer import MUGVPipeline, OfficialQuirks, torchao_config


def _results():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Text:
    """Fixed random 'encoder' (no download): prompts -> [B, 8, 384]."""

    dim = 384

    def __call__(self, texts):
        g = torch.Generator().manual_seed(0)
        emb = torch.randn(len(texts), 8, 384, generator=g)
        return emb, torch.ones(len(texts), 8, dtype=torch.bool)


def _time(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    from diffusers import DiffusionPipeline
    from torchao.utils import get_model_size_in_bytes

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dit = mugv_dit.MUGDiT(mugv_dit.DiTConfig.preset("debug", text_dim=384))
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vae = mugv_vae.VideoVAE(mugv_vae.VAEConfig.preset("debug"))
    pipe = MUGVPipeline(dit, vae, _Text(), quirks=OfficialQuirks.official())
    args = dict(duration=17, height=64, width=64, steps=4, progress=False, seed=7,
                output_type="latent")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp)
        base = _time(lambda: pipe("a fox", **args))
        rows.append(("no offload", base))
        for mode in ("model_cpu", "group_block", "ours_block"):
            p = DiffusionPipeline.from_pretrained(tmp, text_encoder=None, tokenizer=None)
            p._prompt_fn = _Text()
            if mode == "model_cpu":
                p.enable_model_cpu_offload(device="cpu")
            elif mode == "group_block":
                p.enable_group_offload(torch.device("cpu"), torch.device("cpu"),
                                       offload_type="block_level", num_blocks_per_group=1)  # fmt: skip
            else:
                p.enable_block_offload(prefetch=1)
            rows.append((mode, _time(lambda p=p: p("a fox", **args))))
        x = torch.randn(2, 24, 3, 8, 8)
        t = torch.tensor([700.0, 700.0])
        text = torch.randn(2, 8, 384)
        qrows = []
        for kind in (None, "int8", "fp8"):
            extra = {} if kind is None else {"quantization_config": torchao_config(kind)}
            model = mugv_dit.MUGDiT.from_pretrained(
                Path(tmp) / "dit", dtype=torch.bfloat16, **extra
            )
            with torch.no_grad():
                sec = _time(lambda m=model: m(x, t, text))
            qrows.append((kind or "bf16", get_model_size_in_bytes(model), sec))
    body = ["Debug DiT/VAE, 64 x 64, 17 frames, 4 steps, CFG, 1 thread; offload target is the "
            "CPU (overhead of the hooks only).", "",
            "| pipeline | s per call | vs no offload |", "|---|---|---|"]  # fmt: skip
    body += [f"| {name} | {sec:.3f} | {sec / base:.2f}x |" for name, sec in rows]
    body += ["", "Debug DiT forward (2 x 3 x 8 x 8 latents), bf16 compute:", "",
             "| weights | model bytes | s per forward |", "|---|---|---|"]  # fmt: skip
    body += [f"| {k} | {b / 1e6:.2f} MB | {s:.4f} |" for k, b, s in qrows]
    body += ["", "10b arithmetic (int8/fp8 DiT 10.97 GB vs 21.66 GB bf16): docs/memory.md."]
    _results().write_section(
        "mugv-infer diffusers integration (CPU)",
        "\n".join(body),
        command="uv run python packages/mugv-infer/benchmarks/bench_diffusers.py",
    )
    print("\n".join(body))


if __name__ == "__main__":
    main()
