"""The ``mugv`` command: generate clips from a prompt, or a batch from a CSV / JSONL file.

    mugv generate --prompt "a fox in the snow" --image ref.png --aspect 16:9 --duration 5s \
        --steps 25 --cfg 4.0 --seed 42 --model MUG-V/MUG-V-inference --out clip.mp4
    mugv generate --batch prompts.jsonl --out-dir clips/

A batch file has one job per row: ``prompt`` (required) and optionally ``image``, ``seed``,
``out`` (file name, relative to ``--out-dir``), ``aspect``, ``duration``. CSV needs a header
row; JSONL has one JSON object per line. Relative image paths are read relative to the
batch file. Each written file's path is printed, one per line.

Guidance runs against the official negative prompt, or against the null caption of a model
trained with caption dropout: ``--negative-embedding`` (a ``null_text.safetensors`` or a
folder holding one, as mugv-train exports and ``mugv-quickstart`` pipelines carry); a
``--model`` folder holding ``null_text.safetensors`` uses it unless ``--negative-prompt`` is
given. The timestep-shift scale is the saved scheduler's (``scheduler/scheduler_config.json``
of a saved pipeline; 1.0 for the official weights) unless ``--shift-scale`` is given. So a
quickstart output regenerates its clips with the command in its ``generate/regenerate.sh``.
"""

from __future__ import annotations

import argparse
import csv
import errno
import json
import os
import pickle
import re
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
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
    parser = _Parser(prog=PROG, description="MUG-V video generation")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of errors")
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
    neg = g.add_mutually_exclusive_group()
    neg.add_argument("--negative-prompt", help="override the official negative prompt")
    neg.add_argument(
        "--negative-embedding",
        type=Path,
        help="null caption for guidance: a null_text.safetensors, or a folder holding one "
        "(a mugv-train export; default: the --model folder's, if it has one)",
    )
    g.add_argument(
        "--shift-scale",
        type=float,
        help="factor on the resolution/length timestep shift (default: the saved scheduler's; "
        "official 1.0)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="run up to N consecutive batch rows as one pipeline call when they share seed, "
        "size and duration and have no image (noise drawn for the whole batch at once, as "
        "MUGVPipeline does for a list of prompts)",
    )
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
    g.add_argument(
        "--save-latents",
        action="store_true",
        help="also write each clip's final latents [C, T, h, w] (float32) as <clip>.npy",
    )
    from mugv_infer.enhance._cli import add_generate_options, add_parser

    add_generate_options(g)  # --enhance and the enhancer's model options
    add_parser(sub)  # mugv enhance
    return parser


