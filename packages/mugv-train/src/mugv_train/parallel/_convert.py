"""State-dict conversion between the mugv-dit / official layout and Megatron's (§G.6).

Renames (official -> Megatron): ``t_embedder`` -> ``timestep_embedder``, ``t_block`` ->
``timestep_block``, ``y_embedder.y_proj`` -> ``context_embedder.proj``,
``final_layer.scale_shift_table`` -> ``final_layer.scale_shift_table.bias``,
``blocks.{i}.`` -> ``decoder.layers.{i}.`` with ``attn`` -> ``self_attention`` (``qkv`` ->
``linear_qkv``, ``proj`` -> ``linear_proj``, ``{q,k}_norm`` -> ``{q,k}_layernorm``),
``cross_attn_norm`` -> ``pre_cross_attn_layernorm``, ``cross_attn`` -> ``cross_attention``
(``q_linear`` -> ``linear_q``, ``kv_linear`` -> ``linear_kv``), ``mlp.fc{1,2}`` ->
``mlp.linear_fc{1,2}``, ``blocks.{i}.scale_shift_table`` -> ``...scale_shift_table.bias``.

Row re-ordering: qkv rows go from (3, N, K) to per-head (N, 3, K) = [q_h, k_h, v_h]; kv rows
from (2, N, K) to (N, 2, K). Both are permutations, so the round trip is exact.

Tensor-parallel sharding: linear_qkv, linear_q, linear_kv and linear_fc1 split along dim 0
(weight and bias); linear_proj and linear_fc2 weights along dim 1; everything else replicated.
torch_dist checkpoints stack ``decoder.layers.*`` over the layer dim (:func:`stack_layers`).
"""

from __future__ import annotations

import re

import torch

_TOP_LEVEL = [
    ("t_embedder.", "timestep_embedder."),
    ("t_block.", "timestep_block."),
    ("y_embedder.y_proj.", "context_embedder.proj."),
    ("fps_embedder.", "fps_embedder."),
    ("x_embedder.", "x_embedder."),
    ("final_layer.linear.", "final_layer.linear."),
]
_BLOCK = [
    ("attn.qkv.", "self_attention.linear_qkv."),
    ("attn.proj.", "self_attention.linear_proj."),
    ("attn.q_norm.", "self_attention.q_layernorm."),
    ("attn.k_norm.", "self_attention.k_layernorm."),
    ("cross_attn_norm.", "pre_cross_attn_layernorm."),
    ("cross_attn.q_linear.", "cross_attention.linear_q."),
    ("cross_attn.kv_linear.", "cross_attention.linear_kv."),
    ("cross_attn.q_norm.", "cross_attention.q_layernorm."),
    ("cross_attn.k_norm.", "cross_attention.k_layernorm."),
    ("cross_attn.proj.", "cross_attention.linear_proj."),
    ("mlp.fc1.", "mlp.linear_fc1."),
    ("mlp.fc2.", "mlp.linear_fc2."),
]
_DROPPED = ("y_embedder.y_embedding", "context_embedder.drop_emb")
_COLUMN = ("linear_qkv", "linear_q", "linear_kv", "linear_fc1")
_ROW = ("linear_proj", "linear_fc2")


def _regroup(t: torch.Tensor, groups: int, heads: int, to_megatron: bool) -> torch.Tensor:
    """Re-order rows between (groups, heads, K) and per-head (heads, groups, K)."""
    rows = t.shape[0]
    k = rows // (groups * heads)
    if k * groups * heads != rows:
        raise ValueError(f"{rows} rows cannot be split into {groups} x {heads} heads")
    rest = t.shape[1:]
    if to_megatron:
        return t.reshape(groups, heads, k, *rest).transpose(0, 1).reshape(rows, *rest).contiguous()
    return t.reshape(heads, groups, k, *rest).transpose(0, 1).reshape(rows, *rest).contiguous()


