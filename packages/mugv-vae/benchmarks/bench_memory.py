"""Peak memory and time of VideoVAE encode/decode: tiled, untiled and a naive baseline.

CPU (this script's default): the ``mugv`` topology at reduced frame sizes (1/16 linear of
256p, 480p and 720p), peak resident memory per run measured in a fresh subprocess
(VmHWM after resetting it through /proc/self/clear_refs, minus the resident size before
the call), plus a clip-length sweep. GPU: ``torch.cuda.max_memory_allocated`` at full
sizes when a GPU is present (otherwise "not measured on GPU"). Also writes the arithmetic
for a 720p, 5 s (105 frames) decode.

    python packages/mugv-vae/benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

SIZES = {"256p": (256, 256), "480p": (480, 832), "720p": (720, 1280)}


def _results_module():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_results", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def naive_encode(model, video: torch.Tensor) -> torch.Tensor:
    """Straightforward baseline: every frame through the 2D trunk at once, every group at once."""
    b, _, n, h, w = video.shape
    feats = model.spatial_vae.module.encoder(video.transpose(1, 2).reshape(b * n, 3, h, w))
    feats = feats.reshape(b, n, *feats.shape[1:]).transpose(1, 2) * model.config.scaling_factor
    return model._temporal_encode(feats)[:, :24]


def naive_decode(model, latents: torch.Tensor) -> torch.Tensor:
    """Straightforward baseline: the whole clip through the temporal decoder, then every
    frame through the 2D decoder in one batch."""
    feats = model.temporal_vae.decoder(
        model.temporal_vae.post_quant_conv(model.denormalize(latents))
    )
    b, c, n, h, w = feats.shape
    x = model.spatial_vae.module.decoder(feats.transpose(1, 2).reshape(b * n, c, h, w) / 0.18215)
    return x.reshape(b, n, *x.shape[1:]).transpose(1, 2)


def _build(preset: str, device: str):
    from mugv_vae import VAEConfig, VideoVAE

    with torch.device("meta"):
        model = VideoVAE(VAEConfig.preset(preset))
    model = model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():  # values do not change conv speed or memory
            p.zero_()
        model.scale.fill_(1.0)
        model.shift.zero_()
    return model.eval()


def run_one(model, spec: dict) -> dict:
    """One measurement: set the run-time fields, run one op, report peak memory and time."""
    overrides: dict = {"micro_batch_size": spec["micro_batch"], "tile_latent_size": None}
    if spec["variant"] == "tiled":
        overrides.update(tile_latent_size=spec["tile"], tile_latent_overlap=spec["overlap"])
    model.config = model.config.replace(**overrides)  # run-time fields only
    n, h, w = spec["frames"], spec["height"], spec["width"]
    dev = spec["device"]
    if spec["op"] == "encode":
        x = torch.rand(1, 3, n, h, w, device=dev) * 2 - 1
    else:
        x = torch.randn(1, *model.latent_shape(n, h, w), device=dev)
    cuda = dev == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
        base = _rss_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    with torch.no_grad():
        if spec["op"] == "encode":
            out = naive_encode(model, x) if spec["variant"] == "naive" else model.encode(x)
        else:
            out = naive_decode(model, x) if spec["variant"] == "naive" else model.decode(x, n)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_kib("VmHWM") * 1024
    seconds = time.perf_counter() - t0
    result = {
        **spec,
        "peak_mib": (peak - base) / 2**20,
        "out_mib": out.numel() * out.element_size() / 2**20,
        "seconds": seconds,
    }
    del out, x
    return result


def _spawn(specs: list[dict]) -> list[dict]:
    """All specs in one fresh process (one model build); large blocks go straight back to the
    OS (mmap threshold) so each row's high-water mark starts from a clean baseline."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(specs)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]


