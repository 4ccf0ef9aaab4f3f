"""3D rotary position embedding (reference §A.8).

Dimension legend: B batch, T/H/W patch-grid frames/rows/columns, L = T*H*W + 2 tokens,
K head dim, K/2 complex pairs (= 3 axes x K/6 frequencies).

Each head's K dims are [h | w | t], K/3 real dims per axis, rotated as interleaved pairs
(2j, 2j+1). The three axes share the same K/6 frequencies theta^(-6j/K). Token positions:
start token (0, 0, frame_indices[0]); video token of frame f, row r, column c
(r, c, frame_indices[f + 1]); end token (H - 1, W - 1, frame_indices[T + 1]).
"""

from __future__ import annotations

import torch
from torch import nn

from mugv_dit.kernels.reference import apply_rope_ref


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """The K/6 frequencies shared by the three axes, in float32 as the official code."""
    axis_dim = head_dim // 3
    return 1.0 / (theta ** (torch.arange(0, axis_dim, 2)[: axis_dim // 2].float() / axis_dim))


def rope_3d_positions(
    grid: tuple[int, int, int], frame_indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, w, t) integer positions of every token, start and end tokens included.

    grid: (T, H, W) patch grid; frame_indices: [Bf, T + 2] long. Returns three [Bf, L].
    """
    T, H, W = grid
    Bf = frame_indices.shape[0]
    device = frame_indices.device
    rows = torch.arange(H, device=device).repeat_interleave(W).repeat(T)
    cols = torch.arange(W, device=device).repeat(T * H)
    h = torch.cat([rows.new_zeros(1), rows, rows.new_full((1,), H - 1)]).expand(Bf, -1)
    w = torch.cat([cols.new_zeros(1), cols, cols.new_full((1,), W - 1)]).expand(Bf, -1)
    frames = frame_indices[:, 1 : T + 1].repeat_interleave(H * W, dim=1)
    t = torch.cat([frame_indices[:, :1], frames, frame_indices[:, T + 1 :]], dim=1)
    return h, w, t


def rope_3d_freqs(
    grid: tuple[int, int, int],
    frame_indices: torch.Tensor,
    head_dim: int,
    theta: float = 10000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every token's rotation angles.

    grid: (T, H, W); frame_indices: [Bf, T + 2] long. Returns cos, sin: [Bf, L, K/2] float32.
    """
    freqs = rope_frequencies(head_dim, theta).to(frame_indices.device)
    h, w, t = rope_3d_positions(grid, frame_indices)
    angles = torch.cat([p.float()[..., None] * freqs for p in (h, w, t)], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope_3d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x: [B, L, N, K] by cos/sin [B or 1, L, K/2]; x.dtype."""
    return apply_rope_ref(x, cos, sin).to(x.dtype)


def _as_pairs(x: torch.Tensor) -> torch.Tensor:
    """[..., K] float (last dim contiguous) -> [..., K/2] complex view of the pairs."""
    return torch.view_as_complex(x.unflatten(-1, (-1, 2)))


class _QKNormRope(torch.autograd.Function):
    """RMSNorm (weight [K]) then the pair rotation, with a hand-written backward.

    Each pair (even, odd) is one complex number; the rotation is one complex product with
    rot = cos + i sin: (e + i o)(c + i s) = (e c - o s) + i (e s + o c), the reference's
    products and sums.
    Forward: r = (mean(x^2) + eps)^-1/2, xn = x r, u = xn w, y = u rot.
    Backward: du = g conj(rot) (the inverse rotation); dw = sum(du xn); dxn = du w;
    dx = r (dxn - xn mean(dxn xn)).
    """

    @staticmethod
    def forward(ctx, x, weight, cos, sin, eps):  # type: ignore[override]
        r = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))
        xn = x * r
        u = xn * weight  # a fresh contiguous tensor: its pairs view as complex numbers
        rot = torch.complex(cos, sin)[:, :, None]  # [B or 1, L, 1, K/2]
        ctx.save_for_backward(xn, r, weight, rot)
        return torch.view_as_real(_as_pairs(u) * rot).flatten(-2)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        xn, r, weight, rot = ctx.saved_tensors
        du = torch.view_as_real(_as_pairs(g.contiguous()) * rot.conj()).flatten(-2)
        dw = (du * xn).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        dxn = du * weight
        dot = (dxn * xn).mean(-1, keepdim=True)
        dx = torch.addcmul(dxn, xn, dot, value=-1).mul_(r) if ctx.needs_input_grad[0] else None
        return dx, dw, None, None, None


def qk_norm_rope_fp32(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float
) -> torch.Tensor:
    """RMSNorm over the head dim then 3D RoPE, for float32 on the CPU: the maths of
    ``kernels.reference.qk_norm_rope_ref`` in six tensor ops forward and about eight
    backward (the reference's autograd graph has three times as many).

    The pair rotation is one complex product per pair (see ``_QKNormRope``), equal to the
    reference up to float32 rounding. x: [B, L, N, K] float32 (any strides); weight: [K];
    cos, sin: [B or 1, L, K/2]. Returns [B, L, N, K].
    """
    return _QKNormRope.apply(x, weight, cos, sin, eps)


class RotaryEmbedding3D(nn.Module):
    """Computes the per-token cos/sin tables and checks positions against the table sizes.

    The official code precomputes tables of ``space_positions`` and ``time_positions`` rows
    and clamps frame indices to the last row; positions beyond a table are rejected here
    instead, since they would silently repeat the last angle.
    """

    def __init__(
        self,
        head_dim: int,
        theta: float = 10000.0,
        space_positions: int = 384,
        time_positions: int = 480,
    ) -> None:
        super().__init__()
        if head_dim % 6:
            raise ValueError(f"3D RoPE needs a head dim divisible by 6, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta
        self.space_positions = space_positions
        self.time_positions = time_positions

    def check(self, grid: tuple[int, int, int], frame_indices: torch.Tensor) -> None:
        """Validate a patch grid and frame indices (call outside compiled regions)."""
        T, H, W = grid
        if max(H, W) > self.space_positions:
            raise ValueError(
                f"patch grid {H}x{W} exceeds the spatial RoPE table of {self.space_positions} "
                "positions; use a smaller resolution or a config with larger rope_space_positions"
            )
        if frame_indices.ndim != 2 or frame_indices.shape[1] != T + 2:
            raise ValueError(
                f"frame_indices must be [B, T + 2] = [B, {T + 2}] (start token, {T} frames, "
                f"end token), got {tuple(frame_indices.shape)}"
            )
        if frame_indices.numel() and (
            int(frame_indices.min()) < 0 or int(frame_indices.max()) >= self.time_positions
        ):
            raise ValueError(
                f"frame_indices range [{int(frame_indices.min())}, {int(frame_indices.max())}] "
                f"is outside the temporal RoPE table [0, {self.time_positions}); the model "
                f"handles at most {self.time_positions - 2} latent frames"
            )

    def forward(
        self, grid: tuple[int, int, int], frame_indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """grid: (T, H, W); frame_indices: [Bf, T + 2]. Returns cos, sin [Bf, L, K/2]."""
        return rope_3d_freqs(grid, frame_indices, self.head_dim, self.theta)
