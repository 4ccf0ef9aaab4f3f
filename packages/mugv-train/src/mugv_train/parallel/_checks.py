"""Checks of a parallel layout and backend, run before any process group, model or data
(reference §G.4): each failure names the value and the fix.

The token sequence needs no check: :class:`~mugv_train.parallel.MegatronMUGDiT` pads the
tokens [start, video, end] to a multiple of CP x TP (SP) and masks the padding out of
attention, and pads the caption to a multiple of TP under SP, so every length divides.
"""

from __future__ import annotations

import os

import torch

from mugv_dit import DiTConfig
from mugv_train.config import ParallelConfig, check_parallel_divides


class ParallelLayoutError(ValueError):
    """A parallel layout that does not divide the model or the world, or a backend (TE, FP8)
    that this machine cannot run."""


def check_backend(parallel: ParallelConfig) -> None:
    """Transformer Engine and FP8 need TE installed and a CUDA GPU."""
    if parallel.transformer_impl != "transformer_engine" and not parallel.fp8:
        return
    what = "parallel.fp8=true" if parallel.fp8 else "parallel.transformer_impl='transformer_engine'"
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError as exc:
        raise ParallelLayoutError(
            f"{what} needs Transformer Engine, which is not installed: `pip install "
            "mugv-train[te]` on a CUDA machine, or set parallel.transformer_impl='local' and "
            "parallel.fp8=false"
        ) from exc
    if not torch.cuda.is_available():
        raise ParallelLayoutError(
            f"{what} needs a CUDA GPU and none is visible; run on GPUs, or set "
            "parallel.transformer_impl='local' and parallel.fp8=false"
        )
    if parallel.fp8:
        major, minor = torch.cuda.get_device_capability()
        if (major, minor) < (8, 9):
            raise ParallelLayoutError(
                f"parallel.fp8=true needs FP8 tensor cores (compute capability >= 8.9, e.g. "
                f"H100, L40S); this GPU is {major}.{minor}: set parallel.fp8=false"
            )


def check_layout(
    model: DiTConfig,
    parallel: ParallelConfig,
    *,
    world_size: int | None = None,
    microbatches: int | None = None,
) -> None:
    """Raise :class:`ParallelLayoutError` if ``parallel`` does not divide ``model`` or the
    world (``world_size``: the number of processes, read from ``WORLD_SIZE`` when None)."""
    tp, cp, pp = parallel.tensor_parallel, parallel.context_parallel, parallel.pipeline_parallel
    vpp = parallel.virtual_pipeline
    check_parallel_divides(model.num_heads, model.depth, tp, pp, vpp, ParallelLayoutError)
    if model.mlp_hidden_size % tp:
        raise ParallelLayoutError(
            f"the MLP width {model.mlp_hidden_size} is not divisible by parallel.tensor_parallel "
            f"{tp}; use a tensor_parallel that divides it"
        )
    if vpp > 1 and microbatches is not None and microbatches % pp:
        raise ParallelLayoutError(
            f"data.microbatches {microbatches} is not a multiple of pipeline_parallel {pp}: "
            "Megatron's interleaved schedule (virtual_pipeline > 1) runs the micro-batches "
            f"in groups of {pp}; use a multiple of {pp}"
        )
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size % (tp * cp * pp):
        raise ParallelLayoutError(
            f"{world_size} processes are not divisible by tensor_parallel x context_parallel "
            f"x pipeline_parallel = {tp} x {cp} x {pp} = {tp * cp * pp}; launch a multiple of "
            f"{tp * cp * pp} processes or lower the parallel degrees"
        )
