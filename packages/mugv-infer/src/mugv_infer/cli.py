"""The ``mugv`` command: generate clips from a prompt, or a batch from a CSV / JSONL file.

    mugv generate --prompt "a fox in the snow" --image ref.png --aspect 16:9 --duration 5s \
        --steps 25 --cfg 4.0 --seed 42 --model MUG-V/MUG-V-inference --out clip.mp4
    mugv generate --batch prompts.jsonl --out-dir clips/

A batch file has one job per row: ``prompt`` (required) and optionally ``image``, ``seed``,
``out`` (file name, relative to ``--out-dir``), ``aspect``, ``duration``. CSV needs a header
row; JSONL has one JSON object per line. Relative image paths are read relative to the
batch file. Each written file's path is printed, one per line.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mugv_infer.presets import (
    ASPECT_RATIOS_720P,
    DURATIONS,
    OfficialQuirks,
    resolve_num_frames,
    resolve_size,
)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_JOB_KEYS = {"prompt", "image", "seed", "out", "aspect", "duration"}


def _duration(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mugv", description="MUG-V video generation")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate clips (text-to-video or image-to-video)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text prompt")
    src.add_argument("--batch", type=Path, help="CSV or JSONL file of jobs (see --help)")
    g.add_argument("--image", help="reference image for the first frame (image-to-video)")
    g.add_argument("--resolution", default="720p", help="resolution table (official: 720p)")
    g.add_argument(
        "--aspect",
        default="16:9",
        help=f"'H:W' key of the official table ({', '.join(ASPECT_RATIOS_720P)}); "
        "16:9 is 1280x720 portrait",
    )
    g.add_argument("--height", type=int, help="explicit height in pixels (with --width)")
    g.add_argument("--width", type=int, help="explicit width in pixels (with --height)")
    g.add_argument(
        "--duration",
        type=_duration,
        default="5s",
        help=f"{' or '.join(DURATIONS)} (official) or a frame count",
    )
    g.add_argument("--steps", type=int, default=25, help="sampling steps (official: 25)")
    g.add_argument("--cfg", type=float, default=4.0, help="CFG scale (official: 4.0)")
    g.add_argument("--seed", type=int, default=42, help="random seed (official: 42)")
    g.add_argument("--fps", type=float, default=30.0, help="fps fed to the model (official: 30)")
    g.add_argument("--negative-prompt", help="override the official negative prompt")
    g.add_argument("--no-aes-score", action="store_true", help="drop the aesthetic suffix")
    g.add_argument("--model", default="MUG-V/MUG-V-inference", help="Hub repo or local folder")
    g.add_argument("--text-encoder", default="DeepFloyd/t5-v1_1-xxl", help="Hub id or local folder")
    g.add_argument(
        "--vae-preset", default="mugv", help="VAE topology of an official vae.pt (mugv/debug)"
    )
    g.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    g.add_argument("--dtype", choices=sorted(_DTYPES), help="DiT/VAE dtype (default bf16 on GPU)")
    g.add_argument(
        "--offload",
        choices=["none", "model", "block"],
        default="none",
        help="CPU offload: whole components, or DiT block by block (10b on 24 GB)",
    )
    g.add_argument("--vae-tiling", action="store_true", help="decode in spatial tiles")
    g.add_argument(
        "--step-cache", type=float, metavar="THRESHOLD", help="enable the step cache (e.g. 0.1)"
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    g.add_argument(
        "--official",
        action="store_true",
        help="reproduce the official file too: 20 fps file, 1110/1108 px sizes",
    )
    g.add_argument("--local-files-only", action="store_true", help="never touch the network")
    g.add_argument("--out", type=Path, help="output MP4 (single prompt)")
    g.add_argument("--out-dir", type=Path, help="output folder (batch)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from mugv_infer.enhance._cli import add_generate_options, add_parser

    add_generate_options(g)  # --enhance and the enhancer's model options
    add_parser(sub)  # mugv enhance
    return parser


def read_jobs(path: Path) -> list[dict[str, Any]]:
    """Jobs of a CSV (header row) or JSONL batch file; each has at least a prompt."""
    if not path.is_file():
        raise SystemExit(f"mugv: batch file {path} does not exist")
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]]
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = [dict(r) for r in csv.DictReader(f)]
    elif suffix in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise SystemExit(f"mugv: {path}:{n} is not valid JSON ({exc})") from exc
    else:
        raise SystemExit(f"mugv: batch file must be .csv or .jsonl, got {path.name}")
    jobs = []
    for n, row in enumerate(rows, 1):
        row = {k: v for k, v in row.items() if v not in (None, "")}
        unknown = set(row) - _JOB_KEYS
        if unknown:
            raise SystemExit(
                f"mugv: {path} row {n} has unknown columns {sorted(unknown)}; "
                f"allowed: {sorted(_JOB_KEYS)}"
            )
        if not str(row.get("prompt", "")).strip():
            raise SystemExit(f"mugv: {path} row {n} has no prompt")
        if "image" in row and not Path(row["image"]).is_absolute():
            row["image"] = str(path.parent / row["image"])
        if "seed" in row:
            row["seed"] = int(row["seed"])
        if "duration" in row:
            row["duration"] = _duration(str(row["duration"]))
        jobs.append(row)
    if not jobs:
        raise SystemExit(f"mugv: batch file {path} has no jobs")
    return jobs


def _load_pipeline(args: argparse.Namespace):
    import mugv_vae
    from mugv_infer.pipeline import MUGVPipeline

    quirks = OfficialQuirks.official() if args.official else OfficialQuirks()
    pipe = MUGVPipeline.from_pretrained(
        args.model,
        text_encoder=args.text_encoder,
        vae_config=mugv_vae.VAEConfig.preset(args.vae_preset),
        device=args.device,
        dtype=_DTYPES[args.dtype] if args.dtype else None,
        quirks=quirks,
        offload=None if args.offload == "none" else args.offload,
        local_files_only=args.local_files_only,
    )
    if args.vae_tiling:
        pipe.enable_vae_tiling()
    if args.step_cache is not None:
        pipe.enable_step_cache(args.step_cache)
    if args.compile:
        pipe.compile()
    return pipe


def generate(args: argparse.Namespace) -> list[Path]:
    if args.prompt is not None:
        if args.out is None:
            raise SystemExit("mugv: --prompt needs --out clip.mp4")
        jobs = [{"prompt": args.prompt, "image": args.image, "out": args.out}]
        out_dir = Path(".")
    else:
        if args.out_dir is None:
            raise SystemExit("mugv: --batch needs --out-dir DIR")
        jobs = read_jobs(args.batch)
        out_dir = args.out_dir
    if (args.height is None) != (args.width is None):
        raise SystemExit("mugv: give both --height and --width, or neither")
    for job in jobs:  # bad sizes and durations fail before minutes of loading
        if args.height is None:
            resolve_size(job.get("aspect", args.aspect), args.resolution)
        resolve_num_frames(job.get("duration", args.duration))
    pipe = _load_pipeline(args)
    written = []
    for i, job in enumerate(jobs):
        out = Path(job.get("out") or f"{i:04d}.mp4")
        out = out if out.is_absolute() or args.prompt is not None else out_dir / out
        result = pipe(
            job["prompt"],
            image=job.get("image") or None,
            negative_prompt=args.negative_prompt or _official_negative(),
            aspect=job.get("aspect", args.aspect),
            resolution=args.resolution,
            duration=job.get("duration", args.duration),
            height=args.height,
            width=args.width,
            steps=args.steps,
            guidance=args.cfg,
            seed=job.get("seed", args.seed),
            fps=args.fps,
            aes_score=None if args.no_aes_score else 6.0,
            output_type="mp4",
            output_path=out,
            progress=not args.no_progress,
        )
        for path in result.paths:
            print(path, flush=True)
            written.append(path)
    return written


def _official_negative() -> str:
    from mugv_infer.presets import OFFICIAL_NEGATIVE_PROMPT

    return OFFICIAL_NEGATIVE_PROMPT


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "enhance":
            from mugv_infer.enhance._cli import run

            return run(args)
        if args.command == "generate":
            written = generate(args)
            if args.enhance:
                from mugv_infer.enhance._cli import enhance_generated

                return enhance_generated(args, written)
    except (ValueError, FileNotFoundError, torch.OutOfMemoryError) as exc:
        print(f"mugv: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
