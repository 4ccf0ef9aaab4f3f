"""LoRA on the tensor-parallel block linears (official: r 64, alpha 32, Gaussian A, zero B).

y = W x + b + (alpha / r) B A x. On a column-parallel linear (qkv, q, kv, fc1) A [r, in] is
replicated and B [out / TP, r] is sharded like W's rows; on a row-parallel linear (proj,
fc2) A [r, in / TP] is sharded like W's columns and the rank-r partial product is summed
over the TP group before B [out, r]. Merging is therefore shard-local: W_shard += s B A.
Only the adapters train; the base model is frozen.
"""

from __future__ import annotations

import math
import types

import torch
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    copy_to_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
)
from torch import nn

from mugv_train.config import LoRAConfig


def _lora_forward(self, x, *args, **kwargs):
    out, bias = self._lora_base_forward(x, *args, **kwargs)
    if self._lora_row:
        delta = reduce_from_tensor_model_parallel_region(x @ self.lora_A.t().to(x.dtype))
    else:
        delta = copy_to_tensor_model_parallel_region(x) @ self.lora_A.t().to(x.dtype)
    return out + self._lora_scale * (delta @ self.lora_B.t().to(x.dtype)), bias


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
        module.lora_A = nn.Parameter(
            torch.randn(config.rank, in_f, generator=g) / math.sqrt(config.rank)
        )
        module.lora_B = nn.Parameter(torch.zeros(out_f, config.rank))
        # gradient bookkeeping for mugv_train.parallel.finalize_grads / clip_grad_norm
        sharded, replicated = (
            (module.lora_A, module.lora_B) if row else (module.lora_B, module.lora_A)
        )
        sharded.tensor_model_parallel = True
        replicated.mugv_tp_grad = "complete" if row else "partial"
        module._lora_row = row
        module._lora_scale = config.alpha / config.rank
        module._lora_base_forward = module.forward
        module.forward = types.MethodType(_lora_forward, module)
        adapted.append(name)
    if not adapted:
        raise ValueError(f"no module matched the LoRA targets {config.targets}")
    return adapted


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (TP 1) Megatron state dict with every adapter merged into its base weight."""
    from mugv_train.parallel import full_state_dict

    deltas = []
    for module in model.modules():
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
