"""Rectified-flow objective of MUG-V (reference §D.1, §D.4; paper §4.1).

Dimension legend: B batch, C latent channels, T latent frames, H/W latent height/width,
S text tokens, E text dim.

Conventions (identical to the official scheduler):
- t lives on the 0-1000 scale and s = t / 1000; t = 1000 is pure noise.
- x_t = (1 - s) * x0 + s * eps, and the model predicts the velocity v = x0 - eps.
- t is logit-normal (sigmoid of N(0, 1)) and then shifted towards noise by
  s' = r s / (1 + (r - 1) s) with r = sqrt(H W / 512^2) * sqrt(T_lat) (pixels, latent frames;
  an image uses a time factor of 1).
- The loss uses the first C of the 2C output channels, is averaged per sample over the
  generated frames (x_mask True) x C x H x W, multiplied by a per-task weight (t2i x 0.3) and
  averaged over samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

NUM_TIMESTEPS = 1000.0
BASE_RESOLUTION = 512.0

#: Per-task loss weights of the official trainer (t2i samples count 0.3, reference §D.4).
TASK_LOSS_WEIGHTS: dict[str, float] = {
    "t2i": 0.3,
    "t2v": 1.0,
    "i2v": 1.0,
    "i2v_random": 1.0,
    "i2v_last": 1.0,
}

TASKS = tuple(TASK_LOSS_WEIGHTS)


def shift_ratio(
    height_px: torch.Tensor | float,
    width_px: torch.Tensor | float,
    num_latent_frames: torch.Tensor | float,
) -> torch.Tensor:
    """Resolution/length shift ratio r = sqrt(H W / 512^2) * sqrt(T_lat) (§D.2).

    Sizes are in pixels, the frame count in latent frames; one latent frame (an image)
    uses a time factor of 1, which the formula already gives.
    """
    h = torch.as_tensor(height_px, dtype=torch.float64)
    w = torch.as_tensor(width_px, dtype=torch.float64)
    t = torch.as_tensor(num_latent_frames, dtype=torch.float64)
    if (h <= 0).any() or (w <= 0).any() or (t <= 0).any():
        raise ValueError(
            f"shift_ratio needs positive sizes, got height={h.tolist()}, width={w.tolist()}, "
            f"frames={t.tolist()}; pass pixel sizes (latent x 8) and latent frame counts"
        )
    return torch.sqrt(h * w / BASE_RESOLUTION**2) * torch.sqrt(t)


def shift_timesteps(t: torch.Tensor, ratio: torch.Tensor | float) -> torch.Tensor:
    """Shift t (0-1000) towards noise: s' = r s / (1 + (r - 1) s) (§D.2)."""
    s = t.to(torch.float64) / NUM_TIMESTEPS
    r = torch.as_tensor(ratio, dtype=torch.float64)
    shifted = r * s / (1.0 + (r - 1.0) * s)
    return (shifted * NUM_TIMESTEPS).to(t.dtype)


def sample_timesteps(
    batch_size: int,
    *,
    height_px: torch.Tensor | float,
    width_px: torch.Tensor | float,
    num_latent_frames: torch.Tensor | float,
    generator: torch.Generator | None = None,
    shift: bool = True,
    shift_scale: float = 1.0,
) -> torch.Tensor:
    """Logit-normal timesteps on 0-1000 with the resolution/length shift (ratio times
    ``shift_scale``): float32 [B]."""
    n = torch.randn(batch_size, generator=generator, dtype=torch.float32)
    t = torch.sigmoid(n) * NUM_TIMESTEPS
    if shift:
        ratio = shift_ratio(height_px, width_px, num_latent_frames) * shift_scale
        t = shift_timesteps(t, ratio.to(torch.float32))
    return t


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, x_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """x_t = (1 - t/1000) x0 + (t/1000) eps; frames with x_mask False stay clean.

    x0, noise: [B, C, T, H, W]; t: [B] on 0-1000; x_mask: [B, T] bool (True = generate).
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    s = (t.to(x0.dtype) / NUM_TIMESTEPS).view(-1, *([1] * (x0.dim() - 1)))
    xt = (1.0 - s) * x0 + s * noise
    if x_mask is not None:
        keep = x_mask.to(torch.bool)[:, None, :, None, None]
        xt = torch.where(keep, xt, x0)
    return xt


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target v = x0 - eps (pointing from noise to data)."""
    return x0 - noise


