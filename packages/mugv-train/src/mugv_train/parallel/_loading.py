"""Load mugv-dit / official weights shard by shard (reference §G.6): each rank reads only
the tensors of its pipeline stages' layers, and of each only its tensor-parallel slice.

Sources: a mugv-dit folder (``config.json`` + ``*.safetensors``, one file or diffusers'
shards) is read with safetensors' ``get_slice`` (only the slice's bytes are read); an
official ``dit.pt`` (a file, or a folder holding one) is memory-mapped with
``torch.load(mmap=True, weights_only=True)``, so only the pages of the slices are touched.
A Hub id is first resolved to its files in the Hugging Face cache (downloaded there when
online, the cache alone under ``HF_HUB_OFFLINE=1``; :func:`resolve_streamable`, through
mugv-dit's own resolver), then read from there the same way.

The slices equal :func:`~mugv_train.parallel.shard_for_tensor_parallel` of
:func:`~mugv_train.parallel.dit_to_megatron` of the full state: a column-parallel
``linear_qkv`` rank holds heads [r n, (r + 1) n) of q, k and v (n = N / TP), read as three
row ranges of the (3, N, K) official layout and regrouped per head; ``linear_kv`` likewise
with two; other column-parallel tensors are a row range, row-parallel weights a column range.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from mugv_train.parallel._convert import _regroup, _split_dim, megatron_key_to_dit

#: DiTConfig fields that decide the tensors' shapes (compared with a folder's config.json).
_SHAPE_FIELDS = ("depth", "hidden_size", "num_heads", "in_channels", "text_dim", "patch_size")


class _Source:
    """Tensors of a weight file set by mugv-dit key, read as slices."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.path = path
        self._files: dict[str, Any] = {}
        self._where: dict[str, str] = {}
        self._mmap: dict[str, torch.Tensor] | None = None
        if path.is_dir() and sorted(path.glob("*.safetensors")):
            from safetensors import safe_open

            for f in sorted(path.glob("*.safetensors")):
                handle = safe_open(str(f), framework="pt")
                self._files[f.name] = handle
                for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    self._where[key] = f.name
            return
        pt = path / "dit.pt" if path.is_dir() else path
        if pt.suffix != ".pt" or not pt.exists():
            raise FileNotFoundError(f"{path} holds neither *.safetensors nor dit.pt")
        state = torch.load(pt, map_location="cpu", mmap=True, weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # official training checkpoints nest the weights
        if not isinstance(state, dict):
            raise ValueError(f"{pt} does not hold a state dict")
        self._mmap = state

    def names(self) -> set[str]:
        return set(self._mmap) if self._mmap is not None else set(self._where)

    def read(self, key: str, rows: slice | None = None, cols: slice | None = None):
        """``tensor[rows]`` or ``tensor[:, cols]`` (a copy; only those bytes are read)."""
        if self._mmap is not None:
            t = self._mmap[key]
            t = t if rows is None else t[rows]
            t = t if cols is None else t[:, cols]
            return t.clone()
        sl = self._files[self._where[key]].get_slice(key)
        if rows is not None:
            return sl[rows]
        if cols is not None:
            return sl[:, cols]
        return sl[:]

    def shape(self, key: str) -> tuple[int, ...]:
        if self._mmap is not None:
            return tuple(self._mmap[key].shape)
        return tuple(self._files[self._where[key]].get_slice(key).get_shape())


def can_stream(path: str) -> bool:
    """Whether ``path`` is a local mugv-dit folder or official ``dit.pt`` this module reads."""
    p = Path(path)
    if p.is_dir():
        return bool(sorted(p.glob("*.safetensors"))) or (p / "dit.pt").exists()
    return p.suffix == ".pt" and p.exists()


def resolve_streamable(source: str) -> str | None:
    """The local path :func:`load_sharded` reads for ``source``: the path itself when it is
    a local mugv-dit folder / ``dit.pt``, or for a Hub repo id the folder (or ``dit.pt``) of
    its files in the Hugging Face cache, fetched by mugv-dit's resolver (only the files of one
    format; offline mode and the cache honoured). None when the files are in a format this
    module does not read (the caller loads them in full). Missing files raise mugv-dit's
    errors, naming the repo and the fix."""
    if can_stream(source):
        return source
    from mugv_dit import resolve_pretrained

    kind, paths = resolve_pretrained(source)
    local = str(Path(paths[1]).parent) if kind == "legacy" else paths[0]
    return local if can_stream(local) else None


def check_folder_config(path: str | Path, model) -> None:
    """A mugv-dit folder's ``config.json`` must describe the run's model (shape fields)."""
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        return  # official dit.pt: the tensors' shapes are checked one by one
    data = json.loads(cfg.read_text())
    want = model.to_dict()
    diff = {
        k: (data[k], want[k])
        for k in _SHAPE_FIELDS
        if k in data
        and list(data[k] if isinstance(data[k], list) else [data[k]])
        != list(want[k] if isinstance(want[k], list) else [want[k]])
    }
    if diff:
        desc = ", ".join(f"{k} {a} there vs {b} here" for k, (a, b) in diff.items())
        raise ValueError(
            f"init_from {path} holds another model ({desc}). Fix model.* or init_from."
        )


def read_megatron_shard(
    source: _Source | str | Path,
    keys: Iterable[str],
    *,
    num_heads: int,
    tp_rank: int,
    tp_size: int,
) -> dict[str, torch.Tensor]:
    """The TP shard ``tp_rank`` of ``tp_size`` of each full Megatron key in ``keys`` (global
    layer numbers), read from a mugv-dit / official source without loading the rest."""
    src = source if isinstance(source, _Source) else _Source(source)
    have = src.names()
    out: dict[str, torch.Tensor] = {}
    missing = []
    for key in keys:
        name = megatron_key_to_dit(key)
        if name not in have:
            missing.append(name)
            continue
        groups = 3 if ".linear_qkv." in key else 2 if ".linear_kv." in key else 1
        dim = _split_dim(key) if tp_size > 1 else None
        if groups > 1:  # (groups, N, K) rows: this rank's heads of every group, per head
            per_group = src.shape(name)[0] // groups
            n = per_group // tp_size
            value = torch.cat(
                [
                    src.read(name, rows=slice(g * per_group + tp_rank * n,
                                              g * per_group + (tp_rank + 1) * n))
                    for g in range(groups)
                ]
            )  # fmt: skip
            value = _regroup(value, groups, num_heads // tp_size, True)
        elif dim is None:
            value = src.read(name)
        elif dim == 1:
            n = src.shape(name)[1] // tp_size
            value = src.read(name, cols=slice(tp_rank * n, (tp_rank + 1) * n))
        else:
            n = src.shape(name)[0] // tp_size
            value = src.read(name, rows=slice(tp_rank * n, (tp_rank + 1) * n))
        out[key] = value
    if missing:
        raise ValueError(
            f"{src.path} lacks {len(missing)} tensor(s) the model needs, e.g. {missing[:5]}: "
            "is it a MUG-DiT checkpoint of this size?"
        )
    return out


def load_sharded(model, path: str | Path, dit_config) -> None:
    """Load a mugv-dit folder / official ``dit.pt`` into this rank's chunks (``model``: a
    chunk or the list of this rank's virtual-stage chunks), reading only this rank's layers
    and its TP slices. Strict: shape mismatches and missing tensors raise ``ValueError``."""
    from megatron.core import parallel_state as ps

    from mugv_train.parallel._model import _chunks, _to_global

    check_folder_config(path, dit_config)
    src = _Source(path)
    blocks = {int(m.group(1)) for k in src.names() if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks and max(blocks) + 1 != dit_config.depth:
        raise ValueError(
            f"init_from {path} holds {max(blocks) + 1} blocks; the run's model.depth is "
            f"{dit_config.depth}. Fix model.* or init_from."
        )
    rank = ps.get_tensor_model_parallel_rank()
    size = ps.get_tensor_model_parallel_world_size()
    for chunk in _chunks(model):
        own = {k: v for k, v in chunk.state_dict().items() if not k.endswith("_extra_state")}
        by_layer: dict[int, list[str]] = {}
        for k in own:  # one layer at a time: bounded reads, loaded as they arrive
            m = re.match(r"decoder\.layers\.(\d+)\.", k)
            by_layer.setdefault(int(m.group(1)) if m else -1, []).append(k)
        for local_keys in by_layer.values():
            global_keys = {_to_global(k, chunk.layer_offset): k for k in local_keys}
            shard = read_megatron_shard(
                src, global_keys, num_heads=dit_config.num_heads, tp_rank=rank, tp_size=size
            )
            local = {global_keys[g]: v for g, v in shard.items()}
            bad = [
                f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in local.items()
                if v.shape != own[k].shape
            ]
            if bad:
                raise ValueError(
                    f"init_from {path} does not fit this model (different DiTConfig?): "
                    + "; ".join(bad[:5])
                )
            chunk.load_state_dict(local, strict=False)


# -- a fresh initialisation, shard by shard --------------------------------------------------
_DATA_GET = torch.Tensor.data.__get__
#: In-place initialisers whose result does not depend on the tensor's previous values.
_OVERWRITES = frozenset(
    [
        "uniform_",
        "normal_",
        "zero_",
        "zeros_",
        "ones_",
        "fill_",
        "constant_",
        "xavier_uniform_",
        "xavier_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "trunc_normal_",
    ]
)
_RNG_FACTORIES = ("randn", "rand", "randint", "randperm", "normal", "randn_like", "rand_like")


class _InitRecorder(TorchFunctionMode):
    """Records, on the meta device, the calls that initialise a model's tensors: in-place
    calls on a tensor (``nn.init.*``, ``Tensor.uniform_`` ...; the outermost call only, as
    the mode does not see the calls inside a handled one), ``view`` / ``reshape`` of them,
    and random factories (which draw from the generator)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple] = []
        self.views: dict[int, tuple[torch.Tensor, tuple]] = {}
        self.keep: list[torch.Tensor] = []  # ids stay unique while recorded
        self.derived: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        first = args[0] if args else kwargs.get("tensor")
        if name in ("view", "reshape") and isinstance(first, torch.Tensor):
            self.views[id(out)] = (first, tuple(args[1:]))
            self.keep.append(out)
        elif func == _DATA_GET and isinstance(out, torch.Tensor):  # p.data: the same values
            self.views[id(out)] = (first, None)
            self.keep.append(out)
        elif name.endswith("_") and not name.startswith("__") and isinstance(first, torch.Tensor):
            if id(first) in self.derived:  # e.g. a slice of a parameter: not tracked
                raise _NotReplayable(f"{name} on a tensor derived from another")
            values = (*args[1:], *(v for k, v in kwargs.items() if k != "tensor"))
            rest = [a for a in values if isinstance(a, torch.Tensor)]
            if rest:  # a value from another tensor: not replayable from the generator alone
                raise _NotReplayable(f"{name} with a tensor argument")
            a = tuple(args[1:]) if args and args[0] is first else ()
            kw = {k: v for k, v in kwargs.items() if k != "tensor"}
            self.ops.append(("inplace", func, first, a, kw))
            self.keep.append(first)
        elif name in _RNG_FACTORIES and isinstance(out, torch.Tensor):
            self.ops.append(("factory", func, args, kwargs))
        elif isinstance(first, torch.Tensor) and isinstance(out, torch.Tensor):
            self.derived.add(id(out))  # slices, transposes, arithmetic: refused if written to
            self.keep.append(out)
        return out


class _NotReplayable(RuntimeError):
    pass


def init_sharded(model, dit_config, seed: int) -> bool:
    """Load mugv-dit's fresh initialisation (the weights of ``MUGDiT(dit_config)`` built on
    CPU after ``torch.manual_seed(seed)``) into this rank's chunks, computing the full
    tensors one at a time and keeping only this rank's TP slices of its layers.

    The model is built on the meta device while its initialisation calls are recorded;
    they are replayed on CPU in order, from the same seed, so every random draw is the
    original's. A tensor this rank holds gets its own buffer from its last overwriting call
    (e.g. the xavier init after the constructor's default init) to its last call, then
    only its TP slice is kept; every other call draws into a scratch buffer of its shape.
    Peak memory: this rank's shards, one scratch buffer per distinct tensor shape (about
    one block) and about one full tensor (measured for the 1b width, 8 blocks, as TP rank
    1 of 4: 27 % of the full model besides the shards, most of it the scratch).
    Returns False (nothing loaded) when the initialisation uses a call that cannot be
    replayed this way; the caller then builds the model in full."""
    from megatron.core import parallel_state as ps

    from mugv_dit import MUGDiT
    from mugv_train.parallel._convert import dit_to_megatron, shard_for_tensor_parallel
    from mugv_train.parallel._model import _chunks, _to_global

    recorder = _InitRecorder()
    try:
        with torch.device("meta"), recorder:
            dit = MUGDiT(dit_config)
    except _NotReplayable:
        return False
    names = {id(p): n for n, p in dit.named_parameters()}

    def resolve(t: torch.Tensor) -> tuple[str | None, list[tuple]]:
        chain = []
        while id(t) not in names and id(t) in recorder.views:
            t, view = recorder.views[id(t)]
            chain.append(view)
        return names.get(id(t)), chain[::-1]

    chunks = _chunks(model)
    needed = {
        _to_global(k, c.layer_offset)
        for c in chunks
        for k in c.state_dict()
        if not k.endswith("_extra_state")
    }
    touched: dict[str, int] = {}  # the last call on each parameter
    start: dict[str, int] = {}  # its first call, or its last call that overwrites it all
    for i, op in enumerate(recorder.ops):
        if op[0] == "inplace":
            name, _ = resolve(op[2])
            if name is not None:
                touched[name] = i
                start.setdefault(name, i)
                if getattr(op[1], "__name__", "") in _OVERWRITES:
                    start[name] = i
    params = dict(dit.named_parameters())
    untouched = [n for n in params if n not in touched]
    if untouched:  # a value set outside the recorded calls (e.g. from a factory)
        return False
    heads = dit_config.num_heads
    rank = ps.get_tensor_model_parallel_rank()
    size = ps.get_tensor_model_parallel_world_size()
    own = {n for n in params if set(dit_to_megatron({n: params[n]}, heads)) & needed}
    buffers: dict[str, torch.Tensor] = {}
    scratch: dict[tuple, torch.Tensor] = {}
    shards: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, op in enumerate(recorder.ops):
            if op[0] == "factory":
                _, func, args, kwargs = op
                func(*args, **{**kwargs, "device": "cpu"})  # the same draw, dropped
                continue
            _, func, target, args, kwargs = op
            name, chain = resolve(target)
            if name in own and i >= start[name]:  # earlier calls only draw: scratch
                real = buffers.setdefault(name, torch.empty(params[name].shape))
            else:
                shape = tuple(target.shape) if name is None else tuple(params[name].shape)
                real = scratch.setdefault(
                    (shape, target.dtype), torch.empty(shape, dtype=target.dtype)
                )
            for view in chain if name is not None else []:
                real = real if view is None else real.view(*view)
            with torch.no_grad():
                func(real, *args, **kwargs)
            if name in own and touched[name] == i:  # final: keep this rank's slice only
                full = dit_to_megatron({name: buffers.pop(name)}, heads)
                shards.update(shard_for_tensor_parallel(full, rank, size))
    for chunk in chunks:
        local = {}
        for k in chunk.state_dict():
            g = _to_global(k, chunk.layer_offset)
            if g in shards:
                local[k] = shards[g]
        missing, _ = chunk.load_state_dict(local, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing:
            raise RuntimeError(f"the fresh initialisation left {missing[:5]} unset")
    return True
