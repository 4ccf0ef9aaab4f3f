"""``mugv enhance``: sharpen clips with the MUG-V enhancer, and ``mugv generate --enhance``.

    mugv enhance clip.mp4 --prompt "high quality, cinema" --out clip_enhance.mp4
    mugv enhance a.mp4 b.mp4 --out-dir enhanced/
    mugv enhance --batch sample.csv --video-dir outputs/ --out-dir enhanced/

A batch CSV has the official columns ``file_name`` (relative to ``--video-dir``, default the
CSV's folder) and ``text`` (the prompt), and optionally ``out``. Outputs are named like the
official ones, ``{index:04d}_{stem}_enhance.mp4``. Each written path is printed. Every input
is checked (exists, is a video, 4k + 1 frames, size a multiple of 16) before the model loads.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

import torch

from mugv_infer.enhance._video import IMAGE_SUFFIXES, SIZE_MULTIPLE
from mugv_infer.enhance.enhancer import (
    ENHANCE_PROMPT,
    OFFICIAL_GUIDANCE,
    OFFICIAL_REPO,
    OFFICIAL_SIGMA,
    WAN_NEGATIVE_PROMPT,
    WAN_REPO,
    EnhancerQuirks,
    MUGVEnhancer,
)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_JOB_KEYS = {"file_name", "text", "out"}


class _UsageError(ValueError):
    pass


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``enhance`` on the ``mugv`` command's subparsers."""
    e = subparsers.add_parser(
        "enhance", help="sharpen clips in one step with the MUG-V enhancer (Wan2.1-1.3B + LoRA)"
    )
    e.add_argument("videos", nargs="*", type=Path, help="MP4 clips to enhance")
    e.add_argument("--batch", type=Path, help="CSV with columns file_name,text[,out]")
    e.add_argument(
        "--video-dir", type=Path, help="folder of the CSV's file_name (default: its folder)"
    )
    e.add_argument(
        "--prompt", default=ENHANCE_PROMPT, help="prompt (default: the official example)"
    )
    e.add_argument("--out", type=Path, help="output MP4 (one input video)")
    e.add_argument("--out-dir", type=Path, help="output folder (several videos or --batch)")
    e.add_argument("--negative-prompt", default=WAN_NEGATIVE_PROMPT, help="default: Wan's")
    e.add_argument("--cfg", type=float, default=OFFICIAL_GUIDANCE, help="CFG scale (official 2.0)")
    e.add_argument("--sigma", type=float, default=OFFICIAL_SIGMA, help="noise level (official 0.3)")
    e.add_argument("--seed", type=int, default=42, help="noise seed (the official passes none)")
    e.add_argument("--height", type=int, help="resize and centre-crop to this height first")
    e.add_argument("--width", type=int, help="resize and centre-crop to this width first")
    e.add_argument("--pad-frames", action="store_true", help="pad to 4k + 1 frames (trimmed after)")
    e.add_argument("--fps", type=float, help="fps of written files (default: the input's)")
    e.add_argument("--round-uint8", action="store_true", help="round pixels (official: truncate)")
    _add_model_options(e, model_flag="--model")
    e.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    e.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16", help="official: bf16")
    e.add_argument(
        "--offload", choices=["none", "model", "block"], default="none",
        help="CPU offload: whole components, or the DiT block by block",
    )  # fmt: skip
    e.add_argument("--vae-tiling", action="store_true", help="diffusers VAE tiling (720p on 24 GB)")
    e.add_argument("--local-files-only", action="store_true", help="never touch the network")
    return e


def _add_model_options(parser: argparse.ArgumentParser, *, model_flag: str) -> None:
    parser.add_argument(model_flag, dest="enhancer_model", default=OFFICIAL_REPO,
                        help="Hub repo or folder with enhancer/ (or a saved enhancer)")  # fmt: skip
    parser.add_argument("--wan-model", default=WAN_REPO, help="Hub repo or folder: Wan VAE, umT5")
    parser.add_argument("--head-dim", type=int, default=128, help=argparse.SUPPRESS)


def add_generate_options(parser: argparse.ArgumentParser) -> None:
    """``mugv generate --enhance``: enhance each generated clip after generation."""
    parser.add_argument("--enhance", action="store_true",
                        help="also write <clip>_enhance.mp4 with the MUG-V enhancer")  # fmt: skip
    parser.add_argument("--enhance-prompt", default=ENHANCE_PROMPT,
                        help="enhancer prompt (default: the official example)")  # fmt: skip
    _add_model_options(parser, model_flag="--enhancer-model")


