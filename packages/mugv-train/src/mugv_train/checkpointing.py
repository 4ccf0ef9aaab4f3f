"""Checkpoints: atomic, resumable, and exportable to the mugv-dit format.

Layout (``<output_dir>/checkpoints``)::

    step_00000100/            one complete checkpoint
        meta.json             format version, step, parallel layout, DiTConfig, run name
        model_tp{t}_pp{p}.pt  the model part of TP rank t on pipeline rank p, all its
                              virtual stages, layers under global numbers (written by DP
                              rank 0, CP rank 0: the other copies are equal)
        ema_tp{t}_pp{p}.pt    the EMA of exactly that part (sharded like the parameters)
        optim_tp{t}_pp{p}_dp{d}_cp{c}.pt
                              this rank's optimizer state (the distributed optimizer's
                              shard of fp32 main weights and Adam moments)
        trainer_dp{d}.pt      step, data position, RNG state, history (one per DP rank:
                              data positions differ per rank)
    latest                    name of the newest complete checkpoint (atomic text file)

Atomicity: every rank writes into ``step_XXXXXXXX.partial/``; after a barrier rank 0 renames
it to ``step_XXXXXXXX`` and then rewrites ``latest``. A crash or a full disk during a save
leaves a ``.partial`` folder that is ignored and removed later: the last good checkpoint is
never touched. Two formats share this layout and its atomicity: ``torch_dist`` (:func:`save_torch_dist`,
Megatron ``dist_checkpointing``: ``step_X/dist/`` with the layers stacked, reshardable to
any TP / PP layout, optionally written asynchronously on GPU) and ``cpu`` (the per-rank
torch files above, for the CPU/gloo runs: Megatron's torch_dist writer needs CUDA).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mugv_train._io import atomic_torch_save, atomic_write_text, fsync_dir

FORMAT_VERSION = 3


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or does not fit the run."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file holds pickled objects beyond tensors and plain containers.

    Every checkpoint file is read with ``torch.load(weights_only=True)``: torch's restricted
    unpickler, which never imports or calls anything from the file. A file that needs more
    (a planted ``__reduce__`` payload, a pickled class) is refused, not executed.
    """


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's tensors are not exactly the model's (missing or unexpected names)."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str]) -> None:
        self.missing, self.unexpected = list(missing), list(unexpected)
        super().__init__(
            f"{what} does not match the model: missing {len(missing)} tensor(s) "
            f"{self.missing[:8]}, unexpected {len(unexpected)} tensor(s) {self.unexpected[:8]}. "
            "Resume with the model and LoRA settings the checkpoint was written with, or "
            "start a new output_dir."
        )


