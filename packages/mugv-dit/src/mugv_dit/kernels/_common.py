"""Launch helpers shared by the Triton kernel files (device checks, block sizes)."""

from __future__ import annotations

import os

import torch

# Rows handled by one backward program: partial reductions (d shift, d gate, d weight) are
# accumulated in registers over this many rows, then summed over programs in torch.
BACKWARD_ROWS = 64


def interpreting() -> bool:
    """True when Triton runs through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_triton_tensors(op: str, *tensors: torch.Tensor) -> None:
    """Triton needs CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""
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


def num_warps_for(block: int) -> int:
    return max(1, min(16, block // 256))
