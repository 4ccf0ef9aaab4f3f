"""Launch helpers shared by the Triton kernel files: device checks, the launch guard,
autotuning configurations and the fixed backward chunk size."""

from __future__ import annotations

import contextlib
import os

import torch
import triton

# Rows handled by one backward program: partial reductions (d shift, d gate, d weight) are
# accumulated in registers over this many rows, then summed over programs in torch. Fixed
# (not tuned): the size of the partial-sum buffers depends on it.
BACKWARD_ROWS = 64


def interpreting() -> bool:
    """True when Triton runs through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_triton_tensors(op: str, *tensors: torch.Tensor) -> None:
    """Triton needs CUDA tensors on one device, or CPU tensors under ``TRITON_INTERPRET=1``,
    each with a unit stride in its last dimension (rows may be strided views)."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(
            f"{op}: all tensors must be on one device (got {sorted(map(str, devices))})"
        )
    for t in tensors:
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and interpreting():
            continue
        raise ValueError(
            f"{op}: the triton backend needs CUDA tensors (got a {t.device.type} tensor); "
            "use backend='torch' on CPU, or set TRITON_INTERPRET=1 before triton is imported "
            "to run the kernels through the interpreter"
        )


def last_dim_unit(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dimension is contiguous, else a contiguous copy: the kernels
    take any row strides but read each row as one contiguous vector."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def launch_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on the tensor's device, not the current one (rank k of a process that never
    called ``torch.cuda.set_device`` would otherwise launch on cuda:0)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def tuned(configs: list[triton.Config]) -> list[triton.Config]:
    """Autotuning candidates; the interpreter takes the first (it has no timers, and tuning
    would only multiply its run time)."""
    return configs[:1] if interpreting() else configs


def warp_configs() -> list[triton.Config]:
    """One-row-per-program kernels over a [D] vector: only the warp count is tuned."""
    return tuned([triton.Config({}, num_warps=w) for w in (4, 1, 2, 8, 16)])
