"""Multi-process inference: CFG parallelism and Ulysses sequence parallelism.

Dimension legend: B batch, L tokens (L_local = L / P per rank), N heads, K head dim,
P sequence-parallel degree.

- **CFG parallelism** splits the guided batch [cond, uncond] over 2 ranks: each runs the
  model on its half and the halves are all-gathered, so every rank holds both predictions
  and steps the same sampler state.
- **Ulysses sequence parallelism** (Jacobs et al. 2023, DeepSpeed-Ulysses): every rank
  holds L / P tokens of every sample. Everything in a MUG-DiT block is per token except
  self-attention, which an all-to-all turns into a head-sharded layout over the full
  sequence [B, N / P, L, K]; attention runs there, and a second all-to-all returns to the
  sequence-sharded layout. Heads (N) must divide by P.

The model code stays single-device: ``SequenceParallelDiT`` attaches to a ``MUGDiT`` from
the outside (see that class for the attachment points).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ParallelGroups:
    """Process groups of one inference run: ``cfg`` (size 1 or 2) x ``sp`` (Ulysses)."""

    cfg_group: dist.ProcessGroup | None
    sp_group: dist.ProcessGroup | None
    cfg_degree: int
    sp_degree: int
    cfg_rank: int
    sp_rank: int


def init_parallel(cfg_degree: int = 1, sp_degree: int | None = None) -> ParallelGroups:
    """Build the groups over the default process group (world = cfg_degree x sp_degree).

    Global rank r has cfg rank r // sp_degree and sp rank r % sp_degree. Must be called on
    every rank (``dist.new_group`` is collective).
    """
    if not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialised: launch with torchrun (or call "
            "dist.init_process_group) before init_parallel"
        )
    world, rank = dist.get_world_size(), dist.get_rank()
    if cfg_degree not in (1, 2):
        raise ValueError(f"cfg_degree must be 1 or 2 (one rank per CFG branch), got {cfg_degree}")
    if sp_degree is None:
        sp_degree = world // cfg_degree
    if cfg_degree * sp_degree != world:
        raise ValueError(
            f"cfg_degree {cfg_degree} x sp_degree {sp_degree} must equal the world size {world}"
        )
    cfg_group = sp_group = None
    for s in range(sp_degree):
        ranks = [c * sp_degree + s for c in range(cfg_degree)]
        g = dist.new_group(ranks)
        if rank in ranks:
            cfg_group = g
    for c in range(cfg_degree):
        ranks = [c * sp_degree + s for s in range(sp_degree)]
        g = dist.new_group(ranks)
        if rank in ranks:
            sp_group = g
    return ParallelGroups(
        cfg_group=cfg_group if cfg_degree > 1 else None,
        sp_group=sp_group if sp_degree > 1 else None,
        cfg_degree=cfg_degree,
        sp_degree=sp_degree,
        cfg_rank=rank // sp_degree,
        sp_rank=rank % sp_degree,
    )


def _all_gather_cat(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def cfg_parallel(denoiser: Denoiser, group: dist.ProcessGroup | None) -> Denoiser:
    """Wrap a denoiser so each rank of ``group`` (size 2) runs one half of the CFG batch."""
    if group is None:
        return denoiser
    size, rank = dist.get_world_size(group), dist.get_rank(group)

    def run(x: torch.Tensor, timestep: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % size:
            # No CFG batch to split (e.g. guidance scale 1): every rank runs everything.
            return denoiser(x, timestep, x_mask)
        n = x.shape[0] // size
        sl = slice(rank * n, (rank + 1) * n)
        out = denoiser(x[sl], timestep[sl], x_mask[sl])
        return _all_gather_cat(out, 0, group)

    return run


# ------------------------------------------------------------------------- Ulysses core


def all_to_all(
    x: torch.Tensor, scatter_dim: int, gather_dim: int, group: dist.ProcessGroup | None
) -> torch.Tensor:
    """Split ``x`` along ``scatter_dim`` over the ranks and concatenate what every rank
    sent along ``gather_dim`` (the Ulysses re-layout)."""
    size = dist.get_world_size(group)
    if size == 1:
        return x
    if x.shape[scatter_dim] % size:
        raise ValueError(
            f"dimension {scatter_dim} of size {x.shape[scatter_dim]} does not split over "
            f"{size} ranks"
        )
    send = [c.contiguous() for c in x.chunk(size, dim=scatter_dim)]
    recv = [torch.empty_like(c) for c in send]
    dist.all_to_all(recv, send, group=group)
    return torch.cat(recv, dim=gather_dim)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup | None,
    *,
    scale: float | None = None,
    seq_lens: list[int] | None = None,
) -> torch.Tensor:
    """Full bidirectional attention over a sequence sharded across ``group``.

    Args:
        q, k, v: [B, N, L_local, K], this rank's tokens of every head.
        seq_lens: tokens held by each rank when the shards are uneven (padding is trimmed
            before attention); None means every rank holds L_local.

    Returns:
        [B, N, L_local, K], attention output for this rank's tokens.
    """
    size = dist.get_world_size(group) if group is not None else 1
    if size == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if q.shape[1] % size:
        raise ValueError(f"{q.shape[1]} heads do not split over {size} sequence-parallel ranks")
    # [B, N, L_local, K] -> [B, N / P, L, K]: scatter heads, gather tokens.
    qf, kf, vf = (all_to_all(t, 1, 2, group) for t in (q, k, v))
    if seq_lens is not None:
        keep = torch.cat([torch.arange(n) + r * q.shape[2] for r, n in enumerate(seq_lens)]).to(
            q.device
        )
        qf, kf, vf = (t.index_select(2, keep) for t in (qf, kf, vf))
    out = F.scaled_dot_product_attention(qf, kf, vf, scale=scale)
    if seq_lens is not None:
        full = out.new_zeros(*out.shape[:2], q.shape[2] * size, out.shape[3])
        full.index_copy_(2, keep, out)
        out = full
    # [B, N / P, L, K] -> [B, N, L_local, K]
    return all_to_all(out, 2, 1, group)


def world_info() -> tuple[int, int]:
    """(rank, world size) of the default group, or (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), 1
