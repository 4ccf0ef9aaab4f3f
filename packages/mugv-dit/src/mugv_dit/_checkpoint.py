"""Checkpoint formats: the official ``dit.pt`` and ours (``config.json`` + safetensors).

The official file is a plain state dict with the keys of reference §A.2. Ours stores the
same keys in ``model.safetensors`` next to a ``config.json`` holding `DiTConfig.to_dict()`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mugv_dit.config import DiTConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
OFFICIAL_NAME = "dit.pt"
_HEAD_DIM_KEY = "blocks.0.attn.q_norm.weight"


# -- reading ---------------------------------------------------------------------------
def load_official_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read an official ``dit.pt`` safely (``weights_only=True``, memory-mapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official DiT checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip archive (legacy format): mmap is not possible
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(
            f"{path} is not a plain state dict of tensors (the official dit.pt layout); "
            "got a " + type(state).__name__
        )
    return dict(state)


def infer_config(state: Mapping[str, torch.Tensor], **overrides: Any) -> DiTConfig:
    """Architecture of an official-layout state dict, read from its tensor shapes."""
    needed = ("x_embedder.proj.weight", "y_embedder.y_proj.fc1.weight", "final_layer.linear.weight")
    missing = [k for k in (*needed, _HEAD_DIM_KEY) if k not in state]
    if missing:
        raise ValueError(
            f"state dict is not in the MUG-DiT layout: missing {missing}; expected the keys of "
            "the official dit.pt (x_embedder.*, blocks.{i}.*, final_layer.*)"
        )
    D, C, pt, ph, pw = state["x_embedder.proj.weight"].shape
    head_dim = state[_HEAD_DIM_KEY].shape[0]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    out = state["final_layer.linear.weight"].shape[0] // (pt * ph * pw)
    mlp_hidden = (
        state["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in state else 4 * D
    )
    fields: dict[str, Any] = {
        "depth": depth,
        "hidden_size": D,
        "num_heads": D // head_dim,
        "mlp_ratio": mlp_hidden / D,
        "in_channels": C,
        "text_dim": state["y_embedder.y_proj.fc1.weight"].shape[1],
        "patch_size": (pt, ph, pw),
        "learn_sigma": out == 2 * C,
        "frequency_embedding_size": state["t_embedder.mlp.0.weight"].shape[1]
        if "t_embedder.mlp.0.weight" in state
        else 256,
    }
    fields.update(overrides)
    return DiTConfig(**fields)


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Strict check with errors that name missing, unexpected and mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    if not (missing or unexpected or wrong):
        return

    def names(keys: list[str]) -> str:
        shown = ", ".join(keys[:8])
        return shown + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

    problems = []
    if missing:
        problems.append(f"missing keys: {names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {names(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches: {names(wrong)}")
    cfg = getattr(model, "config", None)
    hint = (
        f" The model was built as depth={cfg.depth}, hidden_size={cfg.hidden_size}, "
        f"num_heads={cfg.num_heads}, in_channels={cfg.in_channels}, text_dim={cfg.text_dim}; "
        "is the checkpoint for another preset?"
        if cfg is not None
        else ""
    )
    raise ValueError(
        f"checkpoint {source} does not fit the model: " + "; ".join(problems) + "." + hint
    )


def load_ours(config_path: str | os.PathLike[str], weights_path: str | os.PathLike[str]):
    """Read our format: (DiTConfig, state dict)."""
    from safetensors.torch import load_file

    config = DiTConfig.from_dict(json.loads(Path(config_path).read_text()))
    return config, load_file(str(weights_path))


# -- writing ---------------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_state_dict(
    state: Mapping[str, torch.Tensor],
    config: DiTConfig,
    save_directory: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically; returns the folder."""
    from safetensors.torch import save_file

    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.to(dtype) if dtype is not None else v).detach().to("cpu").contiguous()
        for k, v in state.items()
    }
    _atomic_write(
        out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    _atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return out


def save_ours(model: nn.Module, save_directory, *, dtype: torch.dtype | None = None) -> Path:
    return save_state_dict(model.state_dict(), model.config, save_directory, dtype=dtype)


def convert_official_checkpoint(
    src_pt: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    config: DiTConfig | None = None,
) -> Path:
    """Convert an official ``dit.pt`` into our ``config.json`` + ``model.safetensors``.

    Every key and shape is checked against the inferred (or given) architecture first,
    so a converted folder always loads with `MUGDiT.from_pretrained`. Returns ``dst_dir``.
    """
    from mugv_dit.model import MUGDiT

    state = load_official_state_dict(src_pt)
    config = config or infer_config(state)
    with torch.device("meta"):
        model = MUGDiT(config)
    check_state_dict(model, state, source=str(src_pt))
    return save_state_dict(state, config, dst_dir, dtype=dtype)


# -- the Hub ---------------------------------------------------------------------------
def _hub_download(repo_id: str, filename: str, **kwargs: Any) -> str | None:
    """Download one file; None when the repo (or the offline cache) does not have it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(repo_id, filename, **kwargs)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def resolve_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    local_files_only: bool = False,
) -> tuple[str, list[str]]:
    """Find the files to load: ("ours", [config, weights]) or ("official", [dit.pt])."""
    path = Path(name_or_path)
    if path.is_file():
        return "official", [str(path)]
    if path.is_dir():
        if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
            return "ours", [str(path / CONFIG_NAME), str(path / WEIGHTS_NAME)]
        if (path / OFFICIAL_NAME).is_file():
            return "official", [str(path / OFFICIAL_NAME)]
        raise FileNotFoundError(
            f"{path} holds neither {CONFIG_NAME} + {WEIGHTS_NAME} (save_pretrained) nor the "
            f"official {OFFICIAL_NAME}"
        )
    repo_id = str(name_or_path)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise FileNotFoundError(
            f"{repo_id!r} is neither an existing local path nor a Hub repo id ('org/name')"
        )
    kwargs: dict[str, Any] = {
        "revision": revision,
        "cache_dir": cache_dir,
        "token": token,
        "local_files_only": local_files_only,
    }
    if endpoint is not None:
        kwargs["endpoint"] = endpoint
    config = _hub_download(repo_id, CONFIG_NAME, **kwargs)
    if config is not None:
        weights = _hub_download(repo_id, WEIGHTS_NAME, **kwargs)
        if weights is None:
            raise FileNotFoundError(
                f"Hub repo {repo_id} has {CONFIG_NAME} but no {WEIGHTS_NAME} (or it is not in "
                "the local cache while offline); the weights are missing"
            )
        return "ours", [config, weights]
    official = _hub_download(repo_id, OFFICIAL_NAME, **kwargs)
    if official is not None:
        return "official", [official]
    raise FileNotFoundError(
        f"no MUG-DiT weights found for {repo_id}: it has neither {CONFIG_NAME} + "
        f"{WEIGHTS_NAME} nor {OFFICIAL_NAME}, or they are not in the Hugging Face cache while "
        "offline (HF_HUB_OFFLINE=1). Download them once online, or pass a local folder."
    )


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload MUG-DiT",
    dtype: torch.dtype | None = None,
) -> str:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mugv-dit-push-") as tmp:
        save_ours(model, tmp, dtype=dtype)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message
        )
    return str(getattr(info, "commit_url", info))
