"""The ``mugv-vae`` command: ``mugv-vae train`` and ``mugv-vae eval``.

mugv-vae train --out runs/vae --preset debug --steps 200 [--config cfg.json] [--set k=v ...]
torchrun --nproc-per-node 2 -m mugv_vae.cli train --out runs/vae ...   (DDP)
mugv-vae eval --model runs/vae/final --videos clips/ --out eval/ [--lpips vgg.safetensors]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mugv_vae.config import VAEConfig
from mugv_vae.evaluation import evaluate_folder
from mugv_vae.model import VideoVAE
from mugv_vae.training import TrainConfig, VAETrainer


def _parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _train(args: argparse.Namespace) -> int:
    data: dict[str, object] = {}
    if args.config:
        data.update(json.loads(Path(args.config).read_text()))
    data["output_dir"] = args.out
    if args.preset:
        data["vae"] = VAEConfig.preset(args.preset).to_dict()
    if args.steps is not None:
        data["steps"] = args.steps
    if args.data:
        data["data"] = args.data
    for item in args.set or []:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        data[k] = _parse_value(v)
    config = TrainConfig.from_dict(data)
    trainer = VAETrainer(config)
    history = trainer.train()
    if trainer.rank == 0 and history:
        last = history[-1]
        print(f"step {int(last['step'])}: loss {last['total']:.4f} psnr {last['psnr']:.2f} dB")
        print(f"model: {Path(config.output_dir) / 'final'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    model = VideoVAE.from_pretrained(args.model)
    widths = tuple(int(w) for w in args.lpips_widths.split(",")) if args.lpips_widths else None
    result = evaluate_folder(
        model,
        args.videos,
        args.out,
        max_frames=args.max_frames,
        lpips_path=args.lpips,
        lpips_widths=widths,
    )
    print((Path(args.out) / "summary.md").read_text())
    return 1 if not result["clips"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mugv-vae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume) a video VAE")
    t.add_argument("--out", required=True, help="output folder (resumes if it has checkpoints)")
    t.add_argument("--config", help="a TrainConfig JSON file")
    t.add_argument("--preset", choices=["debug", "mugv"], help="VAE preset")
    t.add_argument("--steps", type=int)
    t.add_argument("--data", help="folder of videos (default: synthetic clips)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="TrainConfig override")
    t.set_defaults(fn=_train)
    e = sub.add_parser("eval", help="reconstruct a folder of videos and score them")
    e.add_argument("--model", required=True, help="save_pretrained folder, Hub repo or vae.pt")
    e.add_argument("--videos", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--max-frames", type=int)
    e.add_argument("--lpips", help="LPIPS weights file (never downloaded)")
    e.add_argument("--lpips-widths", help="comma-separated widths of a non-VGG16 LPIPS file")
    e.set_defaults(fn=_eval)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