def read_torch_file(path: Path) -> Any:
    """Tensors and plain containers from a file written by :func:`atomic_torch_save`.

    ``weights_only=True``: nothing in the file is imported or executed. Raises
    :class:`UnsafeCheckpointError` for pickled objects, :class:`CheckpointError` for a file
    that is missing, truncated or not a torch file.
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path} holds pickled objects that are not tensors or plain containers; it is "
            "refused unread (a checkpoint must never run code). Delete it, or resume from a "
            f"checkpoint this package wrote ({str(exc).splitlines()[0][:200]})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint file (truncated or not written by "
            f"mugv-train: {str(exc).splitlines()[0][:200]}); resume from an earlier checkpoint"
        ) from exc


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _step_name(step: int) -> str:
    return f"step_{step:08d}"


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (or None)."""
    root = Path(root)
    pointer = root / "latest"
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if (path / "meta.json").exists():
            return path
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".partial"))
    done = [p for p in done if (p / "meta.json").exists()]
    return done[-1] if done else None


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(state)``, strictly: every tensor of the model and nothing else
    (Megatron's ``_extra_state`` entries aside), else :class:`CheckpointMismatchError`."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} is not a state dict")
    own = {k for k in model.state_dict() if not k.endswith("_extra_state")}
    given = {k for k in state if not k.endswith("_extra_state")}
    missing, unexpected = sorted(own - given), sorted(given - own)
    if missing or unexpected:
        raise CheckpointMismatchError(what, missing, unexpected)
    model.load_state_dict(state, strict=False)


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
    tp_rank: int,
    dp_rank: int,
    pp_rank: int = 0,
    cp_rank: int = 0,
    keep_last: int = 0,
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write one checkpoint collectively (every rank calls this). Returns the final folder."""
    root = Path(root)
    rank = dist.get_rank() if dist.is_initialized() else 0
    final = root / _step_name(step)
    partial = root / (_step_name(step) + ".partial")
    error: BaseException | None = None
    try:
        if rank == 0:
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
        _barrier()
        part = f"tp{tp_rank}_pp{pp_rank}"
        if dp_rank == 0 and cp_rank == 0:
            atomic_torch_save(model_state, partial / f"model_{part}.pt")
            if ema_state is not None:
                atomic_torch_save(ema_state, partial / f"ema_{part}.pt")
        atomic_torch_save(optim_state, partial / f"optim_{part}_dp{dp_rank}_cp{cp_rank}.pt")
        if tp_rank == 0 and pp_rank == 0 and cp_rank == 0:
            atomic_torch_save(trainer_state, partial / f"trainer_dp{dp_rank}.pt")
    except OSError as exc:
        error = exc
    _fail(root, step, error)
    _barrier()
    _commit(root, step, meta, keep_last)
    return final


def _commit(root: Path, step: int, meta: dict[str, Any], keep_last: int) -> None:
    """Rank 0 turns the complete ``.partial`` folder into the newest checkpoint (collective)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    final = root / _step_name(step)
    partial = root / (_step_name(step) + ".partial")
    if rank == 0:
        atomic_write_text(
            partial / "meta.json",
            json.dumps({**meta, "format_version": FORMAT_VERSION, "step": step}),
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        fsync_dir(root)
        atomic_write_text(root / "latest", final.name)
        if keep_last > 0:
            done = sorted(
                p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".partial")
            )
            for old in done[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob("step_*.partial"):
            if stale != partial:
                shutil.rmtree(stale, ignore_errors=True)
    _barrier()


def _fail(root: Path, step: int, error: BaseException | None) -> None:
    """Collectively agree on a failed save; remove its partial folder and raise."""
    failed = torch.tensor([1 if error else 0])
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            failed = failed.cuda()
        dist.all_reduce(failed)
    if not failed.item():
        return
    if (dist.get_rank() if dist.is_initialized() else 0) == 0:
        shutil.rmtree(root / (_step_name(step) + ".partial"), ignore_errors=True)
    _barrier()
    raise CheckpointError(
        f"saving the step-{step} checkpoint failed ({error or 'on another rank'}); the last "
        f"complete checkpoint in {root} is intact. Free disk space and resume."
    ) from error


def save_torch_dist(
    root: Path,
    step: int,
    *,
    sharded_state: dict[str, Any],
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
    tp_rank: int,
    pp_rank: int,
    cp_rank: int,
    dp_rank: int,
    keep_last: int = 0,
    async_queue: Any = None,
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a Megatron ``dist_checkpointing`` (torch_dist) checkpoint collectively.

    ``sharded_state`` holds ``model`` and ``optimizer`` sharded state dicts; they go to
    ``step_X/dist/`` (``.distcp`` shards + ``metadata.json``: loadable under any TP / PP
    layout), the per-DP trainer state next to it. With ``async_queue`` (a Megatron
    ``AsyncCallsQueue``, GPU) the shards are written in the background and the folder is
    committed (renamed, ``latest`` updated) when the queue finalises the request; the last
    good checkpoint stays the newest complete one until then.
    """
    from megatron.core import dist_checkpointing

    root = Path(root)
    rank = dist.get_rank() if dist.is_initialized() else 0
    partial = root / (_step_name(step) + ".partial")
    error: BaseException | None = None
    request = None
    try:
        if rank == 0:
            if partial.exists():
                shutil.rmtree(partial)
            (partial / "dist").mkdir(parents=True)
        _barrier()
        request = dist_checkpointing.save(
            sharded_state, str(partial / "dist"), async_sharded_save=async_queue is not None
        )
        if tp_rank == 0 and pp_rank == 0 and cp_rank == 0:
            atomic_torch_save(trainer_state, partial / f"trainer_dp{dp_rank}.pt")
        if ema_state is not None and dp_rank == 0 and cp_rank == 0:
            atomic_torch_save(ema_state, partial / f"ema_tp{tp_rank}_pp{pp_rank}.pt")
    except Exception as exc:  # OSError or Megatron's CheckpointingException wrapping it
        error = exc
    _fail(root, step, error)
    meta = {**meta, "format": "torch_dist"}
    if request is not None:
        request.add_finalize_fn(lambda: _commit(root, step, meta, keep_last))
        async_queue.schedule_async_request(request)
    else:
        _barrier()
        _commit(root, step, meta, keep_last)
    return root / _step_name(step)


def load_torch_dist(path: Path, sharded_template: dict[str, Any]) -> dict[str, Any]:
    """Load ``step_X/dist`` into the layout of ``sharded_template`` (works on CPU)."""
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load(sharded_template, str(Path(path) / "dist"))


#: Meta fields of the parallel layout: the config field that sets each (the fix to name).
_LAYOUT_FIELDS = {
    "tensor_parallel": "parallel.tensor_parallel",
    "pipeline_parallel": "parallel.pipeline_parallel",
    "virtual_pipeline": "parallel.virtual_pipeline",
    "context_parallel": "parallel.context_parallel",
    "data_parallel": "the number of processes / (TP x CP x PP)",
    "distributed_optimizer": "parallel.distributed_optimizer",
}


def check_checkpoint_meta(path: Path, expect: dict[str, Any], *, ema: bool = False) -> dict:
    """Read ``path/meta.json`` and check it against ``expect`` (the run's meta fields);
    returns the meta. Cheap (one JSON file): ``train`` calls it before building anything.

    A torch_dist checkpoint loads under any TP / PP / CP layout (Megatron reshards it),
    except its EMA, which is saved per model-parallel rank. A mismatch raises
    :class:`CheckpointError` naming the field, both values and the setting to change.
    """
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path / 'meta.json'} cannot be read ({exc}); resume from an earlier checkpoint"
        ) from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / 'meta.json'} is not a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {meta.get('format_version')}, expected {FORMAT_VERSION}"
        )
    reshardable = ("tensor_parallel", "pipeline_parallel", "context_parallel")
    for key, value in expect.items():
        if meta.get("format") == "torch_dist" and key in reshardable and not ema:
            continue  # torch_dist loads under any model-parallel layout
        if meta.get(key) != value:
            if key in _LAYOUT_FIELDS and key in meta:
                raise CheckpointError(
                    f"checkpoint {path} was written with {key}={meta[key]!r}, this run has "
                    f"{value!r}: set {_LAYOUT_FIELDS[key]} to {meta[key]!r} to resume it, or "
                    "start a new output_dir"
                )
            raise CheckpointError(
                f"checkpoint {path} does not fit this run: {key} is {meta.get(key)!r} there and "
                f"{value!r} here. Resume with the same settings, or start a new output_dir."
            )
    return meta


def load_checkpoint(
    path: Path,
    *,
    tp_rank: int,
    dp_rank: int,
    expect: dict[str, Any],
    pp_rank: int = 0,
    cp_rank: int = 0,
    ema: bool = False,
) -> dict[str, Any]:
    """Read this rank's part of a checkpoint, checking that it fits the run.

    ``expect`` holds the meta fields that must match (e.g. the DiTConfig and TP size); a
    mismatch raises :class:`CheckpointError` naming the field.
    """
    path = Path(path)
    meta = check_checkpoint_meta(path, expect, ema=ema)
    trainer = path / f"trainer_dp{dp_rank}.pt"
    if not trainer.exists():
        raise CheckpointError(
            f"{trainer} is missing: the checkpoint was written with a different DP size"
        )
    part = f"tp{tp_rank}_pp{pp_rank}"
    out = {"meta": meta, "trainer": read_torch_file(trainer)}
    if ema:
        out["ema"] = read_torch_file(path / f"ema_{part}.pt")
    if meta.get("format") == "torch_dist":  # model/optimizer: load_torch_dist(path, ...)
        return out
    out["model"] = read_torch_file(path / f"model_{part}.pt")
    out["optim"] = read_torch_file(path / f"optim_{part}_dp{dp_rank}_cp{cp_rank}.pt")
    return out
