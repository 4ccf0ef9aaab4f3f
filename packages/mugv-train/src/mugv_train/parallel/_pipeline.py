"""Pipeline schedule: all-forward-all-backward (GPipe) over point-to-point send/recv.

Runs on NCCL and on gloo (CPU). Every stage gets the same micro-batch inputs (the
conditioning is recomputed per stage, reference §G.2); the hidden state [L_local, B, D]
travels forward in float32 and its gradient travels back. Shapes are known on every
stage from the inputs (:meth:`MegatronMUGDiT.hidden_shape`), so nothing else is sent.
With PP = 1 this is a plain forward/backward per micro-batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps


def run_pipeline(
    model: torch.nn.Module,
    microbatches: Sequence[dict[str, Any]],
    loss_fn: Callable[[torch.Tensor, int], tuple[torch.Tensor, Any]],
    *,
    forward_only: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> list[tuple[torch.Tensor, Any]]:
    """Forward (and unless ``forward_only``, backward) ``microbatches`` through the stages.

    ``loss_fn(output, index) -> (loss, extra)`` runs on the last stage; the gradient of
    the mean loss over micro-batches is accumulated into ``.grad``. Returns the
    ``(loss.detach(), extra)`` pairs on the last stage and ``[]`` on the others.
    ``autocast`` is entered around each model forward only.
    """
    num = len(microbatches)
    core = model  # the MegatronMUGDiT inside wrappers such as Megatron's DDP
    while not hasattr(core, "pre_process") and isinstance(
        getattr(core, "module", None), torch.nn.Module
    ):
        core = core.module
    first = getattr(core, "pre_process", True)
    last = getattr(core, "post_process", True)
    pp = ps.get_pipeline_model_parallel_world_size()
    prev_rank = ps.get_pipeline_model_parallel_prev_rank() if pp > 1 else None
    next_rank = ps.get_pipeline_model_parallel_next_rank() if pp > 1 else None
    results: list[tuple[torch.Tensor, Any]] = []
    saved: list[tuple[torch.Tensor | None, torch.Tensor]] = []
    grad_ctx = torch.no_grad() if forward_only else contextlib.nullcontext()
    with grad_ctx:
        for i, inputs in enumerate(microbatches):
            received = None
            if not first:
                device = inputs["x"].device
                received = torch.empty(core.hidden_shape(inputs["x"]), device=device)
                dist.recv(received, src=prev_rank)
                received.requires_grad_(not forward_only)
                core.set_input_tensor(received)
            with autocast():
                out = model(**inputs)
            if last:
                loss, extra = loss_fn(out, i)
                results.append((loss.detach(), extra))
                saved.append((received, loss / num))
            else:
                dist.send(out.detach().float().contiguous(), dst=next_rank)
                saved.append((received, out))
    if hasattr(core, "set_input_tensor"):
        core.set_input_tensor(None)
    if forward_only:
        return results
    for received, out in reversed(saved):
        if last:
            out.backward()
        else:
            grad = torch.empty(out.shape, device=out.device)
            dist.recv(grad, src=next_rank)
            out.backward(grad.to(out.dtype))
        if not first:
            dist.send(received.grad.contiguous(), dst=prev_rank)
    return results


def broadcast_from_last_stage(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` from the last pipeline stage on every stage (``like`` gives shape/dtype)."""
    if ps.get_pipeline_model_parallel_world_size() == 1:
        return tensor
    buf = tensor.contiguous() if ps.is_pipeline_last_stage() else torch.empty_like(like)
    dist.broadcast(
        buf,
        src=ps.get_pipeline_model_parallel_last_rank(),
        group=ps.get_pipeline_model_parallel_group(),
    )
    return buf
