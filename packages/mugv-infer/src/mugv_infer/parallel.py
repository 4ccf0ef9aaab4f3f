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


def cfg_parallel(
    fn: Callable[..., torch.Tensor], group: dist.ProcessGroup | None
) -> Callable[..., torch.Tensor]:
    """Wrap ``fn(*tensors)`` so each rank of ``group`` runs its share of the batch.

    Every positional tensor is split along dim 0 into ``size`` equal parts (the CFG batch
    [cond, uncond] over 2 ranks); the outputs are all-gathered along dim 0.
    """
    if group is None:
        return fn
    size, rank = dist.get_world_size(group), dist.get_rank(group)

    def run(*tensors: torch.Tensor) -> torch.Tensor:
        n = tensors[0].shape[0]
        if n % size:
            # No CFG batch to split (e.g. guidance scale 1): every rank runs everything.
            return fn(*tensors)
        sl = slice(rank * (n // size), (rank + 1) * (n // size))
        out = fn(*(t[sl] for t in tensors))
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
    seq_lens: list[int] | None = None,
    attn_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Full bidirectional attention over a sequence sharded across ``group``.

    Args:
        q, k, v: [B, L_local, N, K], this rank's tokens of every head.
        seq_lens: real tokens held by each rank when the shards carry padding at their end
            (padding is dropped before attention); None means every token is real.
        attn_fn: attention on [B, L, N', K] tensors (default: SDPA with scale K^-0.5, e.g.
            ``functools.partial(mugv_dit.attention, backend="flash")``).

    Returns:
        [B, L_local, N, K], the attention output for this rank's tokens.
    """
    if attn_fn is None:
        attn_fn = _sdpa
    size = dist.get_world_size(group) if group is not None else 1
    if size == 1:
        return attn_fn(q, k, v)
    if q.shape[2] % size:
        raise ValueError(f"{q.shape[2]} heads do not split over {size} sequence-parallel ranks")
    # [B, L_local, N, K] -> [B, L, N / P, K]: scatter heads, gather tokens.
    qf, kf, vf = (all_to_all(t, 2, 1, group) for t in (q, k, v))
    keep = None
    if seq_lens is not None:
        local = q.shape[1]
        keep = torch.cat([torch.arange(n) + r * local for r, n in enumerate(seq_lens)])
        keep = keep.to(q.device)
        qf, kf, vf = (t.index_select(1, keep) for t in (qf, kf, vf))
    out = attn_fn(qf, kf, vf)
    if keep is not None:
        full = out.new_zeros(out.shape[0], q.shape[1] * size, *out.shape[2:])
        full.index_copy_(1, keep, out)
        out = full
    # [B, L, N / P, K] -> [B, L_local, N, K]
    return all_to_all(out, 1, 2, group)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


# ------------------------------------------------------------------ MUG-DiT attachment


class SequenceParallelDiT:
    """Run a ``MUGDiT``'s blocks with Ulysses sequence parallelism over ``group``.

    Every rank runs the same forward on the same inputs up to the blocks (patchify,
    embeddings: cheap). Forward pre-hooks on each block shard the per-token inputs (tokens,
    the t/t0 selector, RoPE cos/sin) along the sequence, padding it to a multiple of P; the
    self-attention of each block is replaced by an instance-level forward that runs Ulysses
    attention; a forward hook on the last block all-gathers the tokens and drops the
    padding, so the final layer and unpatchify see the full sequence again.

    The block signature used is ``MUGDiTBlock.forward(x [B, L, D], t_mlp, use_t [B, L],
    cos [B|1, L, K/2], sin, text, text_mask)`` and the self-attention's public parts
    (``qkv``, ``q_norm``, ``k_norm``, ``proj``) with ``mugv_dit.qk_norm_rope`` and
    ``mugv_dit.attention``; ``detach()`` restores the model.
    """

    def __init__(self, dit: torch.nn.Module, group: dist.ProcessGroup | None) -> None:
        import mugv_dit

        self.dit = dit
        self.group = group
        self.size = dist.get_world_size(group) if group is not None else 1
        self.rank = dist.get_rank(group) if group is not None else 0
        heads = dit.config.num_heads
        if heads % self.size:
            raise ValueError(
                f"the model has {heads} heads, which do not split over {self.size} "
                "sequence-parallel ranks; use a degree that divides the head count"
            )
        blocks = list(dit.blocks)
        self._handles = []
        self._full_len = 0
        self._seq_lens: list[int] = []
        for i, block in enumerate(blocks):
            if not isinstance(block.attn, mugv_dit.SelfAttention):
                raise TypeError(f"block {i} has no mugv_dit.SelfAttention `attn`")
            self._handles.append(block.register_forward_pre_hook(self._shard_inputs))
            block.attn.forward = self._attention_forward(block.attn)
        self._handles.append(blocks[-1].register_forward_hook(self._gather_output))
        self._attn_modules = [b.attn for b in blocks]

    # -- hooks ----------------------------------------------------------------------------
    def _shard(self, t: torch.Tensor, dim: int, pad_value: float) -> torch.Tensor:
        local = -(-self._full_len // self.size)
        pad = local * self.size - t.shape[dim]
        if pad:
            shape = list(t.shape)
            shape[dim] = pad
            t = torch.cat([t, t.new_full(shape, pad_value)], dim=dim)
        return t.narrow(dim, self.rank * local, local)

    def _shard_inputs(self, block: torch.nn.Module, args: tuple) -> tuple:
        x, t_mlp, use_t, cos, sin, *rest = args
        full = use_t.shape[1]  # the model passes the full selector to every block
        if x.shape[1] == full:  # first block: the full sequence arrives
            self._full_len = full
            local = -(-full // self.size)
            self._seq_lens = [max(0, min(local, full - r * local)) for r in range(self.size)]
            x = self._shard(x, 1, 0.0)
        use_t = self._shard(use_t, 1, False)
        cos = self._shard(cos, 1, 1.0)
        sin = self._shard(sin, 1, 0.0)
        return (x, t_mlp, use_t, cos, sin, *rest)

    def _gather_output(self, block: torch.nn.Module, args: tuple, out: torch.Tensor):
        parts = [torch.empty_like(out) for _ in range(self.size)]
        dist.all_gather(parts, out.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)[:, : self._full_len]

    def _attention_forward(self, attn: torch.nn.Module):
        import mugv_dit

        seq = self

        def forward(
            x: torch.Tensor,
            cos: torch.Tensor,
            sin: torch.Tensor,
            *,
            attention_backend: str = "sdpa",
            kernel_backend: str = "torch",
            proj_bias: bool = True,
        ) -> torch.Tensor:
            B, L, _ = x.shape
            q, k, v = attn.qkv(x).view(B, L, 3, attn.num_heads, attn.head_dim).unbind(2)
            q = mugv_dit.qk_norm_rope(
                q, attn.q_norm.weight, cos, sin, eps=attn.q_norm.eps, backend=kernel_backend
            )
            k = mugv_dit.qk_norm_rope(
                k, attn.k_norm.weight, cos, sin, eps=attn.k_norm.eps, backend=kernel_backend
            )

            def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                return mugv_dit.attention(q, k, v, backend=attention_backend)

            out = ulysses_attention(q, k, v, seq.group, seq_lens=seq._seq_lens, attn_fn=core)
            out = out.reshape(B, L, -1)
            return F.linear(out, attn.proj.weight, attn.proj.bias if proj_bias else None)

        return forward

    def detach(self) -> None:
        """Remove the hooks and restore the self-attention forwards."""
        for h in self._handles:
            h.remove()
        for attn in self._attn_modules:
            attn.__dict__.pop("forward", None)
        self._handles = []


def world_info() -> tuple[int, int]:
    """(rank, world size) of the default group, or (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), 1
