"""`MUGDiTBlock`: AdaLN-single modulated self-attention, cross-attention and MLP (§A.5).

Dimension legend: B batch, L tokens, S text tokens, D hidden.

Per token, with m = t or t0 chosen by ``use_t`` (reference §A.4)::

    x = x + gate_msa[m] * SelfAttn(LN(x) * (1 + scale_msa[m]) + shift_msa[m])
    x = x + CrossAttn(LN_affine(x), text)                     # no gate, no modulation
    x = x + gate_mlp[m] * MLP(LN(x) * (1 + scale_mlp[m]) + shift_mlp[m])

with [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] =
``scale_shift_table`` [6, D] + t_block(t_vec[m]) reshaped to [6, D].

CPU fast path (float32 with the "torch" kernel backend): the per-token choice between t and
t0 is one [B, L, 2] x [B, 2, 6D] batched matmul with a one-hot left factor (1 * a + 0 * b is
exactly a), so all six modulation vectors are selected in one op and their gradient is one
matmul instead of six ``where`` backwards; LayerNorm is ``F.layer_norm`` and the modulation
and gated residuals are single ``addcmul`` ops with the projection biases inside the matmuls.
Same maths as the reference ops in ``kernels/reference.py``; equal up to float32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mugv_dit.config import DiTConfig
from mugv_dit.kernels import gated_residual, modulated_layernorm
from mugv_dit.layers.attention import CrossAttention, SelfAttention
from mugv_dit.layers.embedders import Mlp


class MUGDiTBlock(nn.Module):
    """One transformer block.

    forward(x [B, L, D], t_mlp [B, 2, 6D] (0: timestep t, 1: timestep 0), use_t [B, L] bool,
    cos/sin [B or 1, L, K/2], text [B, S, D], text_mask [B, S] bool or None) -> [B, L, D].
    Keys match the official ``blocks.{i}.*`` (reference §A.2).
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        D = config.hidden_size
        self.eps = config.norm_eps
        self.attn = SelfAttention(D, config.num_heads, config.qk_norm_eps)
        self.cross_attn_norm = nn.LayerNorm(D, eps=config.norm_eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(D, config.num_heads, config.qk_norm_eps)
        self.mlp = Mlp(D, config.mlp_hidden_size, D)
        self.scale_shift_table = nn.Parameter(torch.empty(6, D))

    def forward(
        self,
        x: torch.Tensor,
        t_mlp: torch.Tensor,
        use_t: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        *,
        attention_backend: str = "sdpa",
        kernel_backend: str = "torch",
    ) -> torch.Tensor:
        B, _, D = x.shape
        if kernel_backend == "torch" and x.dtype == t_mlp.dtype == torch.float32:
            return self._forward_fp32(
                x, t_mlp, use_t, cos, sin, text, text_mask, attention_backend=attention_backend
            )
        # [B, 2 (t/t0), 6, D]: the per-block table plus the shared t_block output (AdaLN-single)
        mod = self.scale_shift_table[None, None] + t_mlp.view(B, 2, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(2)

        # 1-2. modulated self-attention with a gated residual (proj bias fused into the add)
        h = modulated_layernorm(
            x, shift_msa, scale_msa, use_t, eps=self.eps, backend=kernel_backend
        )
        a = self.attn(
            h, cos, sin,
            attention_backend=attention_backend, kernel_backend=kernel_backend, proj_bias=False,
        )  # fmt: skip
        x = gated_residual(x, a, gate_msa, use_t, self.attn.proj.bias, backend=kernel_backend)

        # 3. cross-attention to the text: plain residual
        x = x + self.cross_attn(
            self.cross_attn_norm(x), text, text_mask, attention_backend=attention_backend
        )

        # 4-5. modulated MLP with a gated residual (fc2 bias fused into the add)
        h = modulated_layernorm(
            x, shift_mlp, scale_mlp, use_t, eps=self.eps, backend=kernel_backend
        )
        m = self.mlp(h, fc2_bias=False)
        return gated_residual(x, m, gate_mlp, use_t, self.mlp.fc2.bias, backend=kernel_backend)

    def _forward_fp32(
        self,
        x: torch.Tensor,
        t_mlp: torch.Tensor,
        use_t: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        *,
        attention_backend: str,
    ) -> torch.Tensor:
        """`forward` for float32 on the torch backend (see the module docstring)."""
        B, _, D = x.shape
        mod = self.scale_shift_table[None, None] + t_mlp.view(B, 2, 6, D)
        # 1 + scale on the [B, 2, D] vectors, before the (exact) per-token selection
        mod = mod + mod.new_tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0])[:, None]
        onehot = torch.stack((use_t, ~use_t), dim=-1).to(mod.dtype)  # [B, L, 2]
        per_token = torch.bmm(onehot, mod.view(B, 2, 6 * D))  # [B, L, 6D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = per_token.split(D, -1)

        # 1-2. modulated self-attention with a gated residual
        h = torch.addcmul(shift_msa, F.layer_norm(x, (D,), eps=self.eps), scale_msa)
        a = self.attn(h, cos, sin, attention_backend=attention_backend, kernel_backend="torch")
        x = torch.addcmul(x, gate_msa, a)

        # 3. cross-attention to the text: plain residual
        x = x + self.cross_attn(
            self.cross_attn_norm(x), text, text_mask, attention_backend=attention_backend
        )

        # 4-5. modulated MLP with a gated residual
        h = torch.addcmul(shift_mlp, F.layer_norm(x, (D,), eps=self.eps), scale_mlp)
        return torch.addcmul(x, gate_mlp, self.mlp(h))
