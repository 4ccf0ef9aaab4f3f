"""Bucketing: resolution tier x aspect ratio x duration, shaped for the DiT.

Aspect ratio: the bucket whose H/W is closest in log space. Tier: the largest whose bucket
has no more pixels than the clip (no upscaling unless ``allow_upscale``). Duration: the
longest frame count F (= 1 mod 8, at ``fps``) whose span F / fps fits in the clip. Bucket
names read ``<tier>_<H:W>_<F>f``, e.g. ``720p_9:16_121f``.
"""

from __future__ import annotations

import math

from mugv_data.config import BucketConfig


def assign_bucket(width: int, height: int, duration_s: float, cfg: BucketConfig) -> dict | None:
    """The bucket of a clip as ``{bucket, tier, aspect, bucket_height, bucket_width,
    bucket_frames}``, or ``None`` if it fits no bucket (too small or too short)."""
    sizes = cfg.sizes()
    ar = math.log(height / width)
    aspect = min(
        cfg.aspect_ratios,
        key=lambda a: (abs(math.log(cfg.aspect_ratios[a][0] / cfg.aspect_ratios[a][1]) - ar), a),
    )
    tiers = sorted(sizes, key=lambda t: sizes[t][aspect][0] * sizes[t][aspect][1])
    fitting = [t for t in tiers if sizes[t][aspect][0] * sizes[t][aspect][1] <= width * height]
    if not fitting:
        if not cfg.allow_upscale:
            return None
        fitting = tiers[:1]
    tier = fitting[-1]
    frames = [f for f in cfg.frame_counts() if f / cfg.fps <= duration_s + 1e-6]
    if not frames:
        return None
    h, w = sizes[tier][aspect]
    f = max(frames)
    return {
        "bucket": f"{tier}_{aspect}_{f}f",
        "tier": tier,
        "aspect": aspect,
        "bucket_height": h,
        "bucket_width": w,
        "bucket_frames": f,
    }
