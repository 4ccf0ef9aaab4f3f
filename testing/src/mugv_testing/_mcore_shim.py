"""Test-only redirect of Megatron-Core's hard-coded CUDA calls to the CPU (gloo runs).

Megatron-Core's schedules, ``DistributedDataParallel``, ``finalize_model_grads`` and
optimizer are device-agnostic maths around a few CUDA-only calls: a device index for new
buffers (``torch.cuda.current_device()``, ``device="cuda"``), stream / event bookkeeping
for overlapping communication, ``Tensor.cuda()``, and dtype checks that compare
``Tensor.type()`` with ``torch.cuda.*Tensor`` names. This shim makes exactly those calls
CPU no-ops, so the *real* engine runs over gloo in CPU tests. It lives in mugv-testing and
is never imported by a package: a package on CPU without it refuses multi-process runs.

``install()`` patches for the rest of the process (spawned test workers);
``cuda_shim()`` is the same as a context manager (restores everything on exit).
``torch.cuda.is_available()`` stays False: models, data and checks keep seeing a CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["cuda_shim", "install", "installed"]


class _NullStream:
    """A stream whose work is already done (CPU ops are synchronous)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_event(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> _NullEvent:
        return event or _NullEvent()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def __enter__(self) -> _NullStream:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _NullEvent:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.DoubleTensor": "torch.cuda.DoubleTensor",
}


class _CpuForCuda(TorchFunctionMode):
    """``device="cuda"`` arguments become the CPU, ``Tensor.cuda()`` is the identity and
    ``Tensor.type()`` reports the CUDA name of a CPU tensor's type."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func in (torch.Tensor.to, torch.Tensor.new_empty) and args:
            args = tuple("cpu" if i > 0 and _is_cuda(a) else a for i, a in enumerate(args))
        return func(*args, **kwargs)


def _patches() -> dict[str, Any]:
    return {
        "current_device": lambda: "cpu",
        "synchronize": lambda *a, **k: None,
        "current_stream": lambda *a, **k: _NullStream(),
        "default_stream": lambda *a, **k: _NullStream(),
        "stream": lambda *a, **k: contextlib.nullcontext(),
        "Stream": _NullStream,
        "Event": _NullEvent,
        "set_device": lambda *a, **k: None,
        "empty_cache": lambda *a, **k: None,
        "memory_allocated": lambda *a, **k: 0,
        "max_memory_allocated": lambda *a, **k: 0,
    }


_state: dict[str, Any] = {"depth": 0, "saved": {}, "mode": None}


def installed() -> bool:
    """Whether the shim is active in this process."""
    return _state["depth"] > 0


def _enter() -> None:
    if _state["depth"] == 0:
        for name, value in _patches().items():
            _state["saved"][name] = getattr(torch.cuda, name, None)
            setattr(torch.cuda, name, value)
        _state["mode"] = _CpuForCuda()
        _state["mode"].__enter__()
    _state["depth"] += 1


def _exit() -> None:
    _state["depth"] -= 1
    if _state["depth"] == 0:
        _state["mode"].__exit__(None, None, None)
        for name, value in _state["saved"].items():
            if value is None:
                delattr(torch.cuda, name)
            else:
                setattr(torch.cuda, name, value)
        _state["saved"].clear()


def install() -> None:
    """Activate the shim for the rest of this process (spawned test workers)."""
    _enter()


@contextlib.contextmanager
def cuda_shim() -> Iterator[None]:
    """Activate the shim inside a ``with`` block (nests; restored on exit)."""
    _enter()
    try:
        yield
    finally:
        _exit()


def _main() -> None:
    """``python -m mugv_testing._mcore_shim MODULE ARGS...``: run MODULE (like ``-m``) under
    the shim, e.g. as ``torchrun ... -m mugv_testing._mcore_shim mugv_train.cli ...``."""
    import runpy
    import sys

    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m mugv_testing._mcore_shim MODULE [ARGS...]")
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    install()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _main()
