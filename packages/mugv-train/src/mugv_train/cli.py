"""``mugv-train``: run a recipe (under torchrun for several ranks), export LoRA adapters,
or post-hoc EMA.

mugv-train RECIPE --shards DIR --out DIR [key=value ...]
torchrun --nproc-per-node 8 -m mugv_train.cli stage3 --shards ... --out ... parallel.tensor_parallel=4
mugv-train export RUN_OR_CHECKPOINT --lora --out DIR_OR_FILE.safetensors
mugv-train post-ema --gamma 0.9 --out merged export_step1 export_step2 ...

Errors print one line, ``mugv-train: error: ...``, and exit 2 for bad input (arguments,
overrides, shard roots, checkpoints and output folders: checked before the model is
built), 1 for a failure during the work (a full disk while checkpointing: the last complete
checkpoint stays intact, no ``.partial`` folder is left); Ctrl-C exits 130 and SIGTERM
143. ``--debug`` (or ``MUGV_DEBUG=1``) adds the traceback. Only the standard library is
imported until the arguments parse, so ``--help`` is quick and quiet.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

PROG = "mugv-train"

#: Exit codes: bad input, failure during the work, Ctrl-C, SIGTERM.
EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143

#: ``mugv_train.recipes.RECIPES``' names, listed here so that ``--help`` imports no torch
#: (a test keeps the two equal).
RECIPE_NAMES = ("debug", "dpo", "kto", "lora", "sft", "stage1", "stage2", "stage3")


# -- one error path ---------------------------------------------------------------------
class _Terminated(BaseException):
    """SIGTERM turned into an exception, so ``finally`` / ``except BaseException`` blocks
    (atomic writers removing their temporary files) run before the process exits."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + error
        self.exit(EXIT_BAD_INPUT, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def _disk_failure(exc: BaseException) -> bool:
    """An OSError of the machine (full disk, I/O error), not of the user's input."""
    return isinstance(exc, OSError) and exc.errno is not None and exc.errno != errno.EROFS


def _is_bad_input(exc: BaseException) -> bool:
    """Bad input (exit 2): wrong values, types, missing, unreadable or unsafe files, shard
    roots and checkpoints that do not fit. Everything else (a NaN loss streak, a full disk,
    out of memory) is a failure during the work (exit 1)."""
    import pickle

    names = {cls.__name__ for cls in type(exc).__mro__}
    if "ShardError" in names or "SafetensorError" in names:
        return True
    if "CheckpointError" in names:  # unreadable / unsafe / mismatching: the user's files,
        # unless a save failed on the disk (the OSError may be wrapped, e.g. by Megatron)
        seen, cause = set(), exc.__cause__ or exc.__context__
        while cause is not None and id(cause) not in seen:
            if _disk_failure(cause):
                return False
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        return True
    bad = (ValueError, TypeError, LookupError, pickle.UnpicklingError)
    files = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
    if isinstance(exc, bad + files):
        return True
    return isinstance(exc, OSError) and not _disk_failure(exc)


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
        print(
            f"{PROG}: interrupted; completed checkpoints are intact (re-run to resume)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except _Terminated:
        print(
            f"{PROG}: terminated (SIGTERM); completed checkpoints are intact (re-run to resume)",
            file=sys.stderr,
        )
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


@contextlib.contextmanager
def _quiet_imports() -> Iterator[None]:
    """Import-time notices of third-party libraries (optional backends not installed,
    deprecations) are not this command's output: silenced while the heavy modules load."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


# -- checks before any work -------------------------------------------------------------
def _check_output_dir(out: Path, what: str = "--out") -> None:
    """``out`` is (or can be created as) a folder this process may write to."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{what} {out} exists and is not a folder; give a folder")
    probe = out
    while not probe.exists():  # the nearest existing parent decides
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"{what} {out}: {probe} is a file, not a folder")
    read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    if read_only or not os.access(probe, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if read_only else "is not writable"
        raise PermissionError(f"{what} {out}: {probe} {why}; choose a writable output folder")


def _check_weights_source(source: str, field: str) -> None:
    """``init_from`` / ``reference_from``: a mugv-dit folder, a weights file, or a Hub id."""
    if not source:
        return
    path = Path(source)
    if not path.exists():
        if source.count("/") == 1 and not source.startswith((".", "/", "~")):
            return  # a Hub repo id 'org/name'
        raise FileNotFoundError(
            f"{field} {source} is neither an existing folder or file nor a Hub repo id "
            "'org/name'; give a mugv-dit save_pretrained folder or the official dit.pt"
        )
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "dit.pt").is_file()):
            raise FileNotFoundError(
                f"{field} {source} holds neither config.json (a mugv-dit save_pretrained "
                "folder) nor the official dit.pt"
            )
        return
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(9)
        zip_file = head.startswith(b"PK\x03\x04")
        safetensors = len(head) == 9 and head[8:9] == b"{"
        if not (zip_file or safetensors):
            raise ValueError(
                f"{field} {source} is not a weights file (neither a torch checkpoint nor "
                "safetensors); give a mugv-dit save_pretrained folder or the official dit.pt"
            )


def _check_shards(spec: str) -> None:
    """Every shard root opens (manifest present, listed shards exist) and holds samples."""
    from mugv_train.data_loading import open_shard_roots

    sets = open_shard_roots(spec)
    if sum(len(s.rows) for s in sets) == 0:
        raise ValueError(
            f"--shards {spec} holds no samples (empty manifest); write shards with "
            "`mugv-data encode` first"
        )


