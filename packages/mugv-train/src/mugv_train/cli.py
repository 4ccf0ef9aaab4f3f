"""``mugv-train``: run a recipe (under torchrun for several ranks), or post-hoc EMA.

mugv-train RECIPE --shards DIR --out DIR [key=value ...]
torchrun --nproc-per-node 8 -m mugv_train.cli stage3 --shards ... --out ... parallel.tensor_parallel=4
mugv-train post-ema --gamma 0.9 --out merged export_step1 export_step2 ...
"""

from __future__ import annotations

import argparse
import json
import sys

from mugv_train.config import apply_overrides
from mugv_train.recipes import RECIPES


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "post-ema":
        p = argparse.ArgumentParser(
            prog="mugv-train post-ema", description="Post-hoc EMA of exports"
        )
        p.add_argument("dirs", nargs="+", help="mugv-dit export folders, oldest first")
        p.add_argument(
            "--gamma", type=float, required=True, help="decay ratio per checkpoint, (0, 1]"
        )
        p.add_argument("--out", required=True)
        args = p.parse_args(argv[1:])
        from mugv_train.ema import post_hoc_ema_from_exports

        print(post_hoc_ema_from_exports(args.dirs, args.gamma, args.out))
        return 0
    p = argparse.ArgumentParser(prog="mugv-train", description="Train MUG-DiT with a recipe")
    p.add_argument("recipe", choices=sorted(RECIPES))
    p.add_argument("--shards", required=True, help="mugv-data shard root(s), ','-separated")
    p.add_argument("--out", required=True, help="output folder (checkpoints, logs, export)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="section.field=value, e.g. optim.lr=1e-4")
    args = p.parse_intermixed_args(argv)
    config = apply_overrides(RECIPES[args.recipe](args.shards, args.out), args.overrides)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2, default=list))
        return 0
    from mugv_train.loop import train

    result = train(config)
    if result.export_dir is not None:
        print(f"exported mugv-dit weights to {result.export_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
