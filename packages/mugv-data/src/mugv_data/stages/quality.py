"""Per-clip quality measures: sharpness, motion, perceptual hashes (paper §2.1 filters).

Sharpness: variance of OpenCV's Laplacian of the grey frame (kept in [200, 2000] by
default), averaged over frames spread over the clip. Motion: mean optical-flow magnitude in
pixels per frame over three evenly spaced consecutive-frame pairs (start, middle, end),
averaged (kept in [1, 20]); OpenCV Farneback by default, torchvision RAFT (large or
small) when weights are given (frames with a side under 128 px are upscaled for RAFT and
the flow is scaled back to input pixels). Perceptual hash: 64-bit DCT hash (32x32 grey,
top-left 8x8 DCT block against its median) of a few frames, for near-duplicate search.
"""

from __future__ import annotations

import numpy as np

from mugv_data.config import MotionConfig


def evenly_spaced(start: int, end: int, n: int) -> list[int]:
    """``n`` frame indices spread over ``[start, end)`` (first and last included)."""
    if end <= start or n <= 0:
        return []
    if n == 1 or end - start == 1:
        return [(start + end - 1) // 2]
    return sorted({start + round(i * (end - 1 - start) / (n - 1)) for i in range(n)})


def motion_pairs(start: int, end: int) -> list[tuple[int, int]]:
    """Three consecutive-frame pairs at the start, middle and end of ``[start, end)``."""
    if end - start < 2:
        return []
    mid = (start + end - 1) // 2
    return sorted({(start, start + 1), (mid, mid + 1), (end - 2, end - 1)})


def _grey(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def sharpness(frames: list[np.ndarray]) -> float:
    """Mean Laplacian variance of the grey frames."""
    import cv2

    return float(np.mean([cv2.Laplacian(_grey(f), cv2.CV_64F).var() for f in frames]))


def _resize_max(img: np.ndarray, max_side: int | None) -> np.ndarray:
    import cv2

    if max_side is None or max(img.shape[:2]) <= max_side:
        return img
    s = max_side / max(img.shape[:2])
    return cv2.resize(
        img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA
    )


def _farneback(a: np.ndarray, b: np.ndarray) -> float:
    import cv2

    flow = cv2.calcOpticalFlowFarneback(_grey(a), _grey(b), None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return float(np.linalg.norm(flow, axis=-1).mean())


_RAFT_CACHE: dict[tuple[str, int, int], object] = {}

RAFT_MIN_SIDE = 128
"""RAFT's 8x feature maps feed a 4-level correlation pyramid: shorter sides below this are
upscaled (bilinear) before flow, and the flow is scaled back to input pixels."""


def load_raft(weights: str):
    """A torchvision RAFT (large or small, told apart by the state dict) from a ``.pth`` file."""
    try:
        from torchvision.models.optical_flow import raft_large, raft_small
    except ImportError:
        raise ImportError(
            "motion.backend='raft' needs torchvision (pip install 'mugv-data[raft]'); "
            "or use motion.backend='farneback'"
        ) from None
    import os

    import torch

    if not weights or not os.path.isfile(weights):
        raise FileNotFoundError(
            f"motion.raft_weights: no file at {weights!r}; set it to a torchvision RAFT "
            "state dict (.pth, raft_large or raft_small) or use motion.backend='farneback'"
        )
    st = os.stat(weights)
    key = (os.path.abspath(weights), st.st_mtime_ns, st.st_size)
    model = _RAFT_CACHE.get(key)
    if model is not None:
        return model
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"motion.raft_weights: {weights!r} is not a readable torch state dict ({e}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(
            f"motion.raft_weights: {weights!r} holds a {type(state).__name__}, not a state dict; "
            "save one with torch.save(model.state_dict(), path)"
        )
    for build in (raft_large, raft_small):
        model = build(weights=None, progress=False)
        if set(model.state_dict()) == set(state):
            model.load_state_dict(state)
            model.eval()
            _RAFT_CACHE[key] = model
            return model
    raise ValueError(
        f"motion.raft_weights: {weights!r} is not a torchvision raft_large or raft_small "
        "state dict (its keys match neither)"
    )


def raft_motion_batch(
    clips: list[list[tuple[np.ndarray, np.ndarray]]],
    model,
    max_side: int | None = None,
    device: str = "cpu",
) -> list[float]:
    """Mean RAFT flow magnitude (input pixels per frame) of each clip's frame pairs.

    All pairs of all clips go through the model together, one forward per frame size.
    Frames are resized to ``max_side`` first; sides under ``RAFT_MIN_SIDE`` are upscaled
    (bilinear) for RAFT and the flow scaled back; sides are padded to multiples of 8.
    """
    import torch
    import torch.nn.functional as F

    pairs = [(ci, _resize_max(a, max_side), _resize_max(b, max_side))
             for ci, ps in enumerate(clips) for a, b in ps]  # fmt: skip
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, (_, a, _) in enumerate(pairs):
        by_size.setdefault(a.shape[:2], []).append(k)
    mags = [0.0] * len(pairs)
    for (h, w), ks in by_size.items():
        scale = max(1.0, RAFT_MIN_SIDE / min(h, w))
        sh, sw = max(RAFT_MIN_SIDE, round(h * scale)), max(RAFT_MIN_SIDE, round(w * scale))

        def prep(xs: list[np.ndarray], sh: int = sh, sw: int = sw, h: int = h, w: int = w):
            t = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().to(device)
            t = t / 127.5 - 1.0
            if (sh, sw) != (h, w):
                t = F.interpolate(t, size=(sh, sw), mode="bilinear", align_corners=False)
            return F.pad(t, (0, (-sw) % 8, 0, (-sh) % 8), mode="replicate")

        with torch.inference_mode():
            flow = model(prep([pairs[k][1] for k in ks]), prep([pairs[k][2] for k in ks]))[-1]
        flow = flow[:, :, :sh, :sw].float().cpu()
        # Back to input pixels per frame: x components scale by w/sw, y by h/sh.
        flow = flow * torch.tensor([w / sw, h / sh]).view(1, 2, 1, 1)
        for k, m in zip(ks, flow.norm(dim=1).mean(dim=(1, 2)).tolist()):
            mags[k] = m
    out = []
    for ci in range(len(clips)):
        vals = [m for (c, _, _), m in zip(pairs, mags) if c == ci]
        out.append(float(np.mean(vals)) if vals else 0.0)
    return out


def motion(pairs: list[tuple[np.ndarray, np.ndarray]], cfg: MotionConfig) -> float:
    """Mean flow magnitude (pixels/frame at ``cfg.max_side`` or native size) over pairs."""
    if cfg.backend == "raft":
        return raft_motion_batch([pairs], load_raft(cfg.raft_weights), cfg.max_side)[0]
    vals = [
        _farneback(_resize_max(a, cfg.max_side), _resize_max(b, cfg.max_side)) for a, b in pairs
    ]
    return float(np.mean(vals)) if vals else 0.0


def phash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash of one frame."""
    import cv2

    small = cv2.resize(_grey(rgb), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    block = cv2.dct(small)[:8, :8].ravel()
    bits = block > np.median(block[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