def read_jobs(path: Path) -> list[dict[str, Any]]:
    """Jobs of a CSV (header row) or JSONL batch file; each has at least a prompt.

    Every row is checked (columns, prompt text, seed, image file); errors name the file,
    the row and the field."""
    from mugv_infer._checks import check_seed, check_text, regular_file_problem

    problem = regular_file_problem(path)
    if problem == "does not exist":
        raise FileNotFoundError(f"batch file {path} does not exist")
    if problem is not None:
        raise ValueError(f"batch file {path} {problem}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ValueError(f"batch file must be .csv or .jsonl, got {path.name}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"{path} line {line} is not UTF-8 text ({exc.reason}); save the file as UTF-8"
        ) from None
    rows: list[tuple[str, Any]] = []
    if suffix == ".csv":
        try:
            reader = csv.DictReader(text.splitlines())
            for record in reader:
                if None in record:
                    raise ValueError(
                        f"{path} line {reader.line_num} has more fields than the header"
                    )
                rows.append((f"line {reader.line_num}", dict(record)))
        except csv.Error as exc:
            raise ValueError(f"{path} is not valid CSV ({exc})") from exc
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path} line {n} is not valid JSON ({exc})") from exc
    jobs = []
    for where, row in rows:
        at = f"{path} {where}"
        if not isinstance(row, dict):
            raise ValueError(f"{at} must be a JSON object, got {type(row).__name__}")
        row = {k: v for k, v in row.items() if v not in (None, "")}
        unknown = set(row) - _JOB_KEYS
        if unknown:
            raise ValueError(
                f"{at} has unknown columns {sorted(unknown)}; allowed: {sorted(_JOB_KEYS)}"
            )
        for key in ("prompt", "image", "out", "aspect"):
            if key in row and not isinstance(row[key], str):
                raise ValueError(f"{at}: {key} must be text, got {row[key]!r}")
            if key in row:
                check_text(row[key], f"{at}: {key}")
        if not row.get("prompt", "").strip():
            raise ValueError(f"{at} has no prompt")
        if "image" in row and not Path(row["image"]).is_absolute():
            row["image"] = str(path.parent / row["image"])
        if "seed" in row:
            seed = row["seed"]
            if isinstance(seed, str) and seed.strip().isdigit():
                seed = int(seed)
            try:
                check_seed(seed)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{at}: {exc}") from None
            row["seed"] = seed
        if "duration" in row:
            if not isinstance(row["duration"], str | int) or isinstance(row["duration"], bool):
                raise ValueError(f"{at}: duration must be '5s', '3s' or a frame count")
            row["duration"] = _duration(str(row["duration"]))
        row["_where"] = at
        jobs.append(row)
    if not jobs:
        raise ValueError(f"batch file {path} has no jobs")
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
    if args.shift_scale is not None:
        from mugv_infer.sampling import MUGVFlowScheduler

        saved = pipe.components["scheduler"].config  # type: ignore[attr-defined]
        pipe.register_modules(  # type: ignore[attr-defined]
            scheduler=MUGVFlowScheduler.from_config(saved, shift=True, shift_scale=args.shift_scale)
        )
    if args.vae_tiling:
        pipe.enable_vae_tiling()
    if args.step_cache is not None:
        pipe.enable_step_cache(args.step_cache)
    if args.compile:
        pipe.compile()
    return pipe


def negative_embedding_file(args: argparse.Namespace) -> Path | None:
    """The null caption file guidance runs against: ``--negative-embedding`` (a file, or a
    folder holding ``null_text.safetensors``), else the ``--model`` folder's, else None
    (the official negative prompt)."""
    from mugv_infer.pipeline import NULL_TEXT_FILE

    given = args.negative_embedding
    if given is not None:
        path = given / NULL_TEXT_FILE if given.is_dir() else given
        if not path.is_file():
            raise FileNotFoundError(
                f"--negative-embedding {given}: {path} does not exist; give a "
                f"{NULL_TEXT_FILE} or a model export folder holding one"
            )
        return path
    if args.negative_prompt is None and (Path(args.model) / NULL_TEXT_FILE).is_file():
        return Path(args.model) / NULL_TEXT_FILE
    return None


def _read_null_text(path: Path) -> torch.Tensor:
    from mugv_infer.pipeline import load_null_text

    if path.name != "null_text.safetensors":  # load_null_text reads a folder's file
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if "null_text" not in tensors:
            raise ValueError(f"{path} has no 'null_text' tensor (keys: {sorted(tensors)})")
        return tensors["null_text"]
    return load_null_text(path.parent)


