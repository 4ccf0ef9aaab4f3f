"""Sequence-dimension collectives with autograd, for sequence and context parallelism.

They run on every backend: on NCCL the fused ``all_gather_into_tensor`` /
``reduce_scatter_tensor`` kernels, on gloo (CPU) ``all_gather`` and ``all_reduce`` + slice,
which compute the same values. Activations are sequence-first ([L, ...]); ``dim`` 0.

- :func:`split_seq` keeps this rank's chunk; backward all-gathers the gradient
  (Megatron's ``scatter_to_sequence_parallel_region``).
- :func:`gather_seq` concatenates the chunks; backward either keeps this rank's chunk of
  the gradient (``grad="split"``: the consumer ran identically on every rank) or
  reduce-scatters it (``grad="sum"``: every rank's consumer contributed a part, as for
  K/V gathered for context-parallel attention).
- :func:`copy_reduce_grad` is the identity; backward all-reduces (a tensor used by every
  rank on its own part of the sequence, e.g. the caption under context parallel).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup


def _size(group: ProcessGroup | None) -> int:
    return 1 if group is None else dist.get_world_size(group)


def all_gather_dim0(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    size = dist.get_world_size(group)
    x = x.contiguous()
    if dist.get_backend(group) == "nccl":
        out = x.new_empty((size * x.shape[0], *x.shape[1:]))
        dist.all_gather_into_tensor(out, x, group=group)
        return out
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=0)


def reduce_scatter_dim0(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    x = x.contiguous()
    if dist.get_backend(group) == "nccl":
        out = x.new_empty((x.shape[0] // size, *x.shape[1:]))
        dist.reduce_scatter_tensor(out, x, group=group)
        return out
    y = x.clone()
    dist.all_reduce(y, group=group)
    return y.chunk(size, dim=0)[rank].contiguous()


def _own_chunk(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if x.shape[0] % size:
        raise ValueError(f"sequence of {x.shape[0]} cannot be split over {size} ranks")
    return x.chunk(size, dim=0)[rank].contiguous()


class _Split(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _own_chunk(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return all_gather_dim0(grad, ctx.group), None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup, grad: str) -> torch.Tensor:
        ctx.group, ctx.grad = group, grad
        return all_gather_dim0(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.grad == "sum":
            return reduce_scatter_dim0(grad, ctx.group), None, None
        return _own_chunk(grad, ctx.group), None, None


class _CopyReduceGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def split_seq(x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """This rank's chunk of ``x`` along dim 0 (backward: all-gather)."""
    return x if _size(group) == 1 else _Split.apply(x, group)


def gather_seq(
    x: torch.Tensor, group: ProcessGroup | None, grad: Literal["split", "sum"] = "split"
) -> torch.Tensor:
    """All chunks of ``x`` concatenated along dim 0 (backward: see the module docstring)."""
    if grad not in ("split", "sum"):
        raise ValueError(f"grad must be 'split' or 'sum', got {grad!r}")
    return x if _size(group) == 1 else _Gather.apply(x, group, grad)


def copy_reduce_grad(x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """Identity whose backward all-reduces the gradient over ``group``."""
    return x if _size(group) == 1 else _CopyReduceGrad.apply(x, group)
