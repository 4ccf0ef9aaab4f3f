"""Layer specs: which classes fill the parts of a :class:`MUGDiTLayer` (reference §G.2).

``local``: Megatron-Core's Column/RowParallelLinear, torch norms and an SDPA core attention;
runs on CPU (gloo) and GPU. ``transformer_engine``: Transformer Engine linears and norms
(fused GEMMs, FP8 capable) and TE's fused attention (``TEDotProductAttention`` through
:class:`TECoreAttention`: TE's context-parallel K/V exchange in self-attention, padding masks,
no CP on the replicated caption in cross-attention); needs transformer-engine, imported only
when this spec is built.
The backend is a config field resolved once (``ParallelConfig.transformer_impl``).
"""

from __future__ import annotations

from typing import Literal

from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec

from mugv_train.parallel._layers import (
    AffineLayerNorm,
    CrossAttentionSubmodules,
    HeadRMSNorm,
    ModulateLayerNorm,
    MUGCrossAttention,
    MUGDiTLayer,
    MUGDiTLayerSubmodules,
    MUGSelfAttention,
    SDPACoreAttention,
    SelfAttentionSubmodules,
    TECoreAttention,
    bias_dropout_add,
    gated_bias_dropout_add,
)

TransformerImpl = Literal["local", "transformer_engine"]


def _linears(impl: TransformerImpl) -> tuple[type, type, type]:
    if impl == "local":
        return ColumnParallelLinear, RowParallelLinear, HeadRMSNorm
    if impl == "transformer_engine":
        try:
            import transformer_engine  # noqa: F401
            from megatron.core.extensions.transformer_engine import (
                TEColumnParallelLinear,
                TENorm,
                TERowParallelLinear,
            )
        except ImportError as exc:
            raise ImportError(
                "transformer_impl='transformer_engine' needs Transformer Engine: "
                "`pip install mugv-train[te]` on a CUDA machine, or use transformer_impl='local'"
            ) from exc
        return TEColumnParallelLinear, TERowParallelLinear, TENorm
    raise ValueError(f"transformer_impl must be 'local' or 'transformer_engine', got {impl!r}")


def _core_attention(impl: TransformerImpl, attention_type: str, cp_comm_type: str):
    if impl == "local":
        return SDPACoreAttention
    params = {"attention_type": attention_type}
    if attention_type == "self":
        params["cp_comm_type"] = cp_comm_type
    return ModuleSpec(module=TECoreAttention, params=params)


def mugdit_layer_spec(impl: TransformerImpl = "local", cp_comm_type: str = "p2p") -> ModuleSpec:
    """The ModuleSpec of one MUG-DiT block for the ``local`` or ``transformer_engine`` backend
    (``cp_comm_type``: TE's context-parallel communication in self-attention)."""
    column, row, qk_norm = _linears(impl)
    return ModuleSpec(
        module=MUGDiTLayer,
        submodules=MUGDiTLayerSubmodules(
            input_layernorm=ModulateLayerNorm,
            self_attention=ModuleSpec(
                module=MUGSelfAttention,
                submodules=SelfAttentionSubmodules(
                    linear_qkv=column,
                    core_attention=_core_attention(impl, "self", cp_comm_type),
                    linear_proj=row,
                    q_layernorm=qk_norm,
                    k_layernorm=qk_norm,
                ),
            ),
            self_attn_bda=gated_bias_dropout_add,
            pre_cross_attn_layernorm=AffineLayerNorm,
            cross_attention=ModuleSpec(
                module=MUGCrossAttention,
                submodules=CrossAttentionSubmodules(
                    linear_q=column,
                    linear_kv=column,
                    core_attention=_core_attention(impl, "cross", cp_comm_type),
                    linear_proj=row,
                    q_layernorm=qk_norm,
                    k_layernorm=qk_norm,
                ),
            ),
            cross_attn_bda=bias_dropout_add,
            pre_mlp_layernorm=ModulateLayerNorm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=column, linear_fc2=row)),
            mlp_bda=gated_bias_dropout_add,
        ),
    )
