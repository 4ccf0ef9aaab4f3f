"""``mugv-dit`` command line: convert the official checkpoint, print preset sizes.

Errors print one line, ``mugv-dit: error: ...``, and exit 2 for bad input (arguments and
files, checked before any weights load), 1 for a failure during the work; Ctrl-C exits
130 and SIGTERM 143, leaving no temporary files. ``--debug`` (or ``MUGV_DEBUG=1``) adds
the traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import pickle
import re
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PROG = "mugv-dit"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Exit codes: bad input, failure during the work, Ctrl-C, SIGTERM.
EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143


# -- one error path ---------------------------------------------------------------------
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
        if _is_bad_input(exc):
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        hint = "" if debug else " (run with --debug or MUGV_DEBUG=1 for the traceback)"
        print(f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# -- commands ---------------------------------------------------------------------------
def _convert(args: argparse.Namespace) -> int:
    from mugv_dit._checkpoint import convert_official_checkpoint

    src, out = Path(args.src), Path(args.out_dir)
    if not src.exists():
        raise FileNotFoundError(f"official checkpoint {src} does not exist")
    if not src.is_file():
        raise ValueError(f"{src} is not a regular file; give the official dit.pt")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} exists and is not a folder")
    try:
        written = convert_official_checkpoint(src, out, dtype=_DTYPES.get(args.dtype))
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None and "Weights only load failed" not in str(exc):
            raise ValueError(
                f"cannot read {src}: not a torch checkpoint ({_one_line(exc)})"
            ) from exc
        raise ValueError(
            f"refusing to load {src}: it holds pickled Python objects"
            f"{f' ({found.group(1)})' if found else ''}, not only tensors, and loading it could "
            "run code; the official dit.pt is a plain state dict of tensors"
        ) from exc
    except (KeyError, EOFError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not re.search(
            r"zip|archive|storage|pickle|magic", str(exc), re.IGNORECASE
        ):
            raise
        raise ValueError(
            f"cannot read {src}: not a (complete) torch checkpoint ({_one_line(exc)}); "
            "download the official dit.pt again"
        ) from exc
    print(f"wrote {written}")
    return 0


def _params(args: argparse.Namespace) -> int:
    from mugv_dit.config import PRESETS
    from mugv_dit.model import MUGDiT

    names = args.presets or list(PRESETS)
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise ValueError(f"unknown presets {unknown}; choose from {list(PRESETS)}")
    for name in names:
        with torch.device("meta"):
            model = MUGDiT(PRESETS[name])
        print(f"{name}\t{model.num_parameters():,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="official dit.pt -> config.json + model.safetensors")
    conv.add_argument("src", help="path to the official dit.pt")
    conv.add_argument("out_dir", help="output folder (created)")
    conv.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="cast the weights")
    conv.set_defaults(func=_convert)
    params = sub.add_parser("params", help="parameter count of the presets")
    params.add_argument("presets", nargs="*", help="preset names (default: all)")
    params.set_defaults(func=_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line printed)
        return int(exc.code or 0)
    return run_command(lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
