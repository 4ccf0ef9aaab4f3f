"""Process groups and seeding for Megatron-Core on GPU (NCCL) or CPU (gloo)."""

from __future__ import annotations

import datetime
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from mugv_train.config import ParallelConfig


def init_distributed(parallel: ParallelConfig, *, timeout_s: float = 600.0) -> tuple[int, int]:
    """Initialise torch.distributed (from torchrun's env, or a 1-process group) and Megatron's
    model-parallel groups. Returns (rank, world_size). Idempotent."""
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl" if cuda else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        if "RANK" in os.environ:  # launched by torchrun / srun: rendezvous through the env
            dist.init_process_group(backend, timeout=timeout)
        else:  # plain Python: a private 1-process group (the env stays untouched)
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            dist.init_process_group(
                backend,
                init_method=f"tcp://127.0.0.1:{port}",
                rank=0,
                world_size=1,
                timeout=timeout,
            )
    world = dist.get_world_size()
    tp, cp, pp = parallel.tensor_parallel, parallel.context_parallel, parallel.pipeline_parallel
    if world % (tp * cp * pp):
        raise ValueError(
            f"world size {world} is not divisible by tensor_parallel x context_parallel x "
            f"pipeline_parallel = {tp} x {cp} x {pp}; launch a multiple of {tp * cp * pp} ranks "
            "or lower the parallel degrees"
        )
    vpp = parallel.virtual_pipeline if parallel.virtual_pipeline > 1 else None
    if parallel_state.model_parallel_is_initialized() and (
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_context_parallel_world_size(),
        parallel_state.get_pipeline_model_parallel_world_size(),
        parallel_state.get_virtual_pipeline_model_parallel_world_size(),
    ) != (tp, cp, pp, vpp):
        parallel_state.destroy_model_parallel()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp,
            context_parallel_size=cp,
        )
    return dist.get_rank(), world


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; on CUDA also Megatron's per-TP-rank RNG tracker."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)


def tp_rank_and_size() -> tuple[int, int]:
    return (
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_world_size(),
    )


def data_parallel_group() -> dist.ProcessGroup:
    return parallel_state.get_data_parallel_group()


def pp_rank_and_size() -> tuple[int, int]:
    return (
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_pipeline_model_parallel_world_size(),
    )


def cp_rank_and_size() -> tuple[int, int]:
    return (
        parallel_state.get_context_parallel_rank(),
        parallel_state.get_context_parallel_world_size(),
    )


def data_parallel_rank_and_size() -> tuple[int, int]:
    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
