"""The run's pictures and report: contact sheet, loss curves, markdown.

Matplotlib runs on the Agg backend (no display needed). Every file is written
atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mugv_quickstart._media import atomic_path, write_png

_LABEL_HEIGHT = 12


def contact_sheet(
    rows: Sequence[tuple[str, np.ndarray]], every: int = 4, scale: int = 2, gap: int = 2
) -> np.ndarray:
    """One image [H', W', 3] uint8: a row per clip, every ``every``-th frame, labelled.

    ``rows`` holds (label, frames [N, H, W, 3] uint8); all clips share H and W. Each row
    starts with its label on a strip above the frames.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("contact_sheet needs at least one clip")
    h, w = rows[0][1].shape[1:3]
    if any(f.shape[1:3] != (h, w) for _, f in rows):
        raise ValueError("all clips of a contact sheet must have the same frame size")
    cols = max(len(range(0, len(f), every)) for _, f in rows)
    fh, fw = h * scale, w * scale
    row_h = _LABEL_HEIGHT + fh + gap
    sheet = np.full((gap + len(rows) * row_h, gap + cols * (fw + gap), 3), 255, np.uint8)
    for r, (_, frames) in enumerate(rows):
        y = gap + r * row_h + _LABEL_HEIGHT
        for c, i in enumerate(range(0, len(frames), every)):
            big = frames[i].repeat(scale, 0).repeat(scale, 1)
            x = gap + c * (fw + gap)
            sheet[y : y + fh, x : x + fw] = big
    img = Image.fromarray(sheet)
    draw = ImageDraw.Draw(img)
    for r, (label, _) in enumerate(rows):
        draw.text((gap + 1, gap + r * row_h), label, fill=(0, 0, 0))
    return np.asarray(img)


def write_loss_curves(path: Path, curves: Mapping[str, Sequence[float]]) -> Path:
    """One panel per named loss history (raw and a moving average), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("write_loss_curves needs at least one loss history")
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.4), squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items()):
        v = np.asarray(values, np.float64)
        steps = np.arange(1, len(v) + 1)
        ax.plot(steps, v, color="0.75", linewidth=0.8, label="per step")
        k = max(1, len(v) // 20)
        if k > 1:
            smooth = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, color="C0", label=f"mean of {k}")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if np.all(v > 0):
            ax.set_yscale("log")
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    tmp = atomic_path(path)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def write_contact_sheet(path: Path, rows: Sequence[tuple[str, np.ndarray]], **kw) -> Path:
    """:func:`contact_sheet` written as PNG."""
    return write_png(path, contact_sheet(rows, **kw))


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def percent(x: float) -> str:
    return f"{100 * x:.0f}%"
