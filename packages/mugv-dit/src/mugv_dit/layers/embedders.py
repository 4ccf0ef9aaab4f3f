"""Input and output layers of MUG-DiT (reference §A.3, §A.4, §A.9).

Dimension legend: B batch, C latent channels, T/H/W latent frames/height/width,
D hidden, S text tokens, E text dim, N video tokens, P = pt*ph*pw patch volume.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mugv_dit.kernels import modulated_layernorm


def timestep_embedding(
    t: torch.Tensor, dim: int = 256, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding, cosines first (reference §A.3).

    t: [B] (any float dtype; the model passes it already cast to its own dtype, so values
    are quantised like the official code). Returns float32 [B, dim]:
    ``[cos(t * f_k) for k < dim/2] ++ [sin(t * f_k)]`` with f_k = max_period^(-k / (dim/2)).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2. x: [..., in_dim] -> [..., out_dim]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor, *, fc2_bias: bool = True) -> torch.Tensor:
        h = F.gelu(self.fc1(x), approximate="tanh")
        if not isinstance(self.fc2, nn.Linear):  # a wrapped layer (peft LoRA): run it whole
            out = self.fc2(h)
            return out if fc2_bias else out - self.fc2.bias
        return F.linear(h, self.fc2.weight, self.fc2.bias if fc2_bias else None)


class TimestepEmbedder(nn.Module):
    """Sinusoid -> Linear -> SiLU -> Linear. Also the fps embedder (same shape).

    t: [B] -> [B, D] in the weights' dtype. Keys: ``mlp.0``, ``mlp.2``.
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class CaptionEmbedder(nn.Module):
    """Text embedder: LN(E) -> fc1 -> GELU(tanh) -> fc2 -> LN(D), both LNs without affine.

    text: [B, S, E] -> [B, S, D]. Keys: ``y_proj.fc1``, ``y_proj.fc2`` (reference §A.3).
    """

    def __init__(self, text_dim: int, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(text_dim, eps=eps, elementwise_affine=False)
        self.y_proj = Mlp(text_dim, hidden_size, hidden_size)
        self.post_norm = nn.LayerNorm(hidden_size, eps=eps, elementwise_affine=False)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.post_norm(self.y_proj(self.pre_norm(text)))


class PatchEmbed3D(nn.Module):
    """Zero-pad to a multiple of the patch (right, bottom, back), then a strided Conv3d.

    x: [B, C, T, H, W] -> [B, D, ceil(T/pt), ceil(H/ph), ceil(W/pw)]. Key: ``proj``.
    """

    def __init__(
        self, patch_size: tuple[int, int, int], in_channels: int, hidden_size: int
    ) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch_size
        _, _, T, H, W = x.shape
        pad = (0, (-W) % pw, 0, (-H) % ph, 0, (-T) % pt)
        if any(pad):
            x = F.pad(x, pad)
        return self.proj(x)


class FinalLayer(nn.Module):
    """LN (no affine) + per-token t/t0 modulation from the pre-``t_block`` vectors, then Linear.

    x: [B, N, D]; t_vec: [B, 2, D] (0: timestep t, 1: timestep 0); use_t: [B, N] bool.
    Returns [B, N, P * C_out]. Keys: ``scale_shift_table`` [2, D], ``linear``.
    """

    def __init__(
        self, hidden_size: int, patch_volume: int, out_channels: int, eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.eps = eps
        self.scale_shift_table = nn.Parameter(torch.empty(2, hidden_size))
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)

    def forward(
        self,
        x: torch.Tensor,
        t_vec: torch.Tensor,
        use_t: torch.Tensor,
        *,
        kernel_backend: str = "torch",
    ) -> torch.Tensor:
        mod = self.scale_shift_table[None, None] + t_vec[:, :, None]  # [B, 2 (t/t0), 2, D]
        shift, scale = mod[:, :, 0], mod[:, :, 1]
        h = modulated_layernorm(x, shift, scale, use_t, eps=self.eps, backend=kernel_backend)
        return self.linear(h)
