"""Run a function in several processes with a gloo process group, like ``torchrun``."""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple,
    queue: Any,
    cuda_shim: bool = False,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    try:
        if cuda_shim:
            from mugv_testing._mcore_shim import install

            install()
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result = fn(rank, world_size, *args)
        queue.put((rank, True, result))
    except BaseException:
        queue.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: tuple = (),
    timeout: float = 240.0,
    *,
    cuda_shim: bool = False,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes over gloo.

    ``fn`` must be importable (a module-level function) and its return value picklable.
    The environment each rank sees matches ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT). Returns the per-rank results in rank order; raises RuntimeError
    with the failing rank's traceback, or TimeoutError if a rank hangs. ``cuda_shim``:
    each rank first installs :mod:`mugv_testing._mcore_shim` (Megatron-Core's CUDA calls
    made CPU no-ops), so Megatron's schedules, DDP and optimizer run over gloo.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(r, world_size, port, fn, args, queue, cuda_shim),
            daemon=True,
        )
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        for _ in range(world_size):
            try:
                rank, ok, value = queue.get(timeout=timeout)
            except Exception as exc:
                raise TimeoutError(
                    f"a rank did not report within {timeout:.0f} s (hung collective?); "
                    f"finished ranks: {sorted(results)}"
                ) from exc
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world_size)]