def per_sample_flow_loss(
    pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, x_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Masked mean squared velocity error per sample: float32 [B].

    pred: [B, 2C, T, H, W] (or [B, C, ...]); only the first C channels are the velocity,
    the learned-sigma half gets no loss (reference §H.13). The mean runs over generated
    frames x C x H x W; a sample with no generated frame contributes 0.
    """
    c = x0.shape[1]
    if pred.shape[1] not in (c, 2 * c) or pred.shape[2:] != x0.shape[2:]:
        raise ValueError(
            f"prediction {tuple(pred.shape)} does not match latents {tuple(x0.shape)}: expected "
            f"[B, C or 2C, T, H, W]"
        )
    err = (pred[:, :c].float() - velocity_target(x0, noise).float()) ** 2  # [B, C, T, H, W]
    per_frame = err.mean(dim=(1, 3, 4))  # [B, T]
    if x_mask is None:
        return per_frame.mean(dim=1)
    m = x_mask.to(per_frame.dtype)
    return (per_frame * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def task_weights(tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """Per-sample loss weights from task names (t2i x 0.3 by default): float32 [B]."""
    table = TASK_LOSS_WEIGHTS if weights is None else weights
    unknown = sorted({t for t in tasks if t not in table})
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known tasks: {sorted(table)}")
    return torch.tensor([table[t] for t in tasks], dtype=torch.float32)


def flow_matching_loss(
    pred: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    x_mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean over samples of :func:`per_sample_flow_loss` (a scalar)."""
    per_sample = per_sample_flow_loss(pred, x0, noise, x_mask)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()


@dataclass(frozen=True)
class TaskMix:
    """Probabilities of the training tasks for video samples (images are always t2i).

    ``t2v`` generates every frame; the ``i2v*`` tasks keep one latent frame clean (first,
    random, last) and condition on it with timestep 0 (paper §3.7).
    """

    t2v: float = 1.0
    i2v: float = 0.0
    i2v_random: float = 0.0
    i2v_last: float = 0.0

    def __post_init__(self) -> None:
        probs = (self.t2v, self.i2v, self.i2v_random, self.i2v_last)
        if any(p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ValueError(f"TaskMix probabilities must be >= 0 and sum to 1, got {probs}")


def sample_tasks(
    num_frames: Sequence[int], mix: TaskMix, generator: torch.Generator | None = None
) -> list[str]:
    """Draw a task per sample: one-frame samples are t2i, videos follow ``mix``."""
    names = ("t2v", "i2v", "i2v_random", "i2v_last")
    probs = torch.tensor([mix.t2v, mix.i2v, mix.i2v_random, mix.i2v_last], dtype=torch.float64)
    out = []
    for n in num_frames:
        if n == 1:
            out.append("t2i")
        else:
            out.append(names[int(torch.multinomial(probs, 1, generator=generator))])
    return out


def task_x_mask(
    tasks: Sequence[str], num_frames: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x_mask [B, T] bool (True = generate) for each task; conditioning frames are False."""
    mask = torch.ones(len(tasks), num_frames, dtype=torch.bool)
    for i, task in enumerate(tasks):
        if task in ("t2i", "t2v"):
            continue
        if num_frames < 2:
            raise ValueError(f"task {task!r} needs at least 2 latent frames, got {num_frames}")
        if task == "i2v":
            mask[i, 0] = False
        elif task == "i2v_last":
            mask[i, -1] = False
        elif task == "i2v_random":
            mask[i, int(torch.randint(num_frames, (1,), generator=generator))] = False
        else:
            raise ValueError(f"unknown task {task!r}; known tasks: {list(TASKS)}")
    return mask


def drop_captions(
    text: torch.Tensor,
    text_mask: torch.Tensor,
    null_embedding: torch.Tensor,
    prob: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier-free-guidance caption dropout (reference §G.3).

    text: [B, S, E]; text_mask: [B, S]; null_embedding: [S_max, E] with S_max >= S.
    With probability ``prob`` a sample's caption is replaced, token position by token
    position, by the null embedding; caption lengths are kept, as in the official code.
    Returns (text, dropped [B] bool).
    """
    b, s, e = text.shape
    if null_embedding.shape[0] < s or null_embedding.shape[1] != e:
        raise ValueError(
            f"null embedding {tuple(null_embedding.shape)} cannot cover captions of {s} tokens x "
            f"{e} dims; make it [>= {s}, {e}]"
        )
    dropped = torch.rand(b, generator=generator) < prob
    if not dropped.any():
        return text, dropped
    null = null_embedding[:s].to(text).unsqueeze(0).expand(b, s, e)
    sel = dropped[:, None, None] & text_mask.to(torch.bool)[:, :, None]
    return torch.where(sel, null, text), dropped
