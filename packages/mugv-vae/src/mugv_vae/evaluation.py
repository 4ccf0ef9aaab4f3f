"""`evaluate_folder`: reconstruct every video of a folder and score it (paper Table 2 metrics).

Per clip: PSNR and SSIM (frame-wise on [0, 1] pixels, averaged over frames), LPIPS when a
weights file is given. Outputs in ``out_dir``: ``metrics.json`` (per clip, errors included),
``summary.md`` (a table plus the mean over clips) and ``frames/<clip>_fXXXX.png`` side-by-side
original | reconstruction images. A file that does not decode, and an entry that is not a
regular file (a FIFO, a device: never opened), is reported in ``failed`` and skipped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mugv_vae._video_io import VIDEO_SUFFIXES, read_video, scan_videos
from mugv_vae.losses import LPIPS
from mugv_vae.model import VideoVAE


def psnr_video(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-frame PSNR (dB) of [3, N, H, W] videos in [-1, 1], on the [0, 1] scale."""
    a01, b01 = (a.float().clamp(-1, 1) + 1) / 2, (b.float().clamp(-1, 1) + 1) / 2
    mse = ((a01 - b01) ** 2).mean(dim=(0, 2, 3)).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim_video(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-frame SSIM (Gaussian 11x11, sigma 1.5, on [0, 1], channels averaged)."""
    x = ((a.float().clamp(-1, 1) + 1) / 2).transpose(0, 1)  # [N, 3, H, W]
    y = ((b.float().clamp(-1, 1) + 1) / 2).transpose(0, 1)
    size = min(11, x.shape[-2], x.shape[-1])
    win = _gaussian_window(size).to(x.device)[None, None].repeat(3, 1, 1, 1)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx**2
    syy = filt(y * y) - my**2
    sxy = filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def _save_side_by_side(path: Path, original: torch.Tensor, recon: torch.Tensor) -> None:
    from PIL import Image

    pair = torch.cat([original, recon], dim=-1)  # [3, H, 2W]
    arr = ((pair.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    img = Image.fromarray(arr.permute(1, 2, 0).cpu().numpy())
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def evaluate_folder(
    model: VideoVAE,
    folder: str | Path,
    out_dir: str | Path,
    *,
    max_frames: int | None = None,
    lpips_path: str | Path | None = None,
    lpips_widths: tuple[int, ...] | None = None,
    frames_per_clip: int = 2,
    sample: bool = False,
) -> dict[str, Any]:
    """Reconstruct each video of ``folder`` and write metrics, a summary and PNG frames.

    Returns ``{"clips": [...], "failed": [...], "mean": {...}}``; each clip entry has
    ``name, frames, height, width, psnr, ssim`` (+ ``lpips``), each failure ``name, error``.
    Frame sizes that are not multiples of 8 are compared on the decoded (floored) area.
    """
    if not isinstance(model, VideoVAE):
        raise TypeError(f"model must be a VideoVAE, got {type(model).__name__}")
    for name, value in (("max_frames", max_frames), ("frames_per_clip", frames_per_clip)):
        if value is None and name == "max_frames":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(out_dir, str | os.PathLike):
        raise TypeError(f"out_dir must be a str or os.PathLike, got {type(out_dir).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {out} exists and is not a folder; give a folder")
    if lpips_path is not None and not Path(lpips_path).is_file():
        raise FileNotFoundError(f"LPIPS weights file {lpips_path} does not exist")
    videos, skipped = scan_videos(folder)
    if not videos and not skipped:
        raise FileNotFoundError(
            f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {folder}; give a folder of videos"
        )
    (out / "frames").mkdir(parents=True, exist_ok=True)
    lpips = LPIPS.from_file(lpips_path, lpips_widths).to(model.device) if lpips_path else None
    clips: list[dict[str, Any]] = []
    failed = [{"name": p.name, "error": f"skipped: {why}"} for p, why in skipped]
    model.eval()
    for path in videos:
        try:
            video, _ = read_video(path, max_frames=max_frames)
        except (ValueError, OSError) as exc:
            failed.append({"name": path.name, "error": str(exc)})
            continue
        n, h, w = video.shape[1:]
        h8, w8 = h // 8 * 8, w // 8 * 8
        if h8 < 8 or w8 < 8:
            failed.append({"name": path.name, "error": f"frames {h}x{w} are smaller than 8x8"})
            continue
        x = video[:, :, :h8, :w8][None].to(model.device, model.dtype)
        with torch.no_grad():
            recon = model.decode(model.encode(x, sample=sample), num_frames=n)[0].float().cpu()
        ref = x[0].float().cpu()
        entry: dict[str, Any] = {
            "name": path.name,
            "frames": n,
            "height": h8,
            "width": w8,
            "psnr": psnr_video(recon, ref),
            "ssim": ssim_video(recon, ref),
        }
        if lpips is not None:
            with torch.no_grad():
                d = lpips(recon.clamp(-1, 1).transpose(0, 1), ref.transpose(0, 1))
            entry["lpips"] = float(d.mean())
        idx = np.linspace(0, n - 1, num=min(frames_per_clip, n)).round().astype(int)
        for i in sorted(set(idx.tolist())):
            _save_side_by_side(out / "frames" / f"{path.stem}_f{i:04d}.png", ref[:, i], recon[:, i])
        clips.append(entry)
    keys = ["psnr", "ssim"] + (["lpips"] if lpips is not None else [])
    mean = {k: (sum(c[k] for c in clips) / len(clips) if clips else math.nan) for k in keys}
    result = {"clips": clips, "failed": failed, "mean": mean}
    _atomic_text(out / "metrics.json", json.dumps(result, indent=2))
    lines = ["| clip | frames | size | " + " | ".join(k.upper() for k in keys) + " |"]
    lines.append("|---|---|---|" + "---|" * len(keys))
    for c in clips:
        vals = " | ".join(f"{c[k]:.4f}" for k in keys)
        lines.append(f"| {c['name']} | {c['frames']} | {c['height']}x{c['width']} | {vals} |")
    lines.append(
        f"| **mean** ({len(clips)} clips) | | | "
        + " | ".join(f"{mean[k]:.4f}" for k in keys)
        + " |"
    )
    if failed:
        lines += ["", "Failed to decode:", *[f"- {f['name']}: {f['error']}" for f in failed]]
    _atomic_text(out / "summary.md", "\n".join(lines) + "\n")
    return result


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
