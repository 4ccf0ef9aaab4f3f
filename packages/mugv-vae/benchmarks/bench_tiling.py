"""Tiled vs untiled VideoVAE output (PSNR, max-abs error) and time, random and trained.

The debug preset, CPU, one thread. Models: the random-init debug model, and the same model
after a short run of the trainer on synthetic clips. Input: a synthetic 9-frame 64 x 64 clip.
Compared: ``tile_mode="exact"`` (layer-by-layer tiles, global GroupNorm statistics) and
``tile_mode="blend"`` (whole network per overlapping tile, linear blending).

    python packages/mugv-vae/benchmarks/bench_tiling.py [--steps 40]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import tempfile
import time
from pathlib import Path

import torch


def _results_module():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_results", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def compare(model, video: torch.Tensor, variants: list[dict]) -> list[dict]:
    """PSNR / max-abs of tiled vs untiled encode (latents) and decode (pixels)."""
    from mugv_vae import VideoVAE

    n = video.shape[2]
    model = model.eval()
    rows = []
    with torch.no_grad():
        (z, t_enc) = _timed(model.encode, video)
        (y, t_dec) = _timed(model.decode, z, n)
        rows.append(dict(variant="untiled", enc_s=t_enc, dec_s=t_dec))
        for v in variants:
            tiled = VideoVAE(model.config.replace(**v)).eval()
            tiled.load_state_dict(model.state_dict())
            zt, te = _timed(tiled.encode, video)
            yt, td = _timed(tiled.decode, z, n)
            rows.append(
                dict(
                    variant=f"{v['tile_mode']}, tile {v['tile_latent_size']}"
                    + (
                        f" / overlap {v['tile_latent_overlap']}"
                        if v["tile_mode"] == "blend"
                        else ""
                    ),
                    enc_psnr=_psnr(zt, z),
                    enc_err=float((zt - z).abs().max()),
                    dec_psnr=_psnr(yt, y),
                    dec_err=float((yt - y).abs().max()),
                    enc_s=te,
                    dec_s=td,
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40, help="trainer steps for 'trained'")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from mugv_vae import TrainConfig, VAEConfig, VAETrainer, VideoVAE
    from mugv_vae._video_io import synthetic_clip

    torch.manual_seed(0)
    random_model = VideoVAE(VAEConfig.preset("debug"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            output_dir=tmp, vae=VAEConfig.preset("debug"), num_frames=8, height=32, width=32,
            batch_size=2, steps=args.steps, lr=2e-3, checkpoint_every=10**6, device="cpu",
        )  # fmt: skip
        trainer = VAETrainer(cfg)
        t0 = time.perf_counter()
        hist = trainer.train()
        train_s = time.perf_counter() - t0
        trained = trainer.model
    video = synthetic_clip(10**6, 9, 64, 64)[None]
    variants = [
        dict(tile_latent_size=4, tile_latent_overlap=1, tile_mode="exact"),
        dict(tile_latent_size=3, tile_latent_overlap=1, tile_mode="exact"),
        dict(tile_latent_size=6, tile_latent_overlap=4, tile_mode="blend"),
        dict(tile_latent_size=4, tile_latent_overlap=2, tile_mode="blend"),
    ]
    sections = []
    for name, model in (("random-init", random_model), (f"trained {args.steps} steps", trained)):
        rows = compare(model, video, variants)
        for r in rows:
            print(name, r, flush=True)
        lines = [
            f"**{name}**",
            "",
            "| variant | encode PSNR dB | encode max-abs | decode PSNR dB | decode max-abs "
            "| encode s | decode s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["variant"] == "untiled":
                lines.append(f"| untiled | - | - | - | - | {r['enc_s']:.2f} | {r['dec_s']:.2f} |")
            else:
                lines.append(
                    f"| {r['variant']} | {r['enc_psnr']:.1f} | {r['enc_err']:.2g} "
                    f"| {r['dec_psnr']:.1f} | {r['dec_err']:.2g} | {r['enc_s']:.2f} "
                    f"| {r['dec_s']:.2f} |"
                )
        sections.append("\n".join(lines))
    body = [
        "Debug preset, fp32, CPU, 1 thread. Input: synthetic 9-frame 64 x 64 clip (8 x 8 "
        "latents). Latent PSNR uses the [-1, 1] peak convention (peak-to-peak 2) like pixels. "
        f"'trained': {args.steps} trainer steps on synthetic 8 x 32 x 32 clips (lr 2e-3, "
        f"batch 2; {train_s:.0f} s; training-batch PSNR {hist[0]['psnr']:.1f} -> "
        f"{hist[-1]['psnr']:.1f} dB). exact = layer-by-layer tiles with global two-pass GroupNorm; "
        "blend = whole network per overlapping tile, linear blend (per-tile statistics).",
        "",
        *("\n\n".join(sections).splitlines()),
        "",
        "GPU: not measured on GPU.",
    ]
    cmd = "python packages/mugv-vae/benchmarks/bench_tiling.py" + (
        f" --steps {args.steps}" if args.steps != 40 else ""
    )
    _results_module().write_section("mugv-vae tiling", "\n".join(body), command=cmd)


if __name__ == "__main__":
    main()