def _batches(jobs: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Consecutive rows that can share one pipeline call (same seed, size, duration, no
    image), at most ``size`` each."""
    groups: list[list[dict[str, Any]]] = []
    for job in jobs:
        key = (job.get("seed"), job.get("aspect"), job.get("duration"))
        last = groups[-1] if groups else None
        if (
            last is not None
            and len(last) < size
            and not job.get("image")
            and not last[0].get("image")
            and (last[0].get("seed"), last[0].get("aspect"), last[0].get("duration")) == key
        ):
            last.append(job)
        else:
            groups.append([job])
    return groups


def generate(args: argparse.Namespace) -> list[Path]:
    jobs = check_generate(args)  # every argument, row and output path, before loading
    null_file = negative_embedding_file(args)
    null_text = _read_null_text(null_file) if null_file is not None else None
    pipe = _load_pipeline(args)
    negative: dict[str, Any]
    if null_text is not None:
        negative = {"negative_prompt": None, "negative_embedding": null_text}
    else:
        negative = {"negative_prompt": args.negative_prompt or _official_negative()}
    written = []
    for group in _batches(jobs, args.batch_size):
        job = group[0]
        result = pipe(
            [j["prompt"] for j in group] if len(group) > 1 else job["prompt"],
            image=job.get("image") or None,
            **negative,
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
            output_path=[j["out"] for j in group] if len(group) > 1 else job["out"],
            progress=not args.no_progress,
        )
        for k, path in enumerate(result.paths):
            if args.save_latents:
                _save_npy(Path(path).with_suffix(".npy"), result.latents[k])
            print(path, flush=True)
            written.append(path)
    return written


def _save_npy(path: Path, tensor: torch.Tensor) -> None:
    """float32 .npy, written atomically (temporary name, then rename)."""
    import numpy as np

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, tensor.detach().float().cpu().numpy())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_source(source: str, flag: str) -> None:
    """A local path that exists, or something shaped like a Hub repo id ('org/name')."""
    if Path(source).exists() or (source.count("/") == 1 and not source.startswith((".", "/", "~"))):
        return
    raise FileNotFoundError(
        f"{flag} {source} is neither an existing folder nor a Hub repo id 'org/name'"
    )


def _check_out_path(out: Path, where: str) -> None:
    if out.is_dir():
        raise IsADirectoryError(
            f"{where}output {out} is a folder; give a file name such as clip.mp4"
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{where}output {out}: {parent} is a file, not a folder")
            break


def check_generate(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Check every argument, batch row and output path of ``mugv generate`` (no model is
    loaded): the jobs, each with its final ``out`` path."""
    import mugv_vae
    from mugv_infer._checks import (
        check_finite,
        check_image,
        check_int,
        check_prompts,
        check_seed,
        check_text,
    )

    if args.prompt is not None:
        check_prompts(args.prompt, "--prompt")
        if args.out is None:
            raise ValueError("--prompt needs --out clip.mp4")
        jobs = [{"prompt": args.prompt, "image": args.image, "out": str(args.out), "_where": ""}]
        out_dir = None
    else:
        if args.out_dir is None:
            raise ValueError("--batch needs --out-dir DIR")
        if args.image is not None:
            raise ValueError("--image goes with --prompt; give batch rows an image column")
        if args.out_dir.exists() and not args.out_dir.is_dir():
            raise NotADirectoryError(f"--out-dir {args.out_dir} exists and is not a folder")
        jobs = read_jobs(args.batch)
        out_dir = args.out_dir
    if (args.height is None) != (args.width is None):
        raise ValueError("give both --height and --width, or neither")
    check_int(args.height, "--height", minimum=8, optional=True)
    check_int(args.width, "--width", minimum=8, optional=True)
    check_int(args.steps, "--steps", minimum=1)
    check_int(args.batch_size, "--batch-size", minimum=1)
    if args.shift_scale is not None:
        check_finite(args.shift_scale, "--shift-scale", positive=True)
    check_finite(args.cfg, "--cfg")
    check_finite(args.fps, "--fps", positive=True)
    check_seed(args.seed, "--seed")
    if args.step_cache is not None:
        check_finite(args.step_cache, "--step-cache")
        if args.step_cache < 0:
            raise ValueError(f"--step-cache must be >= 0, got {args.step_cache}")
    if args.negative_prompt is not None:
        check_text(args.negative_prompt, "--negative-prompt")
    negative_embedding_file(args)  # a missing --negative-embedding file: before loading
    mugv_vae.VAEConfig.preset(args.vae_preset)
    _check_source(args.model, "--model")
    _check_source(args.text_encoder, "--text-encoder")
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"--device {args.device!r} is not a torch device ({exc})") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device} asks for CUDA, but no CUDA device is visible")
    seen: dict[Path, str] = {}
    for i, job in enumerate(jobs):
        where = f"{job['_where']}: " if job["_where"] else ""
        try:
            if args.height is None:
                resolve_size(job.get("aspect", args.aspect), args.resolution)
            resolve_num_frames(job.get("duration", args.duration))
            if job.get("image"):
                check_image(job["image"], "image")
        except (TypeError, ValueError, FileNotFoundError) as exc:
            raise type(exc)(f"{where}{exc}") from None
        if out_dir is None:
            out = Path(job["out"])
        else:
            rel = Path(job.get("out") or f"{i:04d}.mp4")
            inside = (out_dir.resolve() / rel).resolve().is_relative_to(out_dir.resolve())
            if rel.is_absolute() or ".." in rel.parts or not inside:
                raise ValueError(
                    f"{where}out {str(rel)!r} points outside --out-dir {out_dir}; give a file "
                    "name relative to it"
                )
            out = out_dir / rel
        if out.suffix.lower() != ".mp4":
            out = out.with_name(out.name + ".mp4")  # what write_mp4 writes
        _check_out_path(out, where)
        key = out.resolve()
        if key in seen:
            raise ValueError(
                f"{seen[key] or 'a row'} and {job['_where'] or 'another row'} both write {out}; "
                "give each row its own out"
            )
        seen[key] = job["_where"]
        job["out"] = out
    return jobs


