"""The ``mugv-vae`` command: ``mugv-vae train`` and ``mugv-vae eval``.

mugv-vae train --out runs/vae --preset debug --steps 200 [--config cfg.json] [--set k=v ...]
torchrun --nproc-per-node 2 -m mugv_vae.cli train --out runs/vae ...   (DDP)
mugv-vae eval --model runs/vae/final --videos clips/ --out eval/ [--lpips vgg.safetensors]

Errors print one line, ``mugv-vae: error: ...``, and exit 2 for bad input (arguments,
files, configs: all checked before a model loads), 1 for a failure during the work; Ctrl-C
exits 130 and SIGTERM 143, leaving no temporary files. ``--debug`` (or ``MUGV_DEBUG=1``)
adds the traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
import re
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROG = "mugv-vae"

#: Exit codes: bad input, failure during the work, Ctrl-C, SIGTERM.
EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143


# -- one error path ---------------------------------------------------------------------
class _Terminated(BaseException):
    """SIGTERM turned into an exception, so ``finally`` / ``except BaseException`` blocks
    (atomic writers removing their temporary files) run before the process exits."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        self.exit(EXIT_BAD_INPUT, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def _is_bad_input(exc: BaseException) -> bool:
    """Bad input (exit 2): wrong values, types, missing or unreadable files. Everything
    else (RuntimeError, out of memory, a full disk) is a failure during the work (exit 1)."""
    bad = (ValueError, TypeError, LookupError, pickle.UnpicklingError)
    files = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
    if isinstance(exc, bad + files) or type(exc).__name__ == "SafetensorError":
        return True
    # OSErrors raised by loaders about a file's content carry no errno; a read-only target
    # is the user's to fix; a full disk or an I/O error is a failure
    return isinstance(exc, OSError) and (exc.errno is None or exc.errno == errno.EROFS)


