"""LoRA on the tensor-parallel block linears (official: r 64, alpha 32, Gaussian A, zero B).

y = W x + b + (alpha / r) B A x. On a column-parallel linear (qkv, q, kv, fc1) A [r, in] is
replicated and B [out / TP, r] is sharded like W's rows; on a row-parallel linear (proj,
fc2) A [r, in / TP] is sharded like W's columns and B [out, r] is replicated. The rank-r
product A x travels through Megatron's own mappings, exactly as the base linear's
activations do: copied into the TP region (column; under sequence parallel all-gathered
over the tokens) or summed over it (row; under sequence parallel reduce-scattered), so
the replicated factor's gradient is whole, or marked ``sequence_parallel`` for
``finalize_model_grads`` when it saw only this rank's tokens. Merging is shard-local:
W_shard += s B A. Only the adapters train; the base model is frozen.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import types
import zlib
from pathlib import Path
from typing import Any

import torch
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from torch import nn

from mugv_train.config import LORA_TARGETS, LoRAConfig


def _lora_forward(self, x, *args, **kwargs):
    out, bias = self._lora_base_forward(x, *args, **kwargs)
    ax = x @ self.lora_A.t().to(x.dtype)  # [L(/TP), B, r]
    sp = self.sequence_parallel
    if self._lora_row:
        ax = (
            reduce_scatter_to_sequence_parallel_region
            if sp
            else reduce_from_tensor_model_parallel_region
        )(ax)
    else:
        ax = (
            gather_from_sequence_parallel_region(ax)
            if sp
            else copy_to_tensor_model_parallel_region(ax)
        )
    return out + self._lora_scale * (ax @ self.lora_B.t().to(x.dtype)), bias


def _tp_rank_and_size() -> tuple[int, int]:
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return 0, 1
    return ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()


def _global_name(name: str, layer_offset: int) -> str:
    """``decoder.layers.{i}.<...>`` of a pipeline chunk under the global layer number."""
    m = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
    return f"decoder.layers.{int(m.group(1)) + layer_offset}.{m.group(2)}" if m else name


def initial_lora_a(
    seed: int, name: str, rank: int, in_local: int, row: bool, tp_rank: int, tp_size: int
) -> torch.Tensor:
    """The Gaussian A [r, in(/TP)] of the adapter on the linear ``name`` (global layer
    number), N(0, 1/r) as the official LoRA init. Drawn from a generator keyed by (seed,
    name) over the full input width and sliced to this rank's columns for a row-parallel
    linear: every tensor / pipeline layout starts from the same adapters."""
    g = torch.Generator().manual_seed((seed * 0x9E3779B1 + zlib.crc32(name.encode())) % 2**63)
    full = in_local * tp_size if row else in_local
    a = torch.randn(rank, full, generator=g) / math.sqrt(rank)
    return a[:, tp_rank * in_local : (tp_rank + 1) * in_local] if row else a


def add_lora(model: nn.Module, config: LoRAConfig, seed: int = 0) -> list[str]:
    """Freeze ``model`` and add adapters to the linears named in ``config.targets``.

    A is drawn per adapted linear from (seed, its global name) (:func:`initial_lora_a`), B
    is zero; both are created in the device and dtype of the linear's weight, so a model
    on the GPU (or the meta device) gets its adapters there. Returns the names of the
    adapted modules.
    """
    model.requires_grad_(False)
    tp_rank, tp_size = _tp_rank_and_size()
    offset = int(getattr(model, "layer_offset", 0))
    adapted = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in config.targets:
            continue
        if not isinstance(module, ColumnParallelLinear | RowParallelLinear):
            raise TypeError(
                f"LoRA supports Megatron local linears; {name} is {type(module).__name__}"
            )
        row = isinstance(module, RowParallelLinear)
        out_f, in_f = module.weight.shape  # local shard shape
        device, dtype = module.weight.device, module.weight.dtype
        a = initial_lora_a(
            seed, _global_name(name, offset), config.rank, in_f, row, tp_rank, tp_size
        )
        module.lora_A = nn.Parameter(a.to(device=device, dtype=dtype))
        module.lora_B = nn.Parameter(torch.zeros(out_f, config.rank, device=device, dtype=dtype))
        # gradient bookkeeping for Megatron's DDP, finalize_model_grads and grad-norm
        if row:  # A [r, in / TP] split like W's columns; B replicated
            set_tensor_model_parallel_attributes(module.lora_A, True, 1, 1)
            module.lora_B.sequence_parallel = module.sequence_parallel
        else:  # B [out / TP, r] split like W's rows; A replicated
            set_tensor_model_parallel_attributes(module.lora_B, True, 0, 1)
            module.lora_A.sequence_parallel = module.sequence_parallel
        module._lora_row = row
        module._lora_scale = config.alpha / config.rank
        module._lora_base_forward = module.forward
        module.forward = types.MethodType(_lora_forward, module)
        adapted.append(name)
    if not adapted:
        raise ValueError(f"no module matched the LoRA targets {config.targets}")
    return adapted


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """Full (TP 1) Megatron state dict with every adapter merged into its base weight
    (``model``: a chunk or the list of this rank's chunks; collective)."""
    from mugv_train.parallel import full_state_dict

    chunks = list(model) if isinstance(model, list | tuple) else [model]
    deltas = []
    for module in (m for chunk in chunks for m in chunk.modules()):
        if hasattr(module, "lora_A"):
            delta = module._lora_scale * (module.lora_B @ module.lora_A)
            module.weight.add_(delta.to(module.weight.dtype))
            deltas.append((module, delta))
    try:
        full = full_state_dict(model)
    finally:
        for module, delta in deltas:
            module.weight.sub_(delta.to(module.weight.dtype))
    return {k: v for k, v in full.items() if ".lora_" not in k}


# -- export in the diffusers/peft layout -----------------------------------------------------
#: File name of an exported adapter (a folder given as the destination gets this name).
LORA_FILE = "lora.safetensors"
_COLUMN = ("linear_qkv", "linear_q", "linear_kv", "linear_fc1")  # B split over TP rows
_ROW = ("linear_proj", "linear_fc2")  # A split over TP columns
_KEY = re.compile(r"(?:module\.)*decoder\.layers\.(\d+)\.(.+)\.(linear_\w+)\.(lora_[AB])")


class LoRAExportError(ValueError):
    """Adapters that cannot be exported: no LoRA in the run, a checkpoint format or layout
    the exporter does not read, or adapter tensors that do not fit the model (the message
    names the keys)."""


def lora_state_dict(model) -> dict[str, torch.Tensor]:
    """This rank's adapter tensors (``decoder.layers.{i}.<...>.lora_A`` / ``lora_B``, layers
    under global numbers, tensor-parallel shards as held). ``model``: a chunk or a list."""
    from mugv_train.parallel._model import stage_state_dict

    return {k: v.detach().cpu() for k, v in stage_state_dict(model).items() if _KEY.fullmatch(k)}


def _merge_tp(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-TP-rank adapter tensors -> full ones: B of a column-parallel linear is split over
    its rows (dim 0), A of a row-parallel linear over its columns (dim 1); the other factor
    is replicated."""
    out = {}
    for key, value in shards[0].items():
        m = _KEY.fullmatch(key)
        assert m is not None  # the caller kept adapter keys only
        linear, which = m.group(3), m.group(4)
        split = (which == "lora_B" and linear in _COLUMN) or (which == "lora_A" and linear in _ROW)
        if split and len(shards) > 1:
            dim = 0 if which == "lora_B" else 1
            value = torch.cat([s[key] for s in shards], dim=dim)
        out[key] = value
    return out


def to_peft_layout(
    state: dict[str, torch.Tensor], num_heads: int, prefix: str = "dit"
) -> dict[str, torch.Tensor]:
    """Full (TP 1) Megatron adapter tensors -> ``<prefix>.<mugv-dit module>.lora_A.weight``
    [r, in] / ``lora_B.weight`` [out, r], the layout diffusers' ``load_lora_weights`` reads.

    The names and the row order of B follow mugv-train's weight conversion
    (``megatron_to_dit``: per-head [q_h, k_h, v_h] rows -> [q, k, v]), applied to B as to W;
    A needs no change (the inputs of every adapted linear are laid out alike)."""
    from mugv_train.parallel import megatron_to_dit

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    wrong = []
    for key, value in state.items():
        m = _KEY.fullmatch(key)
        if m is None or m.group(3) not in LORA_TARGETS:
            wrong.append(key)
            continue
        module = key.rsplit(".", 1)[0].removeprefix("module.")
        pairs.setdefault(module, {})[m.group(4)] = value
    if wrong:
        raise LoRAExportError(
            f"not mugv-train adapter tensors: {_names(wrong)}; expected "
            "decoder.layers.{i}.<attention or mlp>.<linear>.lora_A / lora_B"
        )
    out: dict[str, torch.Tensor] = {}
    ranks = set()
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise LoRAExportError(
                f"{module} has {sorted(pair)} only; lora_A and lora_B go together"
            )
        a, b = pair["lora_A"], pair["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoRAExportError(
                f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not form "
                "an [r, in] x [out, r] pair"
            )
        ranks.add(a.shape[0])
        ((name, b_dit),) = megatron_to_dit({f"{module}.weight": b}, num_heads).items()
        name = name.removesuffix(".weight")
        out[f"{prefix}.{name}.lora_A.weight"] = a.detach().float().cpu().contiguous()
        out[f"{prefix}.{name}.lora_B.weight"] = b_dit.detach().float().cpu().contiguous()
    if not out:
        raise LoRAExportError("no lora_A / lora_B tensors to export")
    if len(ranks) > 1:
        raise LoRAExportError(f"adapters of ranks {sorted(ranks)} mixed in one export")
    return out


def check_fits(tensors: dict[str, torch.Tensor], model_config: dict[str, Any], rank: int) -> None:
    """Every exported adapter names a linear of the DiT ``model_config`` describes (built on
    the meta device), with its widths and the run's rank; else a LoRAExportError naming
    the keys that do not fit (adapters of another model, preset or rank layout)."""
    from mugv_dit import DiTConfig, MUGDiT

    config = DiTConfig.from_dict(model_config)
    with torch.device("meta"):
        linears = {n: m for n, m in MUGDiT(config).named_modules() if isinstance(m, nn.Linear)}
    wrong = []
    for key, value in sorted(tensors.items()):
        name, which = key.removeprefix("dit.").split(".lora_")
        layer = linears.get(name)
        if layer is None:
            wrong.append(f"{key} (the DiT has no linear {name})")
            continue
        want = (rank, layer.in_features) if which == "A.weight" else (layer.out_features, rank)
        if tuple(value.shape) != want:
            wrong.append(f"{key} {tuple(value.shape)} (expected {want})")
    if wrong:
        raise LoRAExportError(
            f"adapters do not fit the run's DiT (depth {config.depth}, hidden_size "
            f"{config.hidden_size}, LoRA rank {rank}): {_names(wrong)}"
        )


def _names(keys: list[str], limit: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _read_checkpoint_adapters(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full adapter tensors and meta of a cpu-format checkpoint (a run folder, its
    ``checkpoints`` folder or one ``step_X`` folder), every file read with
    ``torch.load(weights_only=True)``."""
    from mugv_train.checkpointing import latest_checkpoint, read_torch_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not (path / "meta.json").is_file():
        for root in (path / "checkpoints", path):
            found = latest_checkpoint(root) if root.is_dir() else None
            if found is not None:
                path = found
                break
        else:
            raise LoRAExportError(
                f"{path} is not a mugv-train checkpoint: no meta.json, and no complete "
                "step_* folder under it or its checkpoints/ folder; give a run's output_dir "
                "or one of its checkpoints/step_* folders"
            )
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoRAExportError(f"{path / 'meta.json'} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise LoRAExportError(f"{path / 'meta.json'} is not a mugv-train checkpoint's meta")
    if not meta.get("lora"):
        raise LoRAExportError(
            f"checkpoint {path} was not trained with LoRA (its meta.json has no lora "
            "settings); its merged weights are the run's export/ folder"
        )
    if meta.get("format") == "torch_dist":
        raise LoRAExportError(
            f"checkpoint {path} is in the torch_dist format; LoRA export reads the cpu format "
            "(checkpoint.format=cpu, the default with LoRA)"
        )
    tp, pp = int(meta.get("tensor_parallel", 1)), int(meta.get("pipeline_parallel", 1))
    full: dict[str, torch.Tensor] = {}
    for p in range(pp):
        shards = []
        for t in range(tp):
            state = read_torch_file(path / f"model_tp{t}_pp{p}.pt")
            if not isinstance(state, dict):
                raise LoRAExportError(f"{path / f'model_tp{t}_pp{p}.pt'} is not a state dict")
            shards.append({k: v for k, v in state.items() if _KEY.fullmatch(k)})
        full.update(_merge_tp(shards))
    if not full:
        raise LoRAExportError(
            f"checkpoint {path} holds no lora_A / lora_B tensors although its meta.json "
            "names LoRA settings; the checkpoint is damaged, resume from another one"
        )
    return full, meta


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict) -> None:
    """safetensors ``save_file`` into a temporary file beside ``path``, then ``os.replace``
    (the file gets the umask's mode, as a plain ``open`` would give it)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def export_lora(
    source: str | os.PathLike[str] | nn.Module | list | dict,
    out: str | os.PathLike[str],
    *,
    num_heads: int | None = None,
    alpha: float | None = None,
) -> Path:
    """Write a run's LoRA adapters as ``lora.safetensors`` in the diffusers/peft layout.

    ``source``: a run's ``output_dir``, its ``checkpoints`` folder or one ``step_*`` folder
    (cpu format: every TP / PP part is read and merged); a model (chunk or list of chunks)
    of a one-process run; or a dict of full Megatron adapter tensors. ``out``: a
    ``.safetensors`` file or a folder (which gets ``LORA_FILE``). Models and dicts need
    ``num_heads`` (the DiT's heads) and ``alpha`` (``LoRAConfig.alpha``); a checkpoint
    carries both in its meta.json.

    The file holds ``dit.<module>.lora_A.weight`` [r, in] and ``lora_B.weight`` [out, r]
    (fp32) and the metadata ``lora_alpha`` and ``lora_rank`` plus diffusers'
    ``lora_adapter_metadata`` ({"dit.r", "dit.lora_alpha", "dit.target_modules"}), so
    ``MUGVPipeline.load_lora_weights(path)`` (or diffusers' loader) applies
    y = W x + (alpha / r) B A x: the merged model's output. Written atomically.
    """
    model_config: dict[str, Any] | None = None
    lora_rank: int | None = None
    if isinstance(source, str | os.PathLike):
        state, meta = _read_checkpoint_adapters(Path(source))
        model_config, lora_rank = meta["model"], int(meta["lora"]["rank"])
        num_heads = int(meta["model"]["num_heads"]) if num_heads is None else num_heads
        alpha = float(meta["lora"]["alpha"]) if alpha is None else alpha
    elif isinstance(source, dict):
        state = dict(source)
    elif isinstance(source, nn.Module | list | tuple):
        from megatron.core import parallel_state as ps

        if ps.model_parallel_is_initialized() and (
            ps.get_tensor_model_parallel_world_size() > 1
            or ps.get_pipeline_model_parallel_world_size() > 1
        ):
            raise LoRAExportError(
                "export_lora(model) reads a one-process model; with tensor or pipeline "
                "parallelism export from the checkpoint folder (every part is merged)"
            )
        state = lora_state_dict(source)
        chunk: Any = source if isinstance(source, nn.Module) else source[0]
        if hasattr(chunk, "dit_config"):
            model_config = chunk.dit_config.to_dict()
            num_heads = chunk.dit_config.num_heads if num_heads is None else num_heads
        if alpha is None:
            scales = {m._lora_scale * m.lora_A.shape[0] for m in chunk.modules()
                      if hasattr(m, "lora_A")}  # fmt: skip
            alpha = scales.pop() if len(scales) == 1 else None
    else:
        raise TypeError(
            "source must be a checkpoint folder, a model or a dict of adapter tensors, got "
            f"{type(source).__name__}"
        )
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"num_heads must be the DiT's head count (an int >= 1), got {num_heads!r}")
    if (
        not isinstance(alpha, int | float)
        or isinstance(alpha, bool)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ValueError(f"alpha must be LoRAConfig.alpha (a finite number > 0), got {alpha!r}")
    if not isinstance(out, str | os.PathLike):
        raise TypeError(f"out must be a file or folder path, got {type(out).__name__}")
    tensors = to_peft_layout(state, num_heads)
    rank = next(v.shape[0] for k, v in tensors.items() if k.endswith("lora_A.weight"))
    if model_config is not None:
        check_fits(tensors, model_config, rank if lora_rank is None else lora_rank)
    modules = sorted({k.removeprefix("dit.").split(".lora_")[0] for k in tensors})
    path = Path(out)
    if path.suffix != ".safetensors":
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(
                f"out {path} exists and is not a folder; give a folder or a .safetensors path"
            )
        path = path / LORA_FILE
    elif path.is_dir():
        raise IsADirectoryError(f"out {path} is a folder; give a file name or its parent folder")
    adapter_meta = {"dit.r": rank, "dit.lora_alpha": float(alpha), "dit.target_modules": modules}
    metadata = {
        "format": "pt",
        "lora_alpha": json.dumps(float(alpha)),
        "lora_rank": str(rank),
        "lora_adapter_metadata": json.dumps(adapter_meta, sort_keys=True),
    }
    _atomic_save_file(tensors, path, metadata)
    return path
