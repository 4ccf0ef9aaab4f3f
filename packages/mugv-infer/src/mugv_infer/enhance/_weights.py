"""The official enhancer files, read safely and converted strictly to library components.

Files (enhancer reference §1.3, §2.5, §2.7, §4):

- ``enhancer/dit_i2v.safetensors``: the modified Wan2.1-T2V-1.3B DiT, 827 keys (stock plus
  ``patch_embedding2``), loaded strictly like the official ``strict=True``;
- ``enhancer/pytorch_model.bin``: LoRA (rank 256 on q, k, v, o, ffn.0, ffn.2 of every block)
  and possibly full tensors, keys ``pipe.dit.*``;
- ``Wan2.1_VAE.pth`` and ``models_t5_umt5-xxl-enc-bf16.pth``: the stock Wan VAE and umT5-XXL
  encoder, with the ``google/umt5-xxl`` tokenizer folder next to them.

Everything is read with ``safetensors`` or ``torch.load(weights_only=True)``: nothing in a
downloaded file executes code. A key that does not map is an error naming the first few,
never a silently inactive LoRA (reference Q9: the official non-strict load after a blind
5-character prefix strip leaves ``lora_B = 0`` on any prefix mismatch).

Converted layouts: the DiT is a diffusers ``WanTransformer3DModel`` with the two patch
embeddings folded into one 32-channel input projection (reference §2.8: weight = [W1, W2]
along the input channels, bias = b1 + b2, input = [x, z]); the LoRA goes through peft on the
diffusers module names; the VAE is ``AutoencoderKLWan``; the encoder ``UMT5EncoderModel``.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DIT_FILE = "enhancer/dit_i2v.safetensors"
LORA_FILE = "enhancer/pytorch_model.bin"
VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"

#: Official LoRA targets (``--lora_target_modules``), matched as module-name suffixes.
LORA_TARGETS = (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
    "ffn.0", "ffn.2",
)  # fmt: skip
#: The same layers in diffusers' ``WanTransformer3DModel`` names, as one peft regex.
LORA_TARGET_REGEX = (
    r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|blocks\.\d+\.ffn\.net\.(0\.proj|2)"
)
OFFICIAL_LORA_ALPHA = 4.0
OFFICIAL_HEAD_DIM = 128

_BLOCK_KEYS = (
    "modulation",
    *(f"{a}.{p}.{t}" for a in ("self_attn", "cross_attn") for p in "qkvo" for t in ("weight", "bias")),
    *(f"{a}.{n}.weight" for a in ("self_attn", "cross_attn") for n in ("norm_q", "norm_k")),
    "norm3.weight", "norm3.bias",
    "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias",
)  # fmt: skip
_TOP_KEYS = (
    "patch_embedding.weight", "patch_embedding.bias",
    "patch_embedding2.weight", "patch_embedding2.bias",
    "text_embedding.0.weight", "text_embedding.0.bias",
    "text_embedding.2.weight", "text_embedding.2.bias",
    "time_embedding.0.weight", "time_embedding.0.bias",
    "time_embedding.2.weight", "time_embedding.2.bias",
    "time_projection.1.weight", "time_projection.1.bias",
    "head.modulation", "head.head.weight", "head.head.bias",
)  # fmt: skip


def official_dit_keys(num_layers: int) -> list[str]:
    """The keys of ``dit_i2v.safetensors`` for ``num_layers`` blocks (reference §2.5)."""
    blocks = [f"blocks.{n}.{k}" for n in range(num_layers) for k in _BLOCK_KEYS]
    return [*_TOP_KEYS, *blocks]


def _first(keys, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (and {len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


# ---------------------------------------------------------------------------- reading


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a truncated or corrupt file is a ValueError."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError: header or data cut short
        raise ValueError(
            f"cannot read {str(path)!r} as safetensors ({type(exc).__name__}: {exc}); the file "
            "is probably truncated or corrupt: delete it and download it again"
        ) from exc


def read_torch(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A ``torch.save`` state dict, read with ``weights_only=True`` (memory-mapped)."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{str(path)!r} holds more than tensors and is refused: weights are only read "
            f"with torch.load(weights_only=True) ({exc})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(
            f"cannot read {str(path)!r} ({type(exc).__name__}: {exc}); the file is probably "
            "truncated or corrupt: delete it and download it again"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{str(path)!r} is not a flat state dict of tensors")
    return state


# ---------------------------------------------------------------------------- the DiT


@dataclass
class ConvertedDiT:
    """The enhancer DiT in diffusers layout: config, base weights and the LoRA."""

    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    """Base weights, ``WanTransformer3DModel`` keys (patch embeddings folded)."""
    lora: dict[str, torch.Tensor]
    """peft keys ``blocks.N.attn1.to_q.lora_A.weight`` (no adapter name); may be empty."""
    lora_rank: int | None


def dit_config(state: dict[str, torch.Tensor], head_dim: int = OFFICIAL_HEAD_DIM) -> dict:
    """``WanTransformer3DModel`` config of an official enhancer DiT, from its shapes
    (reference §2.1, §2.8); the number of heads is ``dim / head_dim`` (Wan: 128)."""
    w = state["patch_embedding.weight"]
    dim, in_ch, *patch = w.shape
    if dim % head_dim:
        raise ValueError(f"DiT width {dim} is not a multiple of head_dim {head_dim}")
    layers = sum(1 for k in state if k.endswith(".modulation") and k.startswith("blocks."))
    return {
        "patch_size": list(patch),
        "num_attention_heads": dim // head_dim,
        "attention_head_dim": head_dim,
        "in_channels": 2 * in_ch,  # [x, z]: the folded second patch embedding
        "out_channels": state["head.head.weight"].shape[0] // (patch[0] * patch[1] * patch[2]),
        "text_dim": state["text_embedding.0.weight"].shape[1],
        "freq_dim": state["time_embedding.0.weight"].shape[1],
        "ffn_dim": state["blocks.0.ffn.0.weight"].shape[0],
        "num_layers": layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 1024,
    }


def _diffusers_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Wan names -> ``WanTransformer3DModel`` names (diffusers' own converter)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(state))


_LORA_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.lora_([AB])\.default\.weight$")


def convert_dit(
    dit: dict[str, torch.Tensor],
    lora_file: dict[str, torch.Tensor] | None,
    *,
    head_dim: int = OFFICIAL_HEAD_DIM,
    source: str = DIT_FILE,
    lora_source: str = LORA_FILE,
) -> ConvertedDiT:
    """Official ``dit_i2v.safetensors`` (+ ``pytorch_model.bin``) -> diffusers layout.

    The .bin is read like the official loader (reference §2.7): its keys lose their first
    5 characters ("pipe.") and must then start with ``dit.``; LoRA tensors fill the adapter,
    any full tensor (``dit.patch_embedding2.weight``, ``dit.blocks.0.self_attn.q.base_layer
    .weight``, ...) overrides the DiT value. Unmapped keys, a missing LoRA tensor or a rank
    mismatch are ValueErrors.
    """
    if "patch_embedding.weight" not in dit or "blocks.0.modulation" not in dit:
        raise ValueError(
            f"{source} is not a Wan/MUG-V enhancer DiT (no patch_embedding / blocks.0 keys; "
            f"first keys: {_first(dit)})"
        )
    num_layers = sum(1 for k in dit if k.startswith("blocks.") and k.endswith(".modulation"))
    expected = set(official_dit_keys(num_layers))
    missing, unexpected = expected - set(dit), set(dit) - expected
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the enhancer DiT layout (reference §2.5, {num_layers} "
            f"blocks): missing {_first(missing) or 'none'}; unexpected "
            f"{_first(unexpected) or 'none'}"
        )
    state = dict(dit)
    lora: dict[str, torch.Tensor] = {}
    rank = None
    if lora_file is not None:
        overrides, lora, rank = _split_lora_file(lora_file, expected, num_layers, lora_source)
        state.update(overrides)
    # Fold the second patch embedding into a 32-channel input projection (reference §2.8).
    w1, b1 = state.pop("patch_embedding.weight"), state.pop("patch_embedding.bias")
    w2, b2 = state.pop("patch_embedding2.weight"), state.pop("patch_embedding2.bias")
    if w1.shape != w2.shape:
        raise ValueError(f"patch_embedding {tuple(w1.shape)} != patch_embedding2 {tuple(w2.shape)}")
    config = dit_config(dit, head_dim)
    converted = _diffusers_names(state)
    converted["patch_embedding.weight"] = torch.cat([w1, w2.to(w1.dtype)], dim=1)
    converted["patch_embedding.bias"] = b1 + b2.to(b1.dtype)
    peft_lora = {
        k.replace(".default.weight", ".weight"): v for k, v in _diffusers_names(lora).items()
    }
    return ConvertedDiT(config=config, state=converted, lora=peft_lora, lora_rank=rank)


def _split_lora_file(
    raw: dict[str, torch.Tensor], official_keys: set[str], num_layers: int, source: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """(full-tensor overrides, LoRA tensors with official names, rank)."""
    stripped = {k[5:]: v for k, v in raw.items()}
    bad_prefix = [k for k in raw if not k[5:].startswith("dit.")]
    if bad_prefix:
        raise ValueError(
            f"{source}: keys must read 'pipe.dit.<name>' (the official loader strips 5 "
            f"characters and loads into the pipeline's 'dit'); these do not map: "
            f"{_first(bad_prefix)}"
        )
    overrides, lora, unmapped = {}, {}, []
    for key, value in stripped.items():
        name = key[len("dit.") :]
        match = _LORA_KEY.match(name)
        if match:
            if int(match.group(1)) < num_layers and match.group(2) in LORA_TARGETS:
                lora[name] = value
            else:
                unmapped.append("pipe." + key)
            continue
        base = name.replace(".base_layer.", ".")
        if base in official_keys:
            overrides[base] = value
        else:
            unmapped.append("pipe." + key)
    if unmapped:
        raise ValueError(
            f"{source}: {len(unmapped)} keys do not map onto the enhancer DiT or its LoRA "
            f"(targets {', '.join(LORA_TARGETS)}): {_first(unmapped)}"
        )
    expected = {
        f"blocks.{n}.{t}.lora_{ab}.default.weight"
        for n in range(num_layers)
        for t in LORA_TARGETS
        for ab in "AB"
    }
    missing = expected - set(lora)
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} of the {len(expected)} LoRA tensors are missing "
            f"({_first(missing)}); a partial LoRA would silently change the enhancer"
        )
    ranks = {v.shape[0] for k, v in lora.items() if ".lora_A." in k}
    ranks |= {v.shape[1] for k, v in lora.items() if ".lora_B." in k}
    if len(ranks) != 1:
        raise ValueError(f"{source}: LoRA tensors disagree on the rank: {sorted(ranks)}")
    return overrides, lora, ranks.pop()


# ---------------------------------------------------------------------------- the VAE


def vae_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``AutoencoderKLWan`` config of an official Wan2.1 VAE file, from its shapes
    (reference §4.1: 4 stages of 2 residual blocks, middle attention only)."""
    try:
        base = state["encoder.conv1.weight"].shape[0]
        mult = [state[f"encoder.downsamples.{3 * i}.residual.6.weight"].shape[0] // base
                for i in range(4)]  # fmt: skip
        temporal = [f"encoder.downsamples.{3 * i + 2}.time_conv.weight" in state for i in range(3)]
        z_dim = state["conv2.weight"].shape[0]
    except KeyError as exc:
        raise ValueError(
            f"not a Wan2.1 VAE checkpoint: key {exc} is missing (reference §4.1 layout)"
        ) from exc
    return {
        "base_dim": base,
        "z_dim": z_dim,
        "dim_mult": mult,
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": temporal,
    }


