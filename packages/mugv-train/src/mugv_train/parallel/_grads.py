"""Gradient reduction across the parallel groups, and the global gradient norm.

After ``backward`` every rank holds gradients of its own parameters, some of them partial:

- TP: a replicated parameter that sees only this rank's heads (the q/k RMSNorm weights,
  LoRA A of a column-parallel linear) or, under sequence parallel, only this rank's tokens
  (every replicated decoder parameter: the AdaLN tables, the cross-attention LayerNorm,
  the row-parallel biases) -> summed over TP.
- CP: every decoder parameter sees only this rank's chunk of the tokens -> summed over CP.
  (Outside the decoder the sequence split/gather already returns complete gradients.)
- PP: the conditioning embedders live on every stage and each stage's blocks use them
  -> summed over PP.
- DP: averaged over the data-parallel ranks.

Parameters can override the TP rule with ``param.mugv_tp_grad = "partial" | "complete"``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from torch import nn

SHARED_EMBEDDERS = ("timestep_embedder.", "fps_embedder.", "timestep_block.", "context_embedder.")
"""Modules built on every pipeline stage (reference §G.2)."""


def _tp_partial(name: str, p: nn.Parameter, sequence_parallel: bool) -> bool:
    if getattr(p, "tensor_model_parallel", False):
        return False
    rule = getattr(p, "mugv_tp_grad", None)
    if rule is not None:
        return rule == "partial"
    if name.endswith(("q_layernorm.weight", "k_layernorm.weight")):
        return True
    return sequence_parallel and name.startswith("decoder.")


def _grad(p: nn.Parameter) -> torch.Tensor:
    if p.grad is None:  # unused on this rank: contribute zeros to keep collectives aligned
        p.grad = torch.zeros_like(p)
    return p.grad


def _all_reduce_(grads: list[torch.Tensor], group, scale: float = 1.0) -> None:
    """Sum ``grads`` over ``group`` through one flat buffer, times ``scale``."""
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, group=group)
    if scale != 1.0:
        flat *= scale
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def finalize_grads(
    model: nn.Module, *, sequence_parallel: bool, data_parallel: bool = True
) -> None:
    """Make every rank's gradients the gradients of the whole model on the global batch
    (mean over DP). ``data_parallel=False`` skips the DP average (done by Megatron's DDP)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    tp = ps.get_tensor_model_parallel_world_size()
    if tp > 1:
        grads = [_grad(p) for n, p in named if _tp_partial(n, p, sequence_parallel)]
        _all_reduce_(grads, ps.get_tensor_model_parallel_group())
    if ps.get_context_parallel_world_size() > 1:
        grads = [_grad(p) for n, p in named if n.startswith("decoder.")]
        _all_reduce_(grads, ps.get_context_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        grads = [_grad(p) for n, p in named if n.startswith(SHARED_EMBEDDERS)]
        _all_reduce_(grads, ps.get_pipeline_model_parallel_group())
    dp = ps.get_data_parallel_world_size()
    if data_parallel and dp > 1:
        _all_reduce_([_grad(p) for _, p in named], ps.get_data_parallel_group(), 1.0 / dp)


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip by the global L2 norm over all ranks' (finalized) gradients; returns the norm.

    Each distinct value is counted once: TP shards add up, replicated parameters count
    1/TP per TP rank, the shared embedders 1/PP per stage; CP and DP copies are identical.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    tp = ps.get_tensor_model_parallel_world_size()
    pp = ps.get_pipeline_model_parallel_world_size()
    sq = torch.zeros((), dtype=torch.float64, device=params[0][1].device if params else "cpu")
    for name, p in params:
        weight = 1.0 if getattr(p, "tensor_model_parallel", False) else 1.0 / tp
        if name.startswith(SHARED_EMBEDDERS):
            weight /= pp
        sq += p.grad.detach().double().pow(2).sum() * weight
    if tp > 1:
        dist.all_reduce(sq, group=ps.get_tensor_model_parallel_group())
    if pp > 1:
        dist.all_reduce(sq, group=ps.get_pipeline_model_parallel_group())
    norm = math.sqrt(sq.item())
    if max_norm > 0 and norm > max_norm:
        for _, p in params:
            p.grad.mul_(max_norm / (norm + 1e-6))
    return norm
