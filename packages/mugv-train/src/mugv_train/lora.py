"""LoRA on the tensor-parallel block linears (official: r 64, alpha 32, Gaussian A, zero B).

y = W x + b + (alpha / r) B A x. On a column-parallel linear (qkv, q, kv, fc1) A [r, in] is
replicated and B [out / TP, r] is sharded like W's rows; on a row-parallel linear (proj,
fc2) A [r, in / TP] is sharded like W's columns and B [out, r] is replicated. The rank-r
product A x travels through Megatron's own mappings, exactly as the base linear's
activations do: copied into the TP region (column; under sequence parallel all-gathered
over the tokens) or summed over it (row; under sequence parallel reduce-scattered), so
the replicated factor's gradient is whole, or marked ``sequence_parallel`` for
``finalize_model_grads`` when it saw only this rank's tokens. Merging is shard-local:
W_shard += s B A. Only the adapters train; the base model is frozen.
"""

from __future__ import annotations

import math
import types

import torch
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from torch import nn

from mugv_train.config import LoRAConfig


def _lora_forward(self, x, *args, **kwargs):
    out, bias = self._lora_base_forward(x, *args, **kwargs)
    ax = x @ self.lora_A.t().to(x.dtype)  # [L(/TP), B, r]
    sp = self.sequence_parallel
    if self._lora_row:
        ax = (
            reduce_scatter_to_sequence_parallel_region
            if sp
            else reduce_from_tensor_model_parallel_region
        )(ax)
    else:
        ax = (
            gather_from_sequence_parallel_region(ax)
            if sp
            else copy_to_tensor_model_parallel_region(ax)
        )
    return out + self._lora_scale * (ax @ self.lora_B.t().to(x.dtype)), bias


def add_lora(model: nn.Module, config: LoRAConfig, seed: int = 0) -> list[str]:
    """Freeze ``model`` and add adapters to the linears named in ``config.targets``.

    Returns the names of the adapted modules.
    """
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    adapted = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in config.targets:
            continue
        if not isinstance(module, ColumnParallelLinear | RowParallelLinear):
            raise TypeError(
                f"LoRA supports Megatron local linears; {name} is {type(module).__name__}"
            )
        row = isinstance(module, RowParallelLinear)
        out_f, in_f = module.weight.shape  # local shard shape
        device, dtype = module.weight.device, module.weight.dtype
        a = torch.randn(config.rank, in_f, generator=g) / math.sqrt(config.rank)
        module.lora_A = nn.Parameter(a.to(device=device, dtype=dtype))
        module.lora_B = nn.Parameter(torch.zeros(out_f, config.rank, device=device, dtype=dtype))
        # gradient bookkeeping for Megatron's DDP, finalize_model_grads and grad-norm
        if row:  # A [r, in / TP] split like W's columns; B replicated
            set_tensor_model_parallel_attributes(module.lora_A, True, 1, 1)
            module.lora_B.sequence_parallel = module.sequence_parallel
        else:  # B [out / TP, r] split like W's rows; A replicated
            set_tensor_model_parallel_attributes(module.lora_B, True, 0, 1)
            module.lora_A.sequence_parallel = module.sequence_parallel
        module._lora_row = row
        module._lora_scale = config.alpha / config.rank
        module._lora_base_forward = module.forward
        module.forward = types.MethodType(_lora_forward, module)
        adapted.append(name)
    if not adapted:
        raise ValueError(f"no module matched the LoRA targets {config.targets}")
    return adapted


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """Full (TP 1) Megatron state dict with every adapter merged into its base weight
    (``model``: a chunk or the list of this rank's chunks; collective)."""
    from mugv_train.parallel import full_state_dict

    chunks = list(model) if isinstance(model, list | tuple) else [model]
    deltas = []
    for module in (m for chunk in chunks for m in chunk.modules()):
        if hasattr(module, "lora_A"):
            delta = module._lora_scale * (module.lora_B @ module.lora_A)
            module.weight.add_(delta.to(module.weight.dtype))
            deltas.append((module, delta))
    try:
        full = full_state_dict(model)
    finally:
        for module, delta in deltas:
            module.weight.sub_(delta.to(module.weight.dtype))
    return {k: v for k, v in full.items() if ".lora_" not in k}