def _official_negative() -> str:
    from mugv_infer.presets import OFFICIAL_NEGATIVE_PROMPT

    return OFFICIAL_NEGATIVE_PROMPT


# -- one error path ---------------------------------------------------------------------
PROG = "mugv"

#: Exit codes: bad input, failure during the work, Ctrl-C, SIGTERM.
EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143


class _Terminated(BaseException):
    """SIGTERM as an exception, so atomic writers remove their temporary files."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        self.exit(EXIT_BAD_INPUT, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def _is_bad_input(exc: BaseException) -> bool:
    """Bad input (exit 2): wrong values, types, missing or unreadable files; anything else
    (RuntimeError, out of memory, a full disk) is a failure during the work (exit 1)."""
    if isinstance(exc, ConnectionError):  # the Hub unreachable: not the input's fault
        return False
    bad = (ValueError, TypeError, LookupError, pickle.UnpicklingError)
    files = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
    if isinstance(exc, bad + files) or type(exc).__name__ == "SafetensorError":
        return True
    # OSErrors raised by loaders about a file's content carry no errno
    return isinstance(exc, OSError) and (exc.errno is None or exc.errno == errno.EROFS)


def run_command(fn: Callable[[], int], debug: bool = False) -> int:
    """Run ``fn`` under the command-line error contract; returns the exit code."""
    debug = debug or os.environ.get("MUGV_DEBUG", "") not in ("", "0")

    def on_term(signum: int, frame: Any) -> None:
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        previous = None
    try:
        return int(fn())
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished outputs are complete", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print(f"{PROG}: terminated (SIGTERM); finished outputs are complete", file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, pickle.UnpicklingError):
            found = re.search(r"GLOBAL (\S+)", str(exc))
            if found:
                exc = ValueError(
                    f"refusing to load a checkpoint that holds pickled Python objects "
                    f"({found.group(1)}), not only tensors: loading it could run code"
                )
        if _is_bad_input(exc):
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        hint = "" if debug else " (run with --debug or MUGV_DEBUG=1 for the traceback)"
        print(f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "enhance":
        from mugv_infer.enhance._cli import run

        return run(args)
    if args.command == "generate":
        written = generate(args)
        if args.enhance:
            from mugv_infer.enhance._cli import enhance_generated

            return enhance_generated(args, written)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line printed)
        return int(exc.code or 0)
    return run_command(lambda: _dispatch(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
