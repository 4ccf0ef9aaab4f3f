"""LoRA at inference: diffusers' ``load_lora_weights`` / ``set_adapters`` / ``fuse_lora`` on
`MUGVPipeline`'s DiT, for adapters in the diffusers/peft layout or in mugv-train's.

Layouts accepted by ``load_lora_weights`` (a file, a folder, a Hub repo or a dict):

- diffusers/peft: ``dit.<module>.lora_A.weight`` [r, in] and ``dit.<module>.lora_B.weight``
  [out, r] with the mugv-dit module names (``blocks.{i}.attn.qkv``, ...); the prefix
  ``transformer.`` is read as ``dit.``. The scale alpha / r comes from the file's
  ``lora_adapter_metadata`` (diffusers' ``save_lora_weights`` writes it), else alpha = r.
- mugv-train (Megatron names, tensor-parallel 1, as its ``full_state_dict`` holds them):
  ``decoder.layers.{i}.self_attention.linear_qkv.lora_A`` / ``lora_B`` and the same for
  ``linear_proj``, ``cross_attention.linear_{q,kv,proj}``, ``mlp.linear_fc{1,2}``. They are
  renamed to mugv-dit modules and the rows of B re-ordered from Megatron's per-head
  [q_h, k_h, v_h] (and [k_h, v_h]) to mugv-dit's [q, k, v] (and [k, v]), as
  mugv-train's weight conversion does for W (§G.6). A needs no change: the inputs of every
  adapted linear are laid out alike. alpha comes from the safetensors metadata
  ``lora_alpha`` (mugv-train's ``LoRAConfig.alpha``, official 32) or ``lora_alpha=``.

y = W x + (alpha / r) B A x in both, so an adapter loaded unfused equals the model with
W + (alpha / r) B A merged into it (what mugv-train's merged export writes).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.lora_base import LoraBaseMixin

#: Megatron module name (inside ``decoder.layers.{i}.``) -> mugv-dit module name (inside
#: ``blocks.{i}.``), and the row groups of B to re-order (qkv: 3, kv: 2).
MEGATRON_TO_DIT: dict[str, tuple[str, int]] = {
    "self_attention.linear_qkv": ("attn.qkv", 3),
    "self_attention.linear_proj": ("attn.proj", 1),
    "cross_attention.linear_q": ("cross_attn.q_linear", 1),
    "cross_attention.linear_kv": ("cross_attn.kv_linear", 2),
    "cross_attention.linear_proj": ("cross_attn.proj", 1),
    "mlp.linear_fc1": ("mlp.fc1", 1),
    "mlp.linear_fc2": ("mlp.fc2", 1),
}
_MEGATRON_KEY = re.compile(r"(?:module\.)?decoder\.layers\.(\d+)\.(.+)\.(lora_[AB])(?:\.weight)?")
_PEFT_KEY = re.compile(r"(.+)\.(lora_[AB])\.weight")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _per_head_to_grouped(b: torch.Tensor, groups: int, heads: int) -> torch.Tensor:
    """Rows (heads, groups, K) -> (groups, heads, K): Megatron's per-head order to ours."""
    rows, r = b.shape
    k = rows // (groups * heads)
    if k * groups * heads != rows:
        raise ValueError(f"{rows} rows of lora_B cannot be split into {groups} x {heads} heads")
    return b.reshape(heads, groups, k, r).transpose(0, 1).reshape(rows, r).contiguous()