def _check_resume(config: Any) -> None:
    """The checkpoint a run would resume from holds torch files, not text or fragments
    (their contents are read later with ``weights_only=True``)."""
    if not config.checkpoint.resume:
        return
    from mugv_train.checkpointing import latest_checkpoint

    root = Path(config.output_dir) / "checkpoints"
    latest = latest_checkpoint(root) if root.is_dir() else None
    if latest is None:
        return
    for path in sorted(latest.glob("*.pt")):
        with open(path, "rb") as f:
            head = f.read(4)
        if head != b"PK\x03\x04":
            raise ValueError(
                f"{path} is not a torch checkpoint file (truncated, or replaced by another "
                f"file); delete {latest} to resume from an earlier checkpoint, or set "
                "checkpoint.resume=false with a new --out"
            )


def _remove_partial_checkpoints(root: Path) -> None:
    """After Ctrl-C or SIGTERM in a one-process run: the interrupted save's ``.partial``
    folder goes (the complete checkpoints stay). Under torchrun other ranks may still be
    writing; the next save removes stale ``.partial`` folders there."""
    import shutil

    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        return
    for partial in root.glob("step_*.partial") if root.is_dir() else []:
        shutil.rmtree(partial, ignore_errors=True)


# -- commands ---------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    with _quiet_imports():
        from mugv_train.config import apply_overrides
        from mugv_train.recipes import RECIPES
    config = apply_overrides(RECIPES[args.recipe](args.shards, args.out), args.overrides)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2, default=list))
        return 0
    _check_weights_source(config.init_from, "init_from")
    _check_weights_source(config.reference_from, "reference_from")
    _check_shards(config.data.shards)
    _check_output_dir(Path(config.output_dir))
    _check_resume(config)
    with _quiet_imports():
        from mugv_train.loop import train

    try:
        result = train(config)
    except (KeyboardInterrupt, _Terminated):
        _remove_partial_checkpoints(Path(config.output_dir) / "checkpoints")
        raise
    if result.export_dir is not None:
        print(f"exported mugv-dit weights to {result.export_dir}")
    return 0


def _export(args: argparse.Namespace) -> int:
    if not args.lora:
        raise ValueError(
            "export writes LoRA adapters: pass --lora (the merged mugv-dit weights of a run "
            "are written to its export/ folder when it finishes)"
        )
    source = Path(args.checkpoint)
    if not source.exists():
        raise FileNotFoundError(f"checkpoint {source} does not exist")
    out = Path(args.out)
    _check_output_dir(out.parent if out.suffix == ".safetensors" else out)
    with _quiet_imports():
        from mugv_train.lora import export_lora
    path = export_lora(source, out)
    print(f"wrote LoRA adapters to {path}")
    return 0


def _post_ema(args: argparse.Namespace) -> int:
    import math

    if not (math.isfinite(args.gamma) and 0 < args.gamma <= 1):
        raise ValueError(f"--gamma must be in (0, 1], got {args.gamma}")
    for folder in args.dirs:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"export folder {folder} does not exist or is not a folder")
    _check_output_dir(Path(args.out))
    with _quiet_imports():
        from mugv_train.ema import post_hoc_ema_from_exports
    print(post_hoc_ema_from_exports(args.dirs, args.gamma, args.out))
    return 0


def _train_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train MUG-DiT with a recipe")
    p.add_argument("recipe", choices=RECIPE_NAMES)
    p.add_argument("--shards", required=True, help="mugv-data shard root(s), ','-separated")
    p.add_argument("--out", required=True, help="output folder (checkpoints, logs, export)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    p.add_argument(
        "overrides",
        nargs="*",
        help="section.field=value, e.g. optim.lr=1e-4 lora.rank=16 ema=none",
    )
    p.epilog = (
        "other commands: `mugv-train export RUN --lora --out DIR` (LoRA adapters in the "
        "diffusers layout), `mugv-train post-ema --gamma G --out DIR EXPORTS...`"
    )
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"{PROG} export",
        description="Write a run's LoRA adapters as lora.safetensors (diffusers/peft layout, "
        "loadable with MUGVPipeline.load_lora_weights)",
    )
    p.add_argument("checkpoint", help="a run's output folder or one checkpoints/step_* folder")
    p.add_argument("--lora", action="store_true", help="export the LoRA adapters")
    p.add_argument("--out", required=True, help="folder (gets lora.safetensors) or .safetensors")
    p.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    return p


def _post_ema_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} post-ema", description="Post-hoc EMA of exports")
    p.add_argument("dirs", nargs="+", help="mugv-dit export folders, oldest first")
    p.add_argument("--gamma", type=float, required=True, help="decay ratio per checkpoint, (0, 1]")
    p.add_argument("--out", required=True)
    p.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    commands = {"post-ema": (_post_ema_parser, _post_ema), "export": (_export_parser, _export)}
    try:
        if argv and argv[0] in commands:
            parser, fn = commands[argv[0]]
            args = parser().parse_args(argv[1:])
        else:
            parser, fn = _train_parser, _train
            args = parser().parse_intermixed_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, one line printed)
        return int(exc.code or 0)
    return run_command(lambda: fn(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
