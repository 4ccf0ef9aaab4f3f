"""Caption classifiers in latent space: did the DiT learn colour and direction?

The pixel measures (``mugv_quickstart.measure``) judge decoded clips, so they can only
see what the VAE decoder reproduces. These probes judge the DiT's output before the
decoder: linear classifiers fitted on the REAL training latents (the encoded shards,
labels read from the captions), checked on real held-out latents, then applied to the
latents the trained and the untrained DiT generate for the held-out captions.

- colour: multinomial logistic regression on position-free statistics of the latent
  (per channel and latent frame: spatial mean / std / max / min, foreground-weighted
  means), so an object anywhere in the frame gives the same features;
- direction: the same on a motion feature, the track of the latent foreground
  (each latent frame minus the clip's temporal median, its energy above the frame mean)
  from one latent frame to the next.

The fit is full-batch L-BFGS in float64 from zeros: deterministic for given data.

Dimension legend: B clips, C latent channels, T latent frames, h/w latent height/width,
F features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mugv_quickstart.synthetic import COLOURS, DIRECTIONS


def caption_labels(caption: str) -> tuple[str, str]:
    """(colour, direction) named by a caption of the synthetic set."""
    words = caption.lower().replace(".", " ").replace(",", " ").split()
    colours = [w for w in words if w in COLOURS]
    directions = [w for w in words if w in DIRECTIONS]
    if len(set(colours)) != 1 or len(set(directions)) != 1:
        raise ValueError(
            f"caption {caption!r} must name exactly one colour of {list(COLOURS)} and one "
            f"direction of {list(DIRECTIONS)}"
        )
    return colours[0], directions[0]


def _check_latents(latents: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(latents, torch.Tensor):
        latents = latents.detach().float().cpu().numpy()
    latents = np.asarray(latents, np.float64)
    if latents.ndim != 5 or latents.shape[2] < 2:
        raise ValueError(
            f"latents must be [B, C, T, h, w] with T >= 2 latent frames, got {latents.shape}"
        )
    return latents


def latent_colour(latents: np.ndarray | torch.Tensor) -> np.ndarray:
    """Position-free statistics of latents [B, C, T, h, w] -> [B, 6*C*T].

    Per channel and latent frame: the spatial mean, std, max and min, and the mean of
    the latent and of its foreground (distance from the temporal median) weighted by the
    foreground energy (see :func:`latent_motion`). Where the object is does not matter.
    """
    z = _check_latents(latents)
    fg = z - np.median(z, axis=2, keepdims=True)
    weight = _foreground_energy(z)[:, None]  # [B, 1, T, h, w]
    weight = weight / weight.sum((3, 4), keepdims=True)
    feats = [z.mean((3, 4)), z.std((3, 4)), z.max((3, 4)), z.min((3, 4)),
             (z * weight).sum((3, 4)), (fg * weight).sum((3, 4))]  # fmt: skip
    return np.concatenate([f.reshape(len(z), -1) for f in feats], axis=1)


def _foreground_energy(z: np.ndarray) -> np.ndarray:
    """[B, C, T, h, w] -> [B, T, h, w]: distance from the temporal median, above the mean."""
    fg = np.abs(z - np.median(z, axis=2, keepdims=True)).sum(1)
    return np.maximum(fg - fg.mean((2, 3), keepdims=True), 0.0) + 1e-12


def latent_motion(latents: np.ndarray | torch.Tensor) -> np.ndarray:
    """Foreground track of latents [B, C, T, h, w] -> [B, 2*T] (dx, dy per step and in all).

    The foreground of a latent frame is its distance from the clip's temporal median
    (a static background cancels); its energy above the frame's mean weights the
    (x, y) centroid. The features are the centroid's steps between consecutive latent
    frames and its travel from the first to the last, in latent pixels.
    """
    z = _check_latents(latents)
    fg = _foreground_energy(z)
    ys, xs = np.mgrid[0 : z.shape[3], 0 : z.shape[4]]
    mass = fg.sum((2, 3))
    cx = (fg * xs).sum((2, 3)) / mass  # [B, T]
    cy = (fg * ys).sum((2, 3)) / mass
    steps = np.concatenate([np.diff(cx, axis=1), np.diff(cy, axis=1)], axis=1)
    travel = np.stack([cx[:, -1] - cx[:, 0], cy[:, -1] - cy[:, 0]], axis=1)
    return np.concatenate([steps, travel], axis=1)


class LinearProbe:
    """Multinomial logistic regression over named classes, standardised features.

    ``fit(features [B, F], labels)`` then ``predict(features) -> labels``. The weights
    start at zero and L-BFGS runs full batch in float64, so a fit is deterministic.
    """

    def __init__(
        self, classes: Sequence[str], weight_decay: float = 1e-2, max_iter: int = 100
    ) -> None:
        if len(set(classes)) < 2:
            raise ValueError(f"a probe needs at least two distinct classes, got {list(classes)}")
        self.classes = list(classes)
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self._mean: np.ndarray | None = None

    def _standardise(self, features: np.ndarray) -> torch.Tensor:
        if self._mean is None:
            raise RuntimeError("LinearProbe.predict before fit: call fit(features, labels)")
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"features must be [B, {self._mean.shape[0]}], got {x.shape}")
        return torch.from_numpy((x - self._mean) / self._scale)

    def fit(self, features: np.ndarray, labels: Sequence[str]) -> LinearProbe:
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or len(x) != len(labels) or len(x) < 2:
            raise ValueError(
                f"fit needs features [B, F] and B labels (B >= 2), got {x.shape} and "
                f"{len(labels)} labels"
            )
        unknown = sorted(set(labels) - set(self.classes))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the classes {self.classes}")
        self._mean = x.mean(0)
        self._scale = x.std(0) + 1e-6
        z = self._standardise(x)
        y = torch.tensor([self.classes.index(t) for t in labels])
        weight = torch.zeros(z.shape[1], len(self.classes), dtype=torch.float64)
        bias = torch.zeros(len(self.classes), dtype=torch.float64)
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        opt = torch.optim.LBFGS(
            [weight, bias], max_iter=self.max_iter, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(z @ weight + bias, y)
            loss = loss + self.weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self._weight, self._bias = weight.detach(), bias.detach()
        return self

    def predict(self, features: np.ndarray) -> list[str]:
        logits = self._standardise(features) @ self._weight + self._bias
        return [self.classes[int(k)] for k in logits.argmax(1)]

    def accuracy(self, features: np.ndarray, labels: Sequence[str]) -> float:
        predicted = self.predict(features)
        if len(predicted) != len(labels) or not labels:
            raise ValueError(f"need one label per row, got {len(predicted)} rows, {len(labels)}")
        return sum(p == t for p, t in zip(predicted, labels)) / len(labels)


@dataclass
class LatentProbes:
    """A colour and a direction probe fitted on real latents; see :func:`fit_latent_probes`."""

    colour: LinearProbe
    direction: LinearProbe

    def predict(self, latents: np.ndarray | torch.Tensor) -> list[tuple[str, str]]:
        """(colour, direction) of each latent clip [B, C, T, h, w]."""
        colours = self.colour.predict(latent_colour(latents))
        directions = self.direction.predict(latent_motion(latents))
        return list(zip(colours, directions))


def fit_latent_probes(
    latents: np.ndarray | torch.Tensor, labels: Sequence[tuple[str, str]]
) -> LatentProbes:
    """Fit both probes on real latents [B, C, T, h, w] with their (colour, direction)."""
    if len(labels) != len(latents):
        raise ValueError(f"need one (colour, direction) per latent, got {len(labels)}")
    colour = LinearProbe(list(COLOURS), weight_decay=0.1).fit(
        latent_colour(latents), [c for c, _ in labels]
    )
    direction = LinearProbe(list(DIRECTIONS)).fit(latent_motion(latents), [d for _, d in labels])
    return LatentProbes(colour=colour, direction=direction)