def convert_vae(state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Official ``Wan2.1_VAE.pth`` -> (``AutoencoderKLWan`` config, state dict)."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    return vae_config(state), convert_wan_vae_to_diffusers(dict(state))


# ---------------------------------------------------------------------------- umT5


_T5_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_T5_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def convert_t5(state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` -> (``UMT5Config`` kwargs, state dict)
    (reference §4.2 key table; gated-GELU(tanh) FFN, per-layer relative position bias)."""
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        match = _T5_BLOCK_KEY.match(key)
        if key == "token_embedding.weight":
            out["shared.weight"] = value
            out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif match and match.group(2) in _T5_BLOCK:
            out[f"encoder.block.{match.group(1)}.{_T5_BLOCK[match.group(2)]}"] = value
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(
            f"{T5_FILE}: {len(unmapped)} keys are not umT5 encoder keys (reference §4.2): "
            f"{_first(unmapped)}"
        )
    try:
        vocab, d_model = state["token_embedding.weight"].shape
        buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        d_ff = state["blocks.0.ffn.fc1.weight"].shape[0]
        inner = state["blocks.0.attn.q.weight"].shape[0]
    except KeyError as exc:
        raise ValueError(f"{T5_FILE}: key {exc} is missing; not a umT5 encoder") from exc
    layers = len({m.group(1) for k in state if (m := _T5_BLOCK_KEY.match(k))})
    config = {
        "vocab_size": vocab,
        "d_model": d_model,
        "d_kv": inner // heads,
        "d_ff": d_ff,
        "num_layers": layers,
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6,
        "is_encoder_decoder": False,
        "tie_word_embeddings": False,
    }
    return config, out


# ---------------------------------------------------------------------------- placing weights


def load_into(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype,
    keep_fp32: tuple[str, ...] = (),
    what: str,
) -> torch.nn.Module:
    """Strictly load ``state`` into ``module`` (built on the meta device or not), casting
    floating tensors to ``dtype`` except those under a ``keep_fp32`` module name."""
    expected = set(module.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"{what}: converted keys do not match the model: missing {_first(missing) or 'none'}; "
            f"unexpected {_first(unexpected) or 'none'}"
        )
    own = module.state_dict()
    cast, done = {}, {}  # tied tensors (umT5's shared embedding) are cast once
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"{what}: {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(own[key].shape)}"
            )
        if value.is_floating_point():
            fp32 = any(part in keep_fp32 for part in key.split("."))
            memo = (id(value), fp32)
            if memo not in done:
                done[memo] = value.to(torch.float32 if fp32 else dtype).contiguous()
            value = done[memo]
        cast[key] = value
    module.load_state_dict(cast, strict=True, assign=True)
    return module


def check_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"weight file {str(path)!r} is empty: delete it and download it again")
    return path
