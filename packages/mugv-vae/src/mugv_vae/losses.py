"""Training losses of the video VAE (paper §4.1, reference notes §2.3).

Dimension legend: B batch, C channels, N frames, H/W height/width.

L_VAE = L_rec + lambda * L_KL + gamma * L_GAN with
L_rec = w_l1 * l1 (or the adaptive l1 once enabled) + w_mse * mse + w_perc * LPIPS.

- ``adaptive_l1``: the paper's saliency w_t = Delta_t nabla^2 x_t (temporal forward difference
  of the per-frame Laplacian of the target) weights the l1 term. The paper gives no
  normalisation; we use w = 1 + s / mean(s) per clip (s = |Delta_t nabla^2 x|, averaged over
  channels), so static regions keep the plain l1 gradient and fast-changing edges get more.
- ``kl_loss``: KL(q || N(0, I)) summed over latent elements, averaged over the batch.
- ``LPIPS``: LPIPS-style perceptual distance (VGG16 feature stack with torchvision-style
  ``features.{i}`` names, unit-normalised features, learned 1x1 ``lin{k}.model.1`` heads).
  Weights come only from a file path; nothing is downloaded.
- ``PatchDiscriminator3D`` with ``hinge_d_loss`` for the final stage (small gamma).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------
# pixel losses
# ---------------------------------------------------------------------------------------

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian(video: torch.Tensor) -> torch.Tensor:
    """Per-frame, per-channel 3x3 Laplacian with replicate padding: [B, C, N, H, W]."""
    b, c, n, h, w = video.shape
    frames = video.transpose(1, 2).reshape(b * n * c, 1, h, w)
    k = _LAPLACIAN.to(video.device, video.dtype)[None, None]
    out = F.conv2d(F.pad(frames, (1, 1, 1, 1), mode="replicate"), k)
    return out.reshape(b, n, c, h, w).transpose(1, 2)


def saliency_weights(target: torch.Tensor) -> torch.Tensor:
    """Adaptive weights [B, 1, N, H, W] = 1 + s / mean(s), s = |Delta_t nabla^2 x| (paper §4.1).

    Delta_t is the forward difference; the last frame reuses the previous difference. A
    single-frame clip (no motion) gets weight 1 everywhere.
    """
    target = target.detach()
    if target.shape[2] < 2:
        return torch.ones_like(target[:, :1])
    lap = laplacian(target)
    diff = (lap[:, :, 1:] - lap[:, :, :-1]).abs().mean(dim=1, keepdim=True)
    s = torch.cat([diff, diff[:, :, -1:]], dim=2)
    mean = s.mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-8)
    return 1.0 + s / mean


def adaptive_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Saliency-weighted l1, replacing plain l1 once enabled (paper §4.1)."""
    return (saliency_weights(target) * (recon - target).abs()).mean()


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), summed per sample, averaged over the batch."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: (mean relu(1 - real) + mean relu(1 + fake)) / 2."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: -mean(D(fake))."""
    return -logits_fake.mean()


# ---------------------------------------------------------------------------------------
# LPIPS-style perceptual loss
# ---------------------------------------------------------------------------------------

#: VGG16 conv stack: (out channels, convs) per stage; a feature is taken after each stage.
VGG16_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class LPIPS(nn.Module):
    """LPIPS-style distance between frames in [-1, 1]; weights only from a path.

    Key layout: ``net.features.{i}.weight/bias`` (torchvision ``vgg16().features`` indices)
    and ``lin{k}.model.1.weight`` [1, C_k, 1, 1] (the official LPIPS head names). Use
    ``widths`` to build a smaller feature net of the same shape family (tests).
    """

    def __init__(self, widths: tuple[int, ...] | None = None) -> None:
        super().__init__()
        stages = VGG16_STAGES if widths is None else tuple(
            (w, n) for w, (_, n) in zip(widths, VGG16_STAGES, strict=True)
        )  # fmt: skip
        layers: list[nn.Module] = []
        self.taps: list[int] = []
        cin = 3
        for si, (cout, n) in enumerate(stages):
            if si > 0:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(n):
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=False)]
                cin = cout
            self.taps.append(len(layers) - 1)
        self.net = nn.Module()
        self.net.features = nn.Sequential(*layers)
        for k, (cout, _) in enumerate(stages):
            head = nn.Sequential(nn.Dropout(0.0), nn.Conv2d(cout, 1, 1, bias=False))
            setattr(self, f"lin{k}", nn.Module())
            getattr(self, f"lin{k}").model = head
        # ImageNet-style input scaling of LPIPS
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path, widths: tuple[int, ...] | None = None) -> LPIPS:
        """Load weights (safetensors or a torch state dict) from ``path``; strict keys."""
        from mugv_vae._checkpoint import load_state_dict_strict

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS weights not found at {path}; provide a file with the VGG16 features "
                "and lin heads (nothing is downloaded at run time)"
            )
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(path)
            else:  # tensors only: a pickled object is refused, never run
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            found = re.search(r"GLOBAL (\S+)", str(exc))
            why = (
                f"it holds pickled Python objects ({found.group(1)}), not only tensors, and "
                "loading it could run code"
                if found
                else " ".join(str(exc).split())[:200]
            )
            raise ValueError(
                f"refusing to load LPIPS weights {path}: {why}; give a safetensors file or a "
                "torch state dict of tensors only"
            ) from exc
        model = cls(widths)
        load_state_dict_strict(model, state, str(path))
        return model

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image distance [B'] of frames [B', 3, H, W] (or videos [B, 3, N, H, W] -> [B])."""
        video = a.ndim == 5
        if video:
            bsz = a.shape[0]
            a = a.transpose(1, 2).flatten(0, 1)
            b = b.transpose(1, 2).flatten(0, 1)
        xa, xb = (a - self.shift) / self.scale, (b - self.shift) / self.scale
        total = a.new_zeros(a.shape[0])
        k = 0
        for i, layer in enumerate(self.net.features):
            xa, xb = layer(xa), layer(xb)
            if i in self.taps:
                fa = xa / (xa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                fb = xb / (xb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                d = getattr(self, f"lin{k}").model((fa - fb) ** 2)
                total = total + d.mean(dim=(1, 2, 3))
                k += 1
        return total.view(bsz, -1).mean(1) if video else total


# ---------------------------------------------------------------------------------------
# discriminator
# ---------------------------------------------------------------------------------------


class PatchDiscriminator3D(nn.Module):
    """3D PatchGAN: strided Conv3d stack -> a grid of real/fake logits [B, 1, n, h, w]."""

    def __init__(self, channels: int = 64, layers: int = 3, groups: int = 8) -> None:
        super().__init__()
        mods: list[nn.Module] = [
            nn.Conv3d(3, channels, 4, stride=(1, 2, 2), padding=(2, 1, 1)),
            nn.LeakyReLU(0.2),
        ]
        c = channels
        for i in range(1, layers):
            cout = channels * min(2**i, 8)
            stride = (2, 2, 2) if i < layers - 1 else (1, 1, 1)
            mods += [
                nn.Conv3d(c, cout, 4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(min(groups, cout), cout),
                nn.LeakyReLU(0.2),
            ]
            c = cout
        mods.append(nn.Conv3d(c, 1, 3, padding=1))
        self.main = nn.Sequential(*mods)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.main(video)


# ---------------------------------------------------------------------------------------
# combined loss
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossWeights:
    """Weights of L_VAE; the paper does not publish them, these are our defaults."""

    l1: float = 1.0
    """Weight of l1 (or adaptive l1 once ``adaptive`` is on)."""
    mse: float = 1.0
    """Weight of the MSE term."""
    perceptual: float = 0.1
    """Weight of LPIPS (ignored without an LPIPS model)."""
    kl: float = 1e-6
    """lambda: weight of the KL term."""
    gan: float = 0.05
    """gamma: weight of the generator GAN term (final stage only, kept small)."""
    feature: float = 0.0
    """Weight of the feature-matching term (``VAETrainer``; 0 = off): MSE between the
    temporal stage's decode of the posterior mean (each latent alone,
    ``VideoVAE.decode_features``) and the 2D trunk's features of the clip
    (``VideoVAE.trunk_features``, no gradient). A dense target for a fresh temporal stage
    on a trained trunk, which otherwise learns to pass object detail only slowly."""


class VAELoss(nn.Module):
    """L_rec + lambda L_KL (+ gamma L_GAN): returns the total and a dict of float parts."""

    def __init__(self, weights: LossWeights | None = None, lpips: LPIPS | None = None) -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        self.lpips = lpips

    def forward(
        self,
        recon: torch.Tensor,
        target: torch.Tensor,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        *,
        adaptive: bool = False,
        logits_fake: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights
        recon = recon.float()
        target = target.float()
        parts: dict[str, torch.Tensor] = {}
        parts["l1"] = adaptive_l1(recon, target) if adaptive else (recon - target).abs().mean()
        parts["mse"] = F.mse_loss(recon, target)
        total = w.l1 * parts["l1"] + w.mse * parts["mse"]
        if self.lpips is not None and w.perceptual > 0:
            parts["perceptual"] = self.lpips(recon, target).mean()
            total = total + w.perceptual * parts["perceptual"]
        parts["kl"] = kl_loss(mean.float(), logvar.float())
        total = total + w.kl * parts["kl"]
        if logits_fake is not None:
            parts["gan"] = hinge_g_loss(logits_fake.float())
            total = total + w.gan * parts["gan"]
        out = {k: float(v.detach()) for k, v in parts.items()}
        out["total"] = float(total.detach())
        return total, out