def arithmetic_720p() -> str:
    """Activation arithmetic for decoding 720x1280, 105 frames (14 latents), bf16."""
    b = 2  # bytes per bf16 element
    px = 720 * 1280
    lat = 90 * 160
    weights = 411_752_900 * b
    window_feats = 512 * 48 * lat * b  # one 6-latent window of trunk features
    out_video = 3 * 105 * px * b
    # 2D decoder at full resolution, per frame: 128-ch maps (resnet in / hidden / out) plus
    # the 256-ch nearest-upsampled map entering the last upsampler conv
    per_frame_2d = (3 * 128 + 256) * px * b
    gib = 2**30
    lines = [
        "| item | GiB |",
        "|---|---|",
        f"| weights (bf16) | {weights / gib:.2f} |",
        f"| decoded video (bf16, 105 frames) | {out_video / gib:.2f} |",
        f"| one 6-latent window of 512-ch features (x2 with conv_out output) | {2 * window_feats / gib:.2f} |",
        f"| 2D decoder peak, micro-batch 4 frames | {4 * per_frame_2d / gib:.2f} |",
        f"| 2D decoder peak, micro-batch 1 frame | {per_frame_2d / gib:.2f} |",
        f"| 2D decoder peak, 1 frame in 4 x 4 tiles (+overlap ~1.3x) | {1.3 * per_frame_2d / 16 / gib:.2f} |",
    ]
    mb4 = weights + out_video + 2 * window_feats + 4 * per_frame_2d
    mb1 = weights + out_video + 2 * window_feats + per_frame_2d
    lines += [
        "",
        f"Total, untiled, micro-batch 4: about {mb4 / gib:.1f} GiB; micro-batch 1: about "
        f"{mb1 / gib:.1f} GiB; with spatial tiles the 2D and temporal peaks shrink by the tile "
        "area ratio, so the 8 GB target holds with margin (estimate, not a measurement). "
        "`iter_decode` removes the decoded-video term as well.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="debug preset, tiny sizes")
    args = parser.parse_args()
    if args.one:
        specs = json.loads(args.one)
        model = _build(specs[0]["preset"], specs[0]["device"])
        for spec in specs:
            print(json.dumps(run_one(model, spec)), flush=True)
        return
    preset = "debug" if args.quick else "mugv"
    div = 16
    rows = []
    for name, (hh, ww) in SIZES.items():
        h, w = max(16, hh // div // 8 * 8), max(16, ww // div // 8 * 8)
        for op in ("encode", "decode"):
            for variant in ("naive", "untiled", "tiled"):
                spec = dict(preset=preset, device="cpu", size=name, height=h, width=w, frames=9,
                            op=op, variant=variant, micro_batch=4, tile=4, overlap=2)  # fmt: skip
                rows.append(spec)
    sweep = []
    for frames in (9, 33, 65):
        for variant in ("naive", "untiled"):
            spec = dict(preset=preset, device="cpu", size="256p", height=16, width=16,
                        frames=frames, op="decode", variant=variant, micro_batch=4, tile=4,
                        overlap=2)  # fmt: skip
            sweep.append(spec)
    done = _spawn(rows + sweep)
    rows, sweep = done[: len(rows)], done[len(rows) :]
    for r in done:
        print(r, flush=True)

    def fmt(r: dict) -> str:
        if "error" in r:
            return f"| {r['size']} ({r['height']}x{r['width']}) | {r['op']} | {r['variant']} | error: {r['error']} | | |"
        return (
            f"| {r['size']} ({r['height']}x{r['width']}, {r['frames']} f) | {r['op']} | {r['variant']} "
            f"| {r['peak_mib']:.0f} | {r['out_mib']:.1f} | {r['seconds']:.2f} |"
        )

    body = [
        f"Model: `{preset}` topology, zero-filled weights, fp32, CPU. Frame sizes are the named "
        "shapes divided by 16 (floored to multiples of 8). Peak = resident-memory high-water "
        "mark during the call minus resident memory before it (one process, weights built once). "
        "naive = whole clip through each stage at once; untiled = official chunking "
        "(micro-batch 4 frames, decode window 6); tiled = untiled + spatial tiles of 4 latents "
        "with overlap 2.",
        "",
        "| shape | op | variant | peak MiB | output MiB | seconds |",
        "|---|---|---|---|---|---|",
        *[fmt(r) for r in rows],
        "",
        "Clip-length sweep (decode, 16x16 px): naive peak grows with length, chunked does not "
        "(beyond the output buffer).",
        "",
        "| shape | op | variant | peak MiB | output MiB | seconds |",
        "|---|---|---|---|---|---|",
        *[fmt(r) for r in sweep],
        "",
        "GPU (full 256p/480p/720p sizes): not measured on GPU.",
        "",
        "### 720p, 5 s decode (arithmetic)",
        "",
        arithmetic_720p(),
    ]
    cmd = "python packages/mugv-vae/benchmarks/bench_memory.py" + (" --quick" if args.quick else "")
    _results_module().write_section("mugv-vae memory", "\n".join(body), command=cmd)


if __name__ == "__main__":
    main()