def dit_to_megatron(state: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """mugv-dit / official ``dit.pt`` state dict -> :class:`MegatronMUGDiT` state dict (TP 1)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_DROPPED):
            continue
        m = re.match(r"blocks\.(\d+)\.(.*)", key)
        if m:
            i, rest = m.groups()
            if rest == "scale_shift_table":
                new = "scale_shift_table.bias"
            else:
                new = next((n + rest[len(o) :] for o, n in _BLOCK if rest.startswith(o)), None)
                if new is None:
                    raise KeyError(f"no Megatron name for block key {key!r}")
            if rest.startswith("attn.qkv."):
                value = _regroup(value, 3, num_heads, True)
            elif rest.startswith("cross_attn.kv_linear."):
                value = _regroup(value, 2, num_heads, True)
            out[f"decoder.layers.{i}.{new}"] = value
            continue
        if key in ("start_token", "end_token"):
            out[key] = value
        elif key == "final_layer.scale_shift_table":
            out["final_layer.scale_shift_table.bias"] = value
        else:
            new = next((n + key[len(o) :] for o, n in _TOP_LEVEL if key.startswith(o)), None)
            if new is None:
                raise KeyError(f"no Megatron name for key {key!r}")
            out[new] = value
    return out


def megatron_to_dit(state: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """:class:`MegatronMUGDiT` state dict (TP 1, unstacked) -> mugv-dit / official layout.

    ``_extra_state`` entries and the caption-dropout buffer are dropped (§G.6).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("_extra_state") or key.startswith(_DROPPED):
            continue
        m = re.match(r"decoder\.layers\.(\d+)\.(.*)", key)
        if m:
            i, rest = m.groups()
            if rest == "scale_shift_table.bias":
                new = "scale_shift_table"
            else:
                new = next((o + rest[len(n) :] for o, n in _BLOCK if rest.startswith(n)), None)
                if new is None:
                    raise KeyError(f"no mugv-dit name for Megatron key {key!r}")
            if rest.startswith("self_attention.linear_qkv."):
                value = _regroup(value, 3, num_heads, False)
            elif rest.startswith("cross_attention.linear_kv."):
                value = _regroup(value, 2, num_heads, False)
            out[f"blocks.{i}.{new}"] = value
            continue
        if key in ("start_token", "end_token"):
            out[key] = value
        elif key == "final_layer.scale_shift_table.bias":
            out["final_layer.scale_shift_table"] = value
        else:
            new = next((o + key[len(n) :] for o, n in _TOP_LEVEL if key.startswith(n)), None)
            if new is None:
                raise KeyError(f"no mugv-dit name for Megatron key {key!r}")
            out[new] = value
    return out


def megatron_key_to_dit(key: str) -> str:
    """The mugv-dit / official name of one Megatron key (names only; no re-ordering)."""
    m = re.match(r"decoder\.layers\.(\d+)\.(.*)", key)
    if m:
        i, rest = m.groups()
        if rest == "scale_shift_table.bias":
            return f"blocks.{i}.scale_shift_table"
        new = next((o + rest[len(n) :] for o, n in _BLOCK if rest.startswith(n)), None)
        if new is None:
            raise KeyError(f"no mugv-dit name for Megatron key {key!r}")
        return f"blocks.{i}.{new}"
    if key in ("start_token", "end_token"):
        return key
    if key == "final_layer.scale_shift_table.bias":
        return "final_layer.scale_shift_table"
    new = next((o + key[len(n) :] for o, n in _TOP_LEVEL if key.startswith(n)), None)
    if new is None:
        raise KeyError(f"no mugv-dit name for Megatron key {key!r}")
    return new


def _split_dim(key: str) -> int | None:
    parts = key.split(".")
    if len(parts) < 2:
        return None
    module, leaf = parts[-2], parts[-1]
    if module in _COLUMN and leaf in ("weight", "bias"):
        return 0
    if module in _ROW and leaf == "weight":
        return 1
    return None


def shard_for_tensor_parallel(
    state: dict[str, torch.Tensor], rank: int, size: int
) -> dict[str, torch.Tensor]:
    """The slice of a full (TP 1) Megatron state dict that tensor-parallel ``rank`` holds."""
    out = {}
    for key, value in state.items():
        dim = _split_dim(key) if isinstance(value, torch.Tensor) else None
        if dim is None or size == 1:
            out[key] = value
            continue
        if value.shape[dim] % size:
            raise ValueError(
                f"{key} {tuple(value.shape)} cannot be split {size} ways along dim {dim}"
            )
        out[key] = value.chunk(size, dim=dim)[rank].clone()
    return out


def merge_tensor_parallel(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`shard_for_tensor_parallel`: concatenate per-rank state dicts."""
    out = {}
    for key, value in shards[0].items():
        dim = _split_dim(key) if isinstance(value, torch.Tensor) else None
        out[key] = (
            value
            if dim is None or len(shards) == 1
            else torch.cat([s[key] for s in shards], dim=dim)
        )
    return out


def stack_layers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``decoder.layers.{i}.X`` -> ``decoder.layers.X`` stacked over i (torch_dist layout)."""
    out: dict[str, torch.Tensor] = {}
    per_key: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        m = re.match(r"decoder\.layers\.(\d+)\.(.*)", key)
        if m and isinstance(value, torch.Tensor):
            per_key.setdefault(m.group(2), {})[int(m.group(1))] = value
        else:
            out[key] = value
    for rest, layers in per_key.items():
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"decoder.layers.*.{rest} has layers {sorted(layers)}, not 0..N-1")
        out[f"decoder.layers.{rest}"] = torch.stack([layers[i] for i in range(len(layers))])
    return out


def unstack_layers(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Inverse of :func:`stack_layers`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.match(r"decoder\.layers\.(?!\d+\.)(.*)", key)
        if m and isinstance(value, torch.Tensor):
            if value.shape[0] != num_layers:
                raise ValueError(f"{key} stacks {value.shape[0]} layers, expected {num_layers}")
            for i in range(num_layers):
                out[f"decoder.layers.{i}.{m.group(1)}"] = value[i].clone()
        else:
            out[key] = value
    return out
