"""The ``mugv-data`` command: curate, encode, stats, inspect, export-csv, import-csv.

Errors: one line ``mugv-data: error: <what, where, what to do>`` on stderr; exit 2 for bad
input (arguments, files, configs, models that cannot load, an unreachable Ray cluster),
1 for a failure during the work, 130 on Ctrl-C, 143 on SIGTERM (atomic writers remove
their temporary files first; a rerun resumes). The traceback is printed only with
``--debug`` or ``MUGV_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PROG = "mugv-data"


class UsageError(ValueError):
    """Bad command-line input (exit 2)."""


def _config(args: argparse.Namespace):
    from mugv_data.config import CurationConfig, read_config_file

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    overrides = read_config_file(args.config) if args.config else {}
    named = overrides.pop("preset", None)
    if named is not None and args.preset is not None and named != args.preset:
        raise UsageError(
            f"config file {args.config} names preset {named!r} but --preset {args.preset} "
            "was given; drop one"
        )
    cfg = CurationConfig.preset(args.preset or named or "paper")
    if overrides:
        cfg = CurationConfig.from_dict(overrides, base=cfg)
    if args.workers is not None:
        cfg = CurationConfig.from_dict({"workers": args.workers}, base=cfg)
    if getattr(args, "ray_address", None):
        cfg = CurationConfig.from_dict({"ray": {"address": args.ray_address}}, base=cfg)
    return cfg


def cmd_curate(args: argparse.Namespace) -> int:
    from mugv_data.pipeline import curate

    cfg = _config(args)
    res = curate(args.input, args.out, cfg, engine=args.engine, progress=not args.quiet)
    resumed = res.counts["videos"] - res.processed
    print(f"processed {res.processed} videos, resumed {resumed} from records")
    print(json.dumps(res.counts, sort_keys=True))
    print(f"manifest: {res.manifest}")
    return 0


def _load_vae(spec: str, device: str):
    import mugv_vae

    if spec.startswith("preset:"):
        import torch

        torch.manual_seed(0)
        return mugv_vae.VideoVAE(mugv_vae.VAEConfig.preset(spec.split(":", 1)[1])).to(device).eval()
    return mugv_vae.VideoVAE.from_pretrained(spec, device=device).eval()


def cmd_encode(args: argparse.Namespace) -> int:
    from mugv_data.stages.encode import check_encode_inputs, encode_clips

    # Arguments and the manifest are checked before any model (or torch) loads.
    if args.shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1, got {args.shard_size}")
    if args.text_max_length < 1:
        raise UsageError(f"--text-max-length must be >= 1, got {args.text_max_length}")
    check_encode_inputs(args.curated)
    local = args.vae.startswith(("/", ".", "~")) or args.vae.endswith((".pt", ".safetensors"))
    if local and not Path(args.vae).expanduser().exists():
        raise FileNotFoundError(f"--vae {args.vae}: no such folder or file")
    import mugv_dit

    vae = _load_vae(args.vae, args.device)
    te = mugv_dit.TextEncoder(
        args.text_encoder, max_length=args.text_max_length, device=args.device
    )
    shards = Path(args.shards) if args.shards else Path(args.curated) / "shards"
    manifest = encode_clips(
        args.curated,
        shards,
        vae=vae,
        text_encoder=te,
        shard_size=args.shard_size,
        sample_posterior=args.sample_posterior,
        device=args.device,
        progress=not args.quiet,
    )
    print(f"shards: {manifest}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from mugv_data.stats import format_summary, plot, summarize

    print(format_summary(summarize(args.out)))
    if not args.no_png:
        for p in plot(args.out, args.png_dir):
            print(f"wrote {p}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from mugv_data.stats import explain

    try:
        print(explain(args.out, args.clip))
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mugv_data.official import export_official_csv

    if args.text_length < 1:
        raise UsageError(f"--text-length must be >= 1, got {args.text_length}")
    print(export_official_csv(args.shards, args.out, text_length=args.text_length))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from mugv_data.official import import_official_csv

    if args.shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1, got {args.shard_size}")
    print(import_official_csv(args.csv, args.out, shard_size=args.shard_size))
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


class _Terminated(BaseException):
    """SIGTERM as an exception, so atomic writers' cleanup runs before the exit (143)."""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="MUG-V data curation",
        epilog="--debug (anywhere) or MUGV_DEBUG=1 prints tracebacks of errors",
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("curate", help="raw videos -> curated clip manifest (resumable)")
    c.add_argument("input", help="a folder of videos, a manifest (.csv/.jsonl/.parquet) or a video")
    c.add_argument("--out", required=True, help="output folder (rerun to resume)")
    c.add_argument("--config", help="JSON or TOML file of overrides")
    c.add_argument(
        "--preset", choices=["paper", "synthetic"], help="default: the config's, else paper"
    )
    c.add_argument("--engine", default="local", choices=["local", "ray"])
    c.add_argument("--workers", type=int, help="processes (local) / CPUs (ray); default 1")
    c.add_argument(
        "--ray-address", help="a running Ray cluster (host:port, ray://..., auto); else RAY_ADDRESS"
    )
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(fn=cmd_curate)

    e = sub.add_parser("encode", help="kept clips -> latent + text shards (resumable)")
    e.add_argument("curated", help="a `curate` output folder")
    e.add_argument("--vae", required=True, help="VideoVAE folder, Hub id, vae.pt, or preset:NAME")
    e.add_argument("--text-encoder", required=True, help="text encoder folder or Hub id")
    e.add_argument("--text-max-length", type=int, default=300)
    e.add_argument("--shards", help="output folder (default: CURATED/shards)")
    e.add_argument("--shard-size", type=int, default=256)
    e.add_argument("--sample-posterior", action="store_true", help="sample (seeded per clip)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(fn=cmd_encode)

    s = sub.add_parser("stats", help="summary table and PNG histograms")
    s.add_argument("out", help="a `curate` output folder")
    s.add_argument("--png-dir", help="where PNGs go (default: OUT/stats)")
    s.add_argument("--no-png", action="store_true")
    s.set_defaults(fn=cmd_stats)

    i = sub.add_parser("inspect", help="why a clip was kept or dropped")
    i.add_argument("clip", help="clip id, video key, file name or path")
    i.add_argument("--out", required=True, help="a `curate` output folder")
    i.set_defaults(fn=cmd_inspect)

    x = sub.add_parser("export-csv", help="shards -> official train.csv layout")
    x.add_argument("shards")
    x.add_argument("--out", required=True)
    x.add_argument("--text-length", type=int, default=300)
    x.set_defaults(fn=cmd_export)

    m = sub.add_parser("import-csv", help="official train.csv layout -> shards")
    m.add_argument("csv")
    m.add_argument("--out", required=True)
    m.add_argument("--shard-size", type=int, default=256)
    m.set_defaults(fn=cmd_import)
    return p


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from mugv_data._model_stages import ModelLoadError
    from mugv_data.shards import ShardError

    types: list[type[BaseException]] = [
        UsageError, ValueError, TypeError, FileNotFoundError, NotADirectoryError,
        IsADirectoryError, PermissionError, FileExistsError, ModelLoadError, ShardError,
        ImportError,
    ]  # fmt: skip
    if "mugv_data._ray_engine" in sys.modules:
        types.append(sys.modules["mugv_data._ray_engine"].RayClusterError)
    return tuple(types)


def main(argv: list[str] | None = None) -> int:
    import signal

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MUGV_DEBUG", "") not in ("", "0")
    try:
        args = build_parser().parse_args([a for a in argv if a != "--debug"])
    except SystemExit as e:  # --help (0) or a usage error (2, one line printed)
        return int(e.code or 0)

    def on_term(signum, frame):
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: error: interrupted; outputs written so far are complete (rerun to resume)",
              file=sys.stderr)  # fmt: skip
        return 130
    except _Terminated:
        print(f"{PROG}: error: terminated (SIGTERM); outputs written so far are complete "
              "(rerun to resume)", file=sys.stderr)  # fmt: skip
        return 143
    except Exception as e:
        if debug:
            raise
        bad = isinstance(e, _bad_input_types())
        msg = " ".join(str(e).split()) or type(e).__name__
        if not bad:
            msg = f"{type(e).__name__}: {msg}"
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2 if bad else 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
