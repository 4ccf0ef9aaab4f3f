"""Self- and cross-attention of a MUG-DiT block (reference §A.6, §A.7).

Dimension legend: B batch, L tokens, S text tokens, D hidden, N heads, K head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mugv_dit._attention import attention, cross_attention
from mugv_dit.kernels import qk_norm_rope
from mugv_dit.kernels.reference import rms_norm_ref
from mugv_dit.layers.rope import qk_norm_rope_fp32


class RMSNorm(nn.Module):
    """RMSNorm over the last dim in float32, times ``weight``; returns the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_ref(x, self.weight, self.eps).to(x.dtype)


class SelfAttention(nn.Module):
    """qkv -> q/k RMSNorm + 3D RoPE -> full attention -> proj.

    x: [B, L, D]; cos, sin: [B or 1, L, K/2]. Returns [B, L, D]. qkv rows are all heads'
    q, then k, then v, head-major within each third. Keys: qkv, q_norm, k_norm, proj.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(self.head_dim, qk_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, qk_norm_eps)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        attention_backend: str = "sdpa",
        kernel_backend: str = "torch",
        proj_bias: bool = True,
    ) -> torch.Tensor:
        B, L, _ = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(2)
        if kernel_backend == "torch" and q.dtype == torch.float32:  # CPU fast path, same maths
            q = qk_norm_rope_fp32(q, self.q_norm.weight, cos, sin, self.q_norm.eps)
            k = qk_norm_rope_fp32(k, self.k_norm.weight, cos, sin, self.k_norm.eps)
        else:
            q = qk_norm_rope(
                q, self.q_norm.weight, cos, sin, eps=self.q_norm.eps, backend=kernel_backend
            )
            k = qk_norm_rope(
                k, self.k_norm.weight, cos, sin, eps=self.k_norm.eps, backend=kernel_backend
            )
        out = attention(q, k, v, backend=attention_backend).reshape(B, L, -1)
        if not isinstance(self.proj, nn.Linear):  # a wrapped layer (peft LoRA): run it whole
            out = self.proj(out)
            return out if proj_bias else out - self.proj.bias
        return F.linear(out, self.proj.weight, self.proj.bias if proj_bias else None)


class CrossAttention(nn.Module):
    """Attention of video tokens to the text: q_linear(x), kv_linear(text), q/k RMSNorm, no RoPE.

    x: [B, L, D]; text: [B, S, D]; text_mask: [B, S] bool or None. Returns [B, L, D].
    kv_linear rows are all heads' k, then v. Keys: q_linear, kv_linear, q_norm, k_norm, proj.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.q_norm = RMSNorm(self.head_dim, qk_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, qk_norm_eps)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        *,
        attention_backend: str = "sdpa",
    ) -> torch.Tensor:
        B, L, _ = x.shape
        S = text.shape[1]
        q = self.q_norm(self.q_linear(x).view(B, L, self.num_heads, self.head_dim))
        k, v = self.kv_linear(text).view(B, S, 2, self.num_heads, self.head_dim).unbind(2)
        k = self.k_norm(k)
        out = cross_attention(q, k, v, text_mask, backend=attention_backend)
        return self.proj(out.reshape(B, L, -1))
