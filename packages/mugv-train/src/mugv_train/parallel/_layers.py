"""MUG-DiT block on Megatron-Core: the layer declares its parts, a spec fills them.

Dimension legend: L tokens (sequence-first, Megatron's [L, B, D] activations), B batch,
D hidden, N heads (N_p = N / TP on one tensor-parallel rank), K head dim, S text tokens.

Block (reference §A.5, §G.2), per token, with modulation chosen per token between the
current timestep and timestep 0 (§A.4):
    h = LN(x) (1 + scale_msa) + shift_msa
    x = x + gate_msa * SelfAttn(h)               self_attn_bda (gated bias-dropout-add)
    x = x + CrossAttn(LN_affine(x), text)        cross_attn_bda (plain bias-dropout-add)
    h = LN(x) (1 + scale_mlp) + shift_mlp
    x = x + gate_mlp * MLP(h)                    mlp_bda (gated)

Weight layouts are Megatron's: ``linear_qkv`` rows are per head [q_h | k_h | v_h] and
``linear_kv`` rows per head [k_h | v_h] (§G.6), so a column-parallel split along dim 0 hands
every tensor-parallel rank whole heads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn
from torch.utils.checkpoint import checkpoint


def _mark_sequence_parallel(module: nn.Module, config: TransformerConfig) -> None:
    """Flag replicated parameters that see only this rank's tokens under sequence parallel:
    Megatron's ``finalize_model_grads`` sums their gradients over the TP group."""
    for p in module.parameters(recurse=False):
        p.sequence_parallel = config.sequence_parallel


# -- norms -----------------------------------------------------------------------------------
class ModulateLayerNorm(nn.Module):
    """LN(x) (1 + scale) + shift with a parameter-free LayerNorm (eps from the config)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), (self.hidden_size,), eps=self.eps)
        return (y * (1 + scale.float()) + shift.float()).to(x.dtype)


class AffineLayerNorm(nn.Module):
    """LayerNorm with weight and bias computed in float32 (``pre_cross_attn_layernorm``)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.bias = nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        _mark_sequence_parallel(self, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), x.shape[-1:], self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)


class HeadRMSNorm(nn.Module):
    """RMSNorm over the head dim, weight only, computed in float32 (q/k norm, §A.6)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


class ScaleShiftTable(nn.Module):
    """The per-block learned AdaLN table [rows, D], stored as ``.bias`` (Megatron naming)."""

    def __init__(self, rows: int, hidden_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(rows, hidden_size, dtype=dtype) / hidden_size**0.5)

    def forward(self, mod: torch.Tensor) -> torch.Tensor:
        """mod: [..., rows * D] -> [..., rows, D] with the table added (float32)."""
        rows, d = self.bias.shape
        return mod.float().unflatten(-1, (rows, d)) + self.bias.float()


# -- rotary embedding -------------------------------------------------------------------------
def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2j, 2j+1) of the head dim (§A.8), in float32.

    x: [L, B, N, K]; cos, sin: [L, B, 1, K/2]. Returns float32 [L, B, N, K].
    """
    xf = x.float().unflatten(-1, (-1, 2))
    even, odd = xf[..., 0], xf[..., 1]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