def _probe(path: Path, args: argparse.Namespace) -> None:
    """Cheap checks of one input before any model loads (container metadata)."""
    import av

    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise _UsageError(f"{path} is an image; the enhancer refines videos (MP4)")
    if not path.is_file():
        raise _UsageError(f"video {path} does not exist")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            n, h, w = stream.frames, stream.height, stream.width
            if not n:
                n = sum(1 for _ in container.decode(stream))
    except (av.error.FFmpegError, IndexError) as exc:
        raise _UsageError(f"cannot read {path} as a video ({exc})") from exc
    if args.height is None and (h % SIZE_MULTIPLE or w % SIZE_MULTIPLE):
        raise _UsageError(
            f"{path} is {h} x {w}, not a multiple of 16; pass --height/--width to resize "
            "and centre-crop"
        )
    if n == 1:
        raise _UsageError(f"{path} has one frame (an image); the enhancer refines videos")
    if (n - 1) % 4 and not args.pad_frames:
        raise _UsageError(
            f"{path} has {n} frames, not 4k + 1 (e.g. 105); pass --pad-frames to pad and trim"
        )


def _jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.batch is not None:
        if args.videos:
            raise _UsageError("give videos or --batch, not both")
        if args.out_dir is None:
            raise _UsageError("--batch needs --out-dir DIR")
        if not args.batch.is_file():
            raise _UsageError(f"batch file {args.batch} does not exist")
        with args.batch.open(newline="", encoding="utf-8") as f:
            rows = [dict(r) for r in csv.DictReader(f)]
        root = args.video_dir or args.batch.parent
        jobs = []
        for n, row in enumerate(rows, 1):
            row = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            unknown = set(row) - _JOB_KEYS
            if unknown or "file_name" not in row:
                raise _UsageError(
                    f"{args.batch} row {n}: columns must be file_name,text[,out] (the official "
                    f"sample.csv); got {sorted(row)}"
                )
            video = Path(row["file_name"])
            video = video if video.is_absolute() else root / video
            out = args.out_dir / (row.get("out") or f"{n - 1:04d}_{video.stem}_enhance.mp4")
            jobs.append({"video": video, "prompt": row.get("text", args.prompt), "out": out})
        if not jobs:
            raise _UsageError(f"batch file {args.batch} has no rows")
        return jobs
    if not args.videos:
        raise _UsageError("give one or more videos, or --batch file.csv")
    if len(args.videos) == 1 and args.out is not None:
        return [{"video": args.videos[0], "prompt": args.prompt, "out": args.out}]
    if args.out is not None:
        raise _UsageError("--out takes one video; use --out-dir for several")
    if args.out_dir is None:
        raise _UsageError("give --out clip.mp4 (one video) or --out-dir DIR")
    return [
        {"video": v, "prompt": args.prompt, "out": args.out_dir / f"{i:04d}_{v.stem}_enhance.mp4"}
        for i, v in enumerate(args.videos)
    ]


def _load(args: argparse.Namespace, *, dtype: torch.dtype, round_uint8: bool) -> MUGVEnhancer:
    enhancer = MUGVEnhancer.from_pretrained(
        args.enhancer_model,
        wan_repo_or_dir=args.wan_model,
        device=args.device,
        dtype=dtype,
        head_dim=args.head_dim,
        quirks=EnhancerQuirks(truncate_uint8=not round_uint8),
        offload=None if args.offload == "none" else args.offload,
        local_files_only=args.local_files_only,
    )
    if getattr(args, "vae_tiling", False):
        enhancer.enable_vae_tiling()
    return enhancer


def _error(exc: BaseException, prog: str = "mugv enhance") -> int:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """``mugv enhance``: returns the exit status (2 with one error line on bad input; other
    failures, out of memory included, propagate to the ``mugv`` command's handler: 1)."""
    try:
        jobs = _jobs(args)
        if (args.height is None) != (args.width is None):
            raise _UsageError("give both --height and --width, or neither")
        for job in jobs:
            _probe(job["video"], args)
        enhancer = _load(args, dtype=_DTYPES[args.dtype], round_uint8=args.round_uint8)
        for job in jobs:
            out = enhancer(
                job["video"], job["prompt"], negative_prompt=args.negative_prompt,
                guidance=args.cfg, sigma=args.sigma, seed=args.seed, height=args.height,
                width=args.width, pad_frames=args.pad_frames, fps=args.fps,
                output_type="mp4", output_path=job["out"],
            )  # fmt: skip
            for path in out.paths:
                print(path, flush=True)
    except (ValueError, FileNotFoundError) as exc:  # bad input: exit 2 (out of memory: 1)
        return _error(exc)
    return 0


def enhance_generated(args: argparse.Namespace, paths: list[Path]) -> int:
    """``mugv generate --enhance``: ``<clip>_enhance.mp4`` next to each generated clip."""
    try:
        dtype = _DTYPES[args.dtype] if getattr(args, "dtype", None) else torch.bfloat16
        enhancer = _load(args, dtype=dtype, round_uint8=False)
        for path in paths:
            out = enhancer(path, args.enhance_prompt, seed=args.seed, output_type="mp4",
                           output_path=path.with_name(f"{path.stem}_enhance.mp4"))  # fmt: skip
            for p in out.paths:
                print(p, flush=True)
    except (ValueError, FileNotFoundError) as exc:  # bad input: exit 2 (out of memory: 1)
        return _error(exc, "mugv generate")
    return 0
