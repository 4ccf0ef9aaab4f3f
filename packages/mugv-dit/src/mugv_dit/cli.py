"""``mugv-dit`` command line: convert the official checkpoint, print preset sizes."""

from __future__ import annotations

import argparse
import sys

import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _convert(args: argparse.Namespace) -> int:
    from mugv_dit._checkpoint import convert_official_checkpoint

    out = convert_official_checkpoint(args.src, args.out_dir, dtype=_DTYPES.get(args.dtype))
    print(f"wrote {out}")
    return 0


def _params(args: argparse.Namespace) -> int:
    from mugv_dit.config import PRESETS
    from mugv_dit.model import MUGDiT

    for name in args.presets or list(PRESETS):
        with torch.device("meta"):
            model = MUGDiT(PRESETS[name])
        print(f"{name}\t{model.num_parameters():,}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mugv-dit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="official dit.pt -> config.json + model.safetensors")
    conv.add_argument("src", help="path to the official dit.pt")
    conv.add_argument("out_dir", help="output folder (created)")
    conv.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="cast the weights")
    conv.set_defaults(func=_convert)
    params = sub.add_parser("params", help="parameter count of the presets")
    params.add_argument("presets", nargs="*", help="preset names (default: all)")
    params.set_defaults(func=_params)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"mugv-dit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