# -- core attention -----------------------------------------------------------------------------
class SDPACoreAttention(MegatronModule):
    """Bidirectional attention through ``torch.nn.functional.scaled_dot_product_attention``.

    q: [Lq, B, N_p, K]; k, v: [Lk, B, N_p, K]; key_mask: [B, Lk] bool (True = attend) or None.
    Returns [Lq, B, N_p * K]. The softmax scale is K^-0.5 (§A.6). On CUDA SDPA dispatches to
    flash / memory-efficient kernels; on CPU it is the math path.
    """

    def __init__(self, config: TransformerConfig, **_: Any) -> None:
        super().__init__(config=config)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return sdpa_attention(q, k, v, key_mask)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """:class:`SDPACoreAttention`'s computation ([L, B, N, K] in, [Lq, B, N K] out)."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    qb, kb, vb = (t.permute(1, 2, 0, 3) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=q.shape[-1] ** -0.5)
    return out.permute(2, 0, 1, 3).flatten(2)


def te_padding_mask(key_mask: torch.Tensor) -> torch.Tensor:
    """Our key mask ([B, L] bool, True = attend) as Transformer Engine's padding mask
    ([B, 1, 1, L] bool, True = masked out), the form ``attn_mask_type='padding'`` takes."""
    if key_mask.dtype != torch.bool or key_mask.dim() != 2:
        raise ValueError(f"key_mask must be a [B, L] bool tensor, got {key_mask.dtype} "
                         f"{tuple(key_mask.shape)}")  # fmt: skip
    return ~key_mask[:, None, None, :]


def te_attention_mask(
    q_len: int, key_mask: torch.Tensor, attention_type: str
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """TE's ``attention_mask`` argument for a padding mask: one [B, 1, 1, L] tensor for
    self-attention; for cross-attention the pair (query mask, key mask), every query kept
    (the video tokens' own padding is masked as keys in self-attention, and its rows are
    dropped by the model)."""
    kv = te_padding_mask(key_mask)
    if attention_type == "self":
        return kv
    q = torch.zeros(key_mask.shape[0], 1, 1, q_len, dtype=torch.bool, device=key_mask.device)
    return q, kv


class TECoreAttention(MegatronModule):
    """Transformer Engine's fused attention (``TEDotProductAttention``: cuDNN / flash
    kernels, FP8 capable), same interface as :class:`SDPACoreAttention`.

    Self-attention runs TE's context parallelism over Megatron's CP group (``cp_comm_type``:
    ring p2p, all_gather or a2a) on this rank's chunk of q/k/v; the caller then does not
    gather K/V (:attr:`ring_exchange`). TE's CP takes no padding mask in the sbhd layout, so
    a step whose tokens were padded (``key_mask`` given) with CP > 1 takes the reference
    path instead (Megatron's K/V all-gather + SDPA, in :class:`MUGSelfAttention`).
    Cross-attention attends to the replicated caption: no CP (built from a CP 1 copy of the
    config), a padding mask on the caption keys.

    Transformer Engine is imported here, only when the TE spec is built.
    """

    def __init__(
        self,
        config: TransformerConfig,
        attention_type: str = "self",
        cp_comm_type: str = "p2p",
        **_: Any,
    ) -> None:
        super().__init__(config=config)
        from megatron.core.extensions.transformer_engine import TEDotProductAttention
        from megatron.core.transformer.enums import AttnMaskType

        if attention_type not in ("self", "cross"):
            raise ValueError(f"attention_type must be 'self' or 'cross', got {attention_type!r}")
        self.attention_type = attention_type
        te_config = config
        if attention_type == "cross" and config.context_parallel_size > 1:
            te_config = dataclasses.replace(config, context_parallel_size=1)
        self.ring_exchange = attention_type == "self" and config.context_parallel_size > 1
        head_dim = config.hidden_size // config.num_attention_heads
        self.attention = TEDotProductAttention(
            te_config,
            layer_number=1,
            attn_mask_type=AttnMaskType.padding,
            attention_type=attention_type,
            attention_dropout=0.0,
            softmax_scale=head_dim**-0.5,
            cp_comm_type=cp_comm_type if self.ring_exchange else None,
        )

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from megatron.core.transformer.enums import AttnMaskType

        q, k, v = (t.contiguous() for t in (q, k, v))
        if key_mask is None:
            return self.attention(q, k, v, None, attn_mask_type=AttnMaskType.no_mask)
        mask = te_attention_mask(q.shape[0], key_mask, self.attention_type)
        return self.attention(q, k, v, mask, attn_mask_type=AttnMaskType.padding)


# -- attention modules ----------------------------------------------------------------------------
@dataclass
class SelfAttentionSubmodules:
    linear_qkv: Any
    core_attention: Any
    linear_proj: Any
    q_layernorm: Any
    k_layernorm: Any


@dataclass
class CrossAttentionSubmodules:
    linear_q: Any
    linear_kv: Any
    core_attention: Any
    linear_proj: Any
    q_layernorm: Any
    k_layernorm: Any


def _tp_size(config: TransformerConfig) -> int:
    return config.tensor_model_parallel_size


def _tp_group() -> torch.distributed.ProcessGroup:
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def _cp_group() -> torch.distributed.ProcessGroup | None:
    from megatron.core import parallel_state

    if parallel_state.get_context_parallel_world_size() == 1:
        return None
    return parallel_state.get_context_parallel_group()


def _build_norms_attention_proj(
    module: nn.Module,
    config: TransformerConfig,
    submodules: SelfAttentionSubmodules | CrossAttentionSubmodules,
) -> None:
    """The parts self- and cross-attention share: q/k RMSNorm, core attention, row-parallel
    output projection (registered in this order, after the input projections)."""
    head_dim = config.hidden_size // config.num_attention_heads
    for name in ("q_layernorm", "k_layernorm"):
        norm = build_module(
            getattr(submodules, name),
            config=config,
            hidden_size=head_dim,
            eps=config.layernorm_epsilon,
        )
        setattr(module, name, norm)
    module.core_attention = build_module(submodules.core_attention, config=config)
    module.linear_proj = build_module(
        submodules.linear_proj,
        config.hidden_size,
        config.hidden_size,
        config=config,
        init_method=config.output_layer_init_method,
        bias=True,
        input_is_parallel=True,
        skip_bias_add=True,
        is_expert=False,
        tp_comm_buffer_name="proj",
        tp_group=_tp_group(),
    )


class MUGSelfAttention(MegatronModule):
    """qkv projection, q/k RMSNorm, 3D RoPE, bidirectional attention, output projection."""

    def __init__(self, config: TransformerConfig, submodules: SelfAttentionSubmodules) -> None:
        super().__init__(config=config)
        d, n = config.hidden_size, config.num_attention_heads
        self.head_dim = d // n
        self.heads_per_rank = n // _tp_size(config)
        self.linear_qkv = build_module(
            submodules.linear_qkv,
            d,
            3 * d,
            config=config,
            init_method=config.init_method,
            gather_output=False,
            bias=True,
            skip_bias_add=False,
            is_expert=False,
            tp_comm_buffer_name="qkv",
            tp_group=_tp_group(),
        )
        _build_norms_attention_proj(self, config, submodules)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        key_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        qkv, _ = self.linear_qkv(x)  # [L, B, 3 D / TP] laid out per head [q_h | k_h | v_h]
        qkv = qkv.unflatten(-1, (self.heads_per_rank, 3, self.head_dim))
        q, k, v = qkv.unbind(dim=3)
        cos, sin = rope
        q = apply_rope_interleaved(self.q_layernorm(q), cos, sin).to(v.dtype)
        k = apply_rope_interleaved(self.k_layernorm(k), cos, sin).to(v.dtype)
        # context parallel (reference path of the local spec; the TE spec's attention does
        # its own ring exchange): this rank's queries attend to the keys of every chunk.
        # Megatron's all-gather, whose backward reduce-scatters the K/V gradients of all
        # chunks' queries back onto the chunk that produced them.
        # TE's attention exchanges K/V itself (ring / all-gather / a2a) when no padding mask
        # is needed; otherwise (local spec, or padded tokens) the reference path.
        core = self.core_attention
        cp = _cp_group()
        te_ring = getattr(core, "ring_exchange", False)
        if cp is not None and not (te_ring and key_mask is None):
            k = gather_from_sequence_parallel_region(k, True, group=cp)
            v = gather_from_sequence_parallel_region(v, True, group=cp)
            if te_ring:  # TE's CP takes no padding mask in sbhd: attend without its ring
                core = sdpa_attention
        if self.config.recompute_granularity == "selective" and torch.is_grad_enabled():
            # selective recompute: keep q, k, v; recompute the attention in the backward
            out = checkpoint(core, q, k, v, key_mask, use_reentrant=False)
        else:
            out = core(q, k, v, key_mask)
        return self.linear_proj(out)


class MUGCrossAttention(MegatronModule):
    """Text cross-attention: q from the video tokens, k/v from the caption, q/k RMSNorm."""

    def __init__(self, config: TransformerConfig, submodules: CrossAttentionSubmodules) -> None:
        super().__init__(config=config)
        d, n = config.hidden_size, config.num_attention_heads
        self.head_dim = d // n
        self.heads_per_rank = n // _tp_size(config)
        common = dict(
            config=config,
            gather_output=False,
            bias=True,
            skip_bias_add=False,
            is_expert=False,
            tp_group=_tp_group(),
        )
        self.linear_q = build_module(
            submodules.linear_q,
            d,
            d,
            init_method=config.init_method,
            tp_comm_buffer_name="q",
            **common,
        )
        self.linear_kv = build_module(
            submodules.linear_kv,
            d,
            2 * d,
            init_method=config.init_method,
            tp_comm_buffer_name="kv",
            **common,
        )
        _build_norms_attention_proj(self, config, submodules)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, _ = self.linear_q(x)
        q = q.unflatten(-1, (self.heads_per_rank, self.head_dim))
        kv, _ = self.linear_kv(context)  # [S, B, 2 D / TP] per head [k_h | v_h]
        k, v = kv.unflatten(-1, (self.heads_per_rank, 2, self.head_dim)).unbind(dim=3)
        q = self.q_layernorm(q).to(v.dtype)
        k = self.k_layernorm(k).to(v.dtype)
        out = self.core_attention(q, k, v, context_mask)
        return self.linear_proj(out)


# -- bias-dropout-add ----------------------------------------------------------------------------------
def gated_bias_dropout_add(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    gate: torch.Tensor,
    p: float,
    training: bool,
) -> torch.Tensor:
    """residual + gate * dropout(x + bias), in float32, returned in the residual's dtype."""
    y = x.float() if bias is None else x.float() + bias.float()
    y = F.dropout(y, p=p, training=training)
    return (residual.float() + gate * y).to(residual.dtype)


def bias_dropout_add(
    x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, p: float, training: bool
) -> torch.Tensor:
    """residual + dropout(x + bias) (the ungated cross-attention residual)."""
    y = x.float() if bias is None else x.float() + bias.float()
    return (residual.float() + F.dropout(y, p=p, training=training)).to(residual.dtype)


# -- the layer ----------------------------------------------------------------------------------------
@dataclass
class MUGDiTLayerSubmodules:
    """The parts of a MUG-DiT block; a spec function fills each with a class or a ModuleSpec."""

    input_layernorm: Any
    self_attention: Any
    self_attn_bda: Any
    pre_cross_attn_layernorm: Any
    cross_attention: Any
    cross_attn_bda: Any
    pre_mlp_layernorm: Any
    mlp: Any
    mlp_bda: Any


class MUGDiTLayer(MegatronModule):
    """One MUG-DiT block (reference §A.5) built from a :class:`MUGDiTLayerSubmodules` spec.

    Under sequence parallel (``TransformerConfig.sequence_parallel``) ``x`` and ``mod``
    hold this TP rank's sub-chunk of the tokens: the norms, modulation and residuals run on
    it; Megatron's column-parallel linears all-gather it and its row-parallel linears
    reduce-scatter their output back (Megatron's SP data flow, done by Megatron's layers).
    The replicated parameters carry ``sequence_parallel`` so that ``finalize_model_grads``
    sums their per-token-chunk gradients over TP.
    """

    def __init__(
        self, config: TransformerConfig, submodules: MUGDiTLayerSubmodules, layer_number: int = 1
    ) -> None:
        super().__init__(config=config)
        self.layer_number = layer_number
        d, eps = config.hidden_size, config.layernorm_epsilon
        # Built first so parameter order follows use order (§G.2).
        self.scale_shift_table = ScaleShiftTable(6, d, config.params_dtype)
        _mark_sequence_parallel(self.scale_shift_table, config)
        self.input_layernorm = build_module(
            submodules.input_layernorm, config=config, hidden_size=d, eps=eps
        )
        self.self_attention = build_module(submodules.self_attention, config=config)
        self.self_attn_bda = submodules.self_attn_bda
        self.pre_cross_attn_layernorm = build_module(
            submodules.pre_cross_attn_layernorm, config=config, hidden_size=d, eps=eps
        )
        self.cross_attention = build_module(submodules.cross_attention, config=config)
        self.cross_attn_bda = submodules.cross_attn_bda
        self.pre_mlp_layernorm = build_module(
            submodules.pre_mlp_layernorm, config=config, hidden_size=d, eps=eps
        )
        self.mlp = build_module(
            submodules.mlp,
            config=config,
            ffn_hidden_size=config.ffn_hidden_size,
            tp_group=_tp_group(),
        )
        self.mlp_bda = submodules.mlp_bda

    def forward(
        self,
        x: torch.Tensor,
        mod: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [L, B, D]; mod: [L, B, 6 D] (t or t0 modulation per token); context: [S, B, D]."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.scale_shift_table(
            mod
        ).unbind(-2)
        p, training = self.config.hidden_dropout, self.training
        # 1. modulated self-attention with a gated residual
        h = self.input_layernorm(x, shift_msa, scale_msa)
        out, bias = self.self_attention(h, rope, key_mask)
        x = self.self_attn_bda(out, bias, x, gate_msa, p, training)
        # 2. text cross-attention: affine LN, no modulation, ungated residual (§A.5 step 3)
        h = self.pre_cross_attn_layernorm(x)
        out, bias = self.cross_attention(h, context, context_mask)
        x = self.cross_attn_bda(out, bias, x, p, training)
        # 3. modulated MLP with a gated residual
        h = self.pre_mlp_layernorm(x, shift_mlp, scale_mlp)
        out, bias = self.mlp(h)
        return self.mlp_bda(out, bias, x, gate_mlp, p, training)


class MUGDiTBlockStack(MegatronModule):
    """The decoder: ``layers`` [first, last) of the model on this pipeline stage, with
    optional full or selective activation recompute."""

    def __init__(
        self, config: TransformerConfig, spec: ModuleSpec, layer_offset: int, num_layers: int
    ) -> None:
        super().__init__(config=config)
        self.layers = nn.ModuleList(
            [
                build_module(spec, config=config, layer_number=layer_offset + i + 1)
                for i in range(num_layers)
            ]
        )

    def sharded_state_dict(
        self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None
    ) -> dict:
        """Megatron ``dist_checkpointing`` view: the layers are stacked (§G.6): the entry of
        local layer i is the slice at global layer ``layer_offset + i`` of the tensor
        ``{prefix}layers.<name>`` of leading size ``num_layers``, whatever the PP layout."""
        from megatron.core.dist_checkpointing.utils import replace_prefix_for_sharding

        out: dict = {}
        layer_prefix = f"{prefix}layers."
        for i, layer in enumerate(self.layers):
            local = f"{layer_prefix}{i}."
            offsets = (*sharded_offsets, (len(sharded_offsets), layer.layer_number - 1,
                                          self.config.num_layers))  # fmt: skip
            sd = layer.sharded_state_dict(prefix=local, sharded_offsets=offsets, metadata=metadata)
            replace_prefix_for_sharding(sd, local, layer_prefix)
            out.update(sd)
        return out

    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        recompute = self.config.recompute_granularity == "full" and self.training
        for layer in self.layers:
            run = partial(_run_layer, layer)
            if recompute and torch.is_grad_enabled():
                x = checkpoint(run, x, *args, use_reentrant=False)
            else:
                x = run(x, *args)
        return x


def _run_layer(layer: MUGDiTLayer, x: torch.Tensor, *args: Any) -> torch.Tensor:
    """One layer inside Megatron's FP8 context (``fp8_utils.get_fp8_context``: TE's
    ``fp8_autocast`` with the config's recipe and the amax-reduction group when
    ``TransformerConfig.fp8`` is set, a no-op otherwise), as Megatron's TransformerBlock
    enters it per layer (``layer_number`` is 1-based, the context takes the 0-based global
    index so that ``first_last_layers_bf16`` applies). Under full recompute the context is
    re-entered by the recomputed forward, so it runs the same FP8 GEMMs."""
    from megatron.core.fp8_utils import get_fp8_context

    with get_fp8_context(layer.config, layer.layer_number - 1):
        return layer(x, *args)
