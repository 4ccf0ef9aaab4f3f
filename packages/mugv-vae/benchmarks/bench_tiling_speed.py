"""Time cost of exact tiling and of chunked decoding, against the untiled / whole-clip run.

The ``mugv`` topology (init plus N(0, 0.02) noise on every weight), fp32, CPU, one model
pair in one process. Each comparison alternates the two variants one repetition at a time
(A B, B A, ...) so both see the same machine load, and reports the median time of each,
the median of the per-pair ratios (variant / reference: < 1.5 is the target) and their
spread (min-max), plus the difference of the outputs (PSNR with the [-1, 1] peak
convention, and max-abs).

  * exact tiling: ``tile_mode="exact"`` with ``tile_latent_size`` latents vs untiled, encode
    and decode, at 720p-shaped frames (720 x 1280 / 16, floored to multiples of 8: 40 x 80)
    and a larger 1/8-scale 80 x 160 frame;
  * chunked decode: the default ``decode_window`` (6 latents) vs the whole clip in one
    window, at 9, 33 and 65 frames (16 x 16): seconds per frame should stay flat.

    python packages/mugv-vae/benchmarks/bench_tiling_speed.py [--reps N] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
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
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


def _alternate(fa, fb, reps: int) -> dict:
    """Time fa (reference) and fb (variant) alternately; ratios are fb / fa per pair."""
    ta, tb = [], []
    for i in range(reps):
        for which in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            (fa if which == 0 else fb)()
            (ta if which == 0 else tb).append(time.perf_counter() - t0)
    ratios = [b / a for a, b in zip(ta, tb)]
    return dict(
        ref_s=statistics.median(ta),
        var_s=statistics.median(tb),
        ratio=statistics.median(ratios),
        rmin=min(ratios),
        rmax=max(ratios),
    )


def _model(**fields):
    from mugv_vae import VAEConfig, VideoVAE

    torch.manual_seed(0)
    model = VideoVAE(VAEConfig.preset("mugv", **fields)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def tiling_rows(frames: int, h: int, w: int, tile: int, reps: int) -> list[str]:
    base = _model()
    tiled = _model(tile_latent_size=tile, tile_latent_overlap=1, tile_mode="exact")
    tiled.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(2)
    video = torch.rand(1, 3, frames, h, w, generator=g) * 2 - 1
    rows = []
    with torch.no_grad():
        z, zt = base.encode(video), tiled.encode(video)  # warm-up and outputs
        y, yt = base.decode(z, frames), tiled.decode(z, frames)
        for op, ref, got, fa, fb in (
            ("encode", z, zt, lambda: base.encode(video), lambda: tiled.encode(video)),
            ("decode", y, yt, lambda: base.decode(z, frames), lambda: tiled.decode(z, frames)),
        ):
            r = _alternate(fa, fb, reps)
            err = float((got - ref).abs().max())
            rows.append(
                f"| {frames} x {h} x {w} ({h // 8} x {w // 8} latents) | {op} | {tile} "
                f"| {r['ref_s']:.2f} | {r['var_s']:.2f} | {r['ratio']:.2f}x "
                f"| {r['rmin']:.2f}-{r['rmax']:.2f} | {_psnr(got, ref):.1f} | {err:.2g} |"
            )
            print(rows[-1], flush=True)
    return rows


def chunk_rows(lengths: list[int], reps: int) -> list[str]:
    model = _model()
    rows = []
    with torch.no_grad():
        for n in lengths:
            g = torch.Generator().manual_seed(3)
            z = model.encode(torch.rand(1, 3, n, 16, 16, generator=g) * 2 - 1)
            t = z.shape[2]
            chunked = model.decode(z, n)
            whole = model.decode(z, n, window=t)
            r = _alternate(
                lambda z=z, n=n, t=t: model.decode(z, n, window=t),
                lambda z=z, n=n: model.decode(z, n),
                reps,
            )
            rows.append(
                f"| {n} | {t} | {r['ref_s']:.2f} | {r['var_s']:.2f} "
                f"| {1e3 * r['var_s'] / n:.0f} | {r['ratio']:.2f}x | {r['rmin']:.2f}-{r['rmax']:.2f} "
                f"| {float((chunked - whole).abs().max()):.2g} |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3, help="alternating pairs per figure")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--tile", type=int, default=4, help="tile_latent_size")
    parser.add_argument("--no-write", action="store_true", help="print only, no RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tiles = [
        *tiling_rows(9, 40, 80, args.tile, args.reps),
        *tiling_rows(9, 80, 160, 2 * args.tile, args.reps),
    ]
    chunks = chunk_rows([9, 33, 65], args.reps)
    body = "\n".join(
        [
            f"`mugv` topology (init + N(0, 0.02) noise on every weight), fp32, CPU, "
            f"{args.threads} intra-op thread(s), micro-batch 4 frames. Alternating single "
            "repetitions (A B, B A, ...) on a machine shared with other jobs: the ratio of "
            "each adjacent pair is the robust figure (median, min-max over "
            f'{args.reps} pairs). exact = `tile_mode="exact"` (layer-by-layer tiles, global '
            "two-pass GroupNorm statistics); PSNR/max-abs of the tiled output against the "
            "untiled one (latents for encode, pixels for decode; [-1, 1] peak convention).",
            "",
            "| frames x H x W | op | tile (latents) | untiled s | exact tiled s "
            "| tiled / untiled (median) | ratio min-max | PSNR dB | max-abs |",
            "|---|---|---|---|---|---|---|---|---|",
            *tiles,
            "",
            "Chunked decode (`decode_window` 6 latents) vs the whole clip in one window, "
            "16 x 16 frames:",
            "",
            "| frames | latents | whole clip s | chunked s | chunked ms / frame "
            "| chunked / whole (median) | ratio min-max | max-abs diff |",
            "|---|---|---|---|---|---|---|---|",
            *chunks,
            "",
            "(Windows are decoded independently, as the official code does, so chunked and "
            "whole-clip outputs differ at window edges: the max-abs column is that "
            "difference, not an error.)",
            "",
            "GPU: not measured on GPU.",
        ]
    )
    print(body)
    if not args.no_write:
        cmd = "python packages/mugv-vae/benchmarks/bench_tiling_speed.py"
        _results_module().write_section("mugv-vae tiling speed (CPU)", body, command=cmd)


if __name__ == "__main__":
    main()
