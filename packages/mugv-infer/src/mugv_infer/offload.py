"""CPU offload: whole components, or a DiT block by block.

Weights stay in (pinned) CPU memory; a module's parameters and buffers are pointed at a
device copy only while it runs, and back at the CPU copy afterwards (no copy back: inference
never changes weights). Two granularities:

- ``ComponentOffload``: one component (text encoder, DiT, VAE) on the device at a time. The
  pipeline wraps each stage in ``offload.on_device(module)``; components that are not running
  occupy no device memory.
- ``BlockOffload``: the DiT's non-block weights live on the device; its blocks are moved in
  a forward pre-hook and released in a forward hook, with the next block prefetched on a side
  CUDA stream so the copy overlaps the current block's compute. Peak device memory for the
  weights is the non-block part plus ``1 + prefetch`` blocks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn


class _Swap:
    """A module's tensors with a CPU home copy and an optional device copy."""

    def __init__(self, module: nn.Module, pin: bool) -> None:
        self.module = module
        self.tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        for t in [*module.parameters(recurse=True), *module.buffers(recurse=True)]:
            home = t.detach().to("cpu")
            if pin and not home.is_pinned():
                home = home.pin_memory()
            t.data = home
            self.tensors.append((t, home))
        self.loaded_on: torch.device | None = None
        self.ready: torch.cuda.Event | None = None

    def load(self, device: torch.device, stream: torch.cuda.Stream | None = None) -> None:
        if self.loaded_on == device:
            return
        ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with ctx:
            for t, home in self.tensors:
                t.data = home.to(device, non_blocking=True)
            if stream is not None:
                self.ready = torch.cuda.Event()
                self.ready.record(stream)
        self.loaded_on = device

    def wait(self) -> None:
        if self.ready is not None:
            torch.cuda.current_stream().wait_event(self.ready)
            for t, _ in self.tensors:
                t.data.record_stream(torch.cuda.current_stream())
            self.ready = None

    def unload(self) -> None:
        for t, home in self.tensors:
            t.data = home
        self.loaded_on = None


def _device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class ComponentOffload:
    """Keep components on the CPU and move each to ``device`` only while it is used."""

    def __init__(self, device: torch.device | str, *, pin_memory: bool | None = None) -> None:
        self.device = _device(device)
        self.pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._swaps: dict[int, _Swap] = {}

    def add(self, module: nn.Module) -> nn.Module:
        """Move ``module``'s weights to (pinned) CPU memory and manage it."""
        if id(module) not in self._swaps:
            self._swaps[id(module)] = _Swap(module, self.pin)
        return module

    def is_on_device(self, module: nn.Module) -> bool:
        swap = self._swaps.get(id(module))
        return swap is not None and swap.loaded_on == self.device

    @contextlib.contextmanager
    def on_device(self, module: nn.Module) -> Iterator[nn.Module]:
        """Weights of ``module`` on the device inside the block, back on CPU after it."""
        swap = self._swaps.get(id(module))
        if swap is None:
            raise ValueError("module is not managed by this offloader; call add(module) first")
        for other in self._swaps.values():
            if other is not swap and other.loaded_on is not None:
                other.unload()
        swap.load(self.device)
        try:
            yield module
        finally:
            swap.unload()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


class BlockOffload:
    """Stream a model's blocks to the device one at a time during its forward."""

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[nn.Module],
        device: torch.device | str,
        *,
        prefetch: int = 1,
        pin_memory: bool | None = None,
    ) -> None:
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.device = _device(device)
        self.blocks = list(blocks)
        if not self.blocks:
            raise ValueError("BlockOffload needs at least one block")
        pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch = prefetch
        self._stream = (
            torch.cuda.Stream(self.device) if self.device.type == "cuda" and prefetch else None
        )
        block_ids = {id(p) for b in self.blocks for p in [*b.parameters(), *b.buffers()]}
        # Everything that is not a block lives on the device for good.
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) not in block_ids:
                t.data = t.data.to(self.device)
        self._swaps = [_Swap(b, pin) for b in self.blocks]
        self.max_resident = 0
        self._handles = []
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre_hook(i)))
            self._handles.append(block.register_forward_hook(self._post_hook(i)))

    def resident(self) -> list[int]:
        """Indices of the blocks whose weights are on the device now."""
        return [i for i, s in enumerate(self._swaps) if s.loaded_on is not None]

    def _pre_hook(self, i: int):
        def hook(module: nn.Module, args: object) -> None:
            swap = self._swaps[i]
            swap.load(self.device)
            swap.wait()
            for j in range(i + 1, min(i + 1 + self.prefetch, len(self._swaps))):
                self._swaps[j].load(self.device, self._stream)
            self.max_resident = max(self.max_resident, len(self.resident()))

        return hook

    def _post_hook(self, i: int):
        def hook(module: nn.Module, args: object, output: object) -> None:
            self._swaps[i].unload()

        return hook

    def remove(self) -> None:
        """Remove the hooks; blocks stay on the CPU."""
        for h in self._handles:
            h.remove()
        self._handles = []


def enable_block_offload(
    model: nn.Module, device: torch.device | str, *, prefetch: int = 1
) -> BlockOffload:
    """Block-by-block offload of a model with a ``blocks`` module list (e.g. ``MUGDiT``)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(
            f"{type(model).__name__} has no non-empty `blocks` ModuleList; use BlockOffload("
            "model, blocks, device) with its list of blocks"
        )
    return BlockOffload(model, list(blocks), device, prefetch=prefetch)
