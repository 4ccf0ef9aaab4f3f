"""Synthetic training shards with a learnable text -> latent relation (tests, benchmarks)."""

from __future__ import annotations

from pathlib import Path

import torch


def write_synthetic_shards(
    out_dir: str | Path,
    *,
    num_samples: int = 32,
    channels: int = 24,
    frames: int = 2,
    height: int = 8,
    width: int = 8,
    text_dim: int = 384,
    text_tokens: int = 6,
    num_classes: int = 4,
    image_every: int = 0,
    seed: int = 0,
    labels: bool = False,
    amplitude: float = 5.0,
) -> Path:
    """Write ``num_samples`` samples in mugv-data's shard format.

    Each sample belongs to one of ``num_classes`` classes: its latent is a fixed smooth
    pattern of the class (``amplitude`` sets its scale) plus a little noise, and its caption embedding a fixed random
    vector of the class, so the flow loss can fall well below its initial value.
    ``image_every`` > 0 makes every n-th sample a one-frame image.
    """
    from mugv_data import ShardWriter

    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, channels, 1, height, width, generator=g)
    protos = (
        torch.nn.functional.avg_pool3d(protos, (1, 3, 3), stride=1, padding=(0, 1, 1)) * amplitude
    )
    captions = torch.randn(num_classes, text_tokens, text_dim, generator=g)
    with ShardWriter(out_dir, shard_size=16) as writer:
        for i in range(num_samples):
            c = i % num_classes
            t = 1 if image_every and i % image_every == 0 else frames
            latent = protos[c].repeat(1, t, 1, 1) + 0.05 * torch.randn(
                channels, t, height, width, generator=g
            )
            sample = {
                "id": f"s{i:05d}", "latent": latent, "text": captions[c].clone(), "caption": f"class {c}",
                "fps": 24.0, "num_frames": 1 if t == 1 else 8 * t, "height": 8 * height,
                "width": 8 * width, "bucket": f"{t}x{height}x{width}", "weight": 1.0, "source": "synthetic",
            }  # fmt: skip
            if labels:
                sample["label"] = bool(c % 2 == 0)
            writer.write(sample)
    return Path(out_dir)