def run_command(fn: Callable[[], int], debug: bool = False) -> int:
    """Run ``fn`` under the command-line error contract; returns the exit code."""
    debug = debug or os.environ.get("MUGV_DEBUG", "") not in ("", "0")

    def on_term(signum: int, frame: Any) -> None:
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals alone
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
        if _is_bad_input(exc):
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        hint = "" if debug else " (run with --debug or MUGV_DEBUG=1 for the traceback)"
        print(f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _load_model(source: str) -> Any:
    """``VideoVAE.from_pretrained`` with file problems named (the file never runs code)."""
    from mugv_vae.model import VideoVAE

    try:
        return VideoVAE.from_pretrained(source)
    except KeyError as exc:
        if exc.args and isinstance(exc.args[0], str) and " " in exc.args[0]:
            raise  # a strict-load report (missing / unexpected keys)
        raise ValueError(f"cannot read --model {source}: not a torch checkpoint") from exc
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None and "Weights only load failed" not in str(exc):
            raise ValueError(
                f"cannot read --model {source}: not a torch checkpoint ({_one_line(exc)})"
            ) from exc
        raise ValueError(
            f"refusing to load --model {source}: it holds pickled Python objects"
            f"{f' ({found.group(1)})' if found else ''}, not only tensors, and loading it "
            "could run code; use a save_pretrained folder or the official vae.pt"
        ) from exc
    except (RuntimeError, EOFError) as exc:
        raise ValueError(f"cannot read --model {source} ({_one_line(exc)})") from exc
    except Exception as exc:
        if type(exc).__name__ == "SafetensorError":
            raise ValueError(
                f"cannot read the weights of --model {source}: not a valid safetensors file "
                f"({exc}); the file is truncated or damaged, save or download it again"
            ) from exc
        raise


def _check_model_source(source: str) -> None:
    path = Path(source)
    if path.exists() or (source.count("/") == 1 and not source.startswith((".", "/", "~"))):
        return
    raise FileNotFoundError(
        f"--model {source} is neither an existing file or folder nor a Hub repo id 'org/name'"
    )


def _read_json_object(path: str, what: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist or is not a regular file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{what} {p} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {p} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{what} {p} must hold a JSON object, got {type(data).__name__}")
    return data


def _parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# -- commands ---------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    from mugv_vae.config import VAEConfig
    from mugv_vae.training import TrainConfig, VAETrainer

    data: dict[str, Any] = {}
    if args.config:
        data.update(_read_json_object(args.config, "--config"))
    data["output_dir"] = args.out
    if args.preset:
        data["vae"] = VAEConfig.preset(args.preset).to_dict()
    if args.steps is not None:
        data["steps"] = args.steps
    if args.data:
        data["data"] = args.data
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        section, dot, field = key.partition(".")
        if dot and section in ("vae", "loss"):  # --set vae.norm_num_groups=4
            sub = data.get(section, "debug" if section == "vae" else {})
            if section == "vae" and isinstance(sub, str):
                sub = VAEConfig.preset(sub).to_dict()
            if not isinstance(sub, dict):
                raise ValueError(f"--set {key}: '{section}' of the config is not an object")
            data[section] = {**sub, field: _parse_value(value)}
        elif dot:
            raise ValueError(f"--set {key}: only vae.* and loss.* take a dotted key")
        else:
            data[key] = _parse_value(value)
    config = TrainConfig.from_dict(data)  # every field checked here, before any work
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if config.data is not None:
        from mugv_vae._video_io import VIDEO_SUFFIXES, scan_videos

        if not scan_videos(config.data)[0]:
            raise FileNotFoundError(
                f"no readable video files ({', '.join(VIDEO_SUFFIXES)}) in --data {config.data}"
            )
    if config.lpips_path is not None and not Path(config.lpips_path).is_file():
        raise FileNotFoundError(f"lpips_path {config.lpips_path} does not exist")
    for name in ("init_from", "sdxl_trunk"):
        source = getattr(config, name)
        if source is not None:
            _check_model_source(source)
    trainer = VAETrainer(config)
    history = trainer.train()
    if trainer.rank == 0 and history:
        last = history[-1]
        print(f"step {int(last['step'])}: loss {last['total']:.4f} psnr {last['psnr']:.2f} dB")
        print(f"model: {Path(config.output_dir) / 'final'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from mugv_vae._video_io import VIDEO_SUFFIXES, scan_videos
    from mugv_vae.evaluation import evaluate_folder

    # every argument and the folder listing are checked before the model loads
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {args.max_frames}")
    widths = None
    if args.lpips_widths:
        try:
            widths = tuple(int(w) for w in args.lpips_widths.split(","))
        except ValueError:
            widths = ()
        if not widths or min(widths) < 1:
            raise ValueError(
                f"--lpips-widths must be comma-separated positive ints, got {args.lpips_widths!r}"
            )
    if args.lpips is not None and not Path(args.lpips).is_file():
        raise FileNotFoundError(f"--lpips {args.lpips} does not exist or is not a file")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    _check_model_source(args.model)
    videos, skipped = scan_videos(args.videos)
    if not videos:
        why = f" ({len(skipped)} entries are not regular files)" if skipped else ""
        raise FileNotFoundError(
            f"no video files ({', '.join(VIDEO_SUFFIXES)}) in --videos {args.videos}{why}"
        )
    model = _load_model(args.model)
    result = evaluate_folder(
        model,
        args.videos,
        args.out,
        max_frames=args.max_frames,
        lpips_path=args.lpips,
        lpips_widths=widths,
    )
    print((out / "summary.md").read_text())
    if not result["clips"]:
        raise ValueError(
            f"none of the {len(result['failed'])} files in --videos {args.videos} could be "
            f"evaluated (reasons in {out / 'summary.md'})"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume) a video VAE")
    t.add_argument("--out", required=True, help="output folder (resumes if it has checkpoints)")
    t.add_argument("--config", help="a TrainConfig JSON file")
    t.add_argument("--preset", choices=["debug", "mugv"], help="VAE preset")
    t.add_argument("--steps", type=int)
    t.add_argument("--data", help="folder of videos (default: synthetic clips)")
    t.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="TrainConfig override (JSON value); vae.KEY and loss.KEY for nested fields",
    )
    t.set_defaults(fn=_train)
    e = sub.add_parser("eval", help="reconstruct a folder of videos and score them")
    e.add_argument("--model", required=True, help="save_pretrained folder, Hub repo or vae.pt")
    e.add_argument("--videos", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--max-frames", type=int)
    e.add_argument("--lpips", help="LPIPS weights file (never downloaded)")
    e.add_argument("--lpips-widths", help="comma-separated widths of a non-VGG16 LPIPS file")
    e.set_defaults(fn=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, one line printed)
        return int(exc.code or 0)
    return run_command(lambda: args.fn(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