def convert_megatron_lora(
    state: Mapping[str, torch.Tensor], *, num_heads: int, prefix: str = "dit"
) -> dict[str, torch.Tensor]:
    """mugv-train adapter tensors (Megatron names, TP 1) -> the diffusers/peft layout."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        m = _MEGATRON_KEY.fullmatch(key)
        if m is None or m.group(2) not in MEGATRON_TO_DIT:
            unknown.append(key)
            continue
        layer, module, which = m.groups()
        name, groups = MEGATRON_TO_DIT[module]
        if which == "lora_B" and groups > 1:
            value = _per_head_to_grouped(value, groups, num_heads)
        out[f"{prefix}.blocks.{layer}.{name}.{which}.weight"] = value
    if unknown:
        raise ValueError(
            f"keys not in mugv-train's LoRA layout: {_names(unknown)}; expected "
            "decoder.layers.{i}.<linear>.lora_A / lora_B with <linear> one of "
            f"{sorted(MEGATRON_TO_DIT)}"
        )
    return out


def _names(keys: list[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def is_megatron_lora(state: Mapping[str, Any]) -> bool:
    return any(_MEGATRON_KEY.fullmatch(k) for k in state)


def check_lora_fits(dit: torch.nn.Module, state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Every adapter names a linear of ``dit`` with matching widths and one rank; returns
    the rank. Otherwise a ValueError naming the keys that do not fit (a LoRA for another
    model, another preset, or a mixed rank layout)."""
    modules = dict(dit.named_modules())
    wrong: list[str] = []
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _PEFT_KEY.fullmatch(key)
        if m is None or not m.group(1).startswith(prefix + "."):
            wrong.append(f"{key} (not a {prefix}.<module>.lora_A/lora_B.weight key)")
            continue
        pairs.setdefault(m.group(1)[len(prefix) + 1 :], {})[m.group(2)] = value
    ranks = set()
    for name, pair in sorted(pairs.items()):
        layer = modules.get(name)
        layer = getattr(layer, "base_layer", layer)  # already wrapped by an earlier adapter
        if not isinstance(layer, torch.nn.Linear):
            wrong.append(f"{prefix}.{name} (the DiT has no linear layer of that name)")
            continue
        if set(pair) != {"lora_A", "lora_B"}:
            wrong.append(f"{prefix}.{name} (lora_A and lora_B must come together)")
            continue
        a, b = pair["lora_A"], pair["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            wrong.append(f"{prefix}.{name} (A {tuple(a.shape)} and B {tuple(b.shape)} disagree)")
            continue
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
            wrong.append(
                f"{prefix}.{name} (adapter {b.shape[0]} x {a.shape[1]} vs layer "
                f"{layer.out_features} x {layer.in_features})"
            )
            continue
        ranks.add(a.shape[0])
    if not wrong and len(ranks) > 1:
        wrong.append(f"ranks {sorted(ranks)} mixed in one adapter")
    if wrong:
        cfg = dit.config
        raise ValueError(
            f"the LoRA does not fit this DiT (depth {cfg.depth}, hidden_size "
            f"{cfg.hidden_size}): {_names(wrong)}. Is it for another model or preset?"
        )
    if not pairs:
        raise ValueError("the LoRA state dict holds no lora_A / lora_B tensors")
    return ranks.pop()


def _read_metadata(source: Any, kwargs: Mapping[str, Any]) -> dict[str, str]:
    """safetensors header metadata of a local LoRA file (mugv-train writes ``lora_alpha``)."""
    if isinstance(source, Mapping):
        return {}
    path = Path(source)
    if path.is_dir():
        path = (
            path / (kwargs.get("subfolder") or "") / (kwargs.get("weight_name") or LORA_WEIGHT_NAME)
        )
    if not path.is_file() or path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


class MUGVLoraLoaderMixin(LoraBaseMixin):
    """diffusers' LoRA loading for the ``dit`` component of `MUGVPipeline`."""

    _lora_loadable_modules = ["dit"]  # noqa: RUF012
    transformer_name = "dit"

    @classmethod
    def lora_state_dict(
        cls, pretrained_model_name_or_path_or_dict: str | os.PathLike[str] | dict, **kwargs: Any
    ) -> Any:
        """Adapter tensors (a file, folder, Hub repo or dict), read as safetensors only."""
        from diffusers.loaders.lora_base import _fetch_state_dict

        return_metadata = kwargs.pop("return_lora_metadata", False)
        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, os.PathLike):
            source = str(source)
        if isinstance(source, str) and Path(source).is_file():
            kwargs.setdefault("weight_name", Path(source).name)
            source = str(Path(source).parent)
        state, metadata = _fetch_state_dict(
            pretrained_model_name_or_path_or_dict=source,
            weight_name=kwargs.pop("weight_name", None),
            use_safetensors=True,
            local_files_only=kwargs.pop("local_files_only", None),
            cache_dir=kwargs.pop("cache_dir", None),
            force_download=kwargs.pop("force_download", False),
            proxies=kwargs.pop("proxies", None),
            token=kwargs.pop("token", None),
            revision=kwargs.pop("revision", None),
            subfolder=kwargs.pop("subfolder", None),
            user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
            allow_pickle=False,  # never unpickle: safetensors only
        )
        return (state, metadata) if return_metadata else state

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike[str] | dict,
        adapter_name: str | None = None,
        hotswap: bool = False,
        *,
        lora_alpha: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Load a LoRA into the DiT (unfused; see ``set_adapters`` / ``fuse_lora``).

        mugv-train adapters (Megatron names) are converted first; ``lora_alpha`` overrides
        the alpha read from the file (default: its ``lora_alpha`` metadata, else alpha = r).
        """
        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, dict):
            source = dict(source)
        header = _read_metadata(source, kwargs)
        state, metadata = self.lora_state_dict(source, return_lora_metadata=True, **kwargs)
        dit = getattr(self, self.transformer_name)
        if is_megatron_lora(state):
            state = convert_megatron_lora(state, num_heads=dit.config.num_heads)
        else:
            state = {
                ("dit." + k[len("transformer.") :] if k.startswith("transformer.") else k): v
                for k, v in state.items()
            }
        rank = check_lora_fits(dit, state, "dit")
        if lora_alpha is None and "lora_alpha" in header:
            lora_alpha = float(header["lora_alpha"])
        if lora_alpha is not None:
            # LoraConfig fields, keyed under the component prefix as diffusers expects
            metadata = {
                "dit.r": rank,
                "dit.lora_alpha": lora_alpha,
                "dit.target_modules": sorted({k.split(".lora_")[0][len("dit.") :] for k in state}),
            }
        dit.load_lora_adapter(
            state,
            network_alphas=None,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=self,
            low_cpu_mem_usage=kwargs.get("low_cpu_mem_usage", False),
            hotswap=hotswap,
            prefix="dit",
        )

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike[str],
        dit_lora_layers: dict[str, torch.Tensor],
        *,
        lora_alpha: float | None = None,
        weight_name: str = LORA_WEIGHT_NAME,
    ) -> Path:
        """Write adapter tensors (``<module>.lora_A.weight`` / ``lora_B.weight``, e.g. from
        ``peft.get_peft_model_state_dict(pipe.dit)``) as ``dit.``-prefixed safetensors."""
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            (k if k.startswith("dit.") else f"dit.{k}"): v.detach().cpu().contiguous()
            for k, v in dit_lora_layers.items()
        }
        meta = {"format": "pt"}
        if lora_alpha is not None:
            meta["lora_alpha"] = json.dumps(float(lora_alpha))
        tmp = out / f".{weight_name}.tmp"
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, out / weight_name)
        return out / weight_name

    def fuse_lora(  # type: ignore[override]
        self,
        components: list[str] | None = None,
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Merge the active adapters into the DiT weights (W += scale alpha / r B A)."""
        super().fuse_lora(
            components=components or ["dit"],
            lora_scale=lora_scale,
            safe_fusing=safe_fusing,
            adapter_names=adapter_names,
            **kwargs,
        )

    def unfuse_lora(self, components: list[str] | None = None, **kwargs: Any) -> None:  # type: ignore[override]
        super().unfuse_lora(components=components or ["dit"], **kwargs)
