"""Checkpoints: the official ``vae.pt``, ``save_pretrained`` folders, the Hub, SDXL trunks.

Folder format (``save_pretrained``): ``config.json`` (the ``VAEConfig`` fields) and
``model.safetensors`` (the state dict, keys identical to the official ``vae.pt``). Every
file is written to a temporary name and moved into place with ``os.replace``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mugv_vae.config import VAEConfig

if TYPE_CHECKING:
    from mugv_vae.model import VideoVAE

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_MAX_LISTED = 12


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt_keys(keys: list[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def load_state_dict_strict(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Strict load that names missing / unexpected / mis-shaped keys and how to fix them."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"checkpoint {source} does not match the model"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_fmt_keys(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes[:_MAX_LISTED])}")
        parts.append(
            "check that the config/preset matches the checkpoint (e.g. VAEConfig.preset('mugv') "
            "for the official vae.pt)"
        )
        raise KeyError("; ".join(parts))
    model.load_state_dict(dict(state), strict=True)


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or one nested under 'state_dict' / 'model' / 'module'."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} does not hold a state dict of tensors")
    return dict(obj)


def _finish(model: VideoVAE, device: str | torch.device, dtype: torch.dtype | None) -> VideoVAE:
    model = model.to(device=device)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()


def from_official(
    cls: type[VideoVAE],
    path: str | Path,
    config: VAEConfig | None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> VideoVAE:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official VAE checkpoint not found: {path}")
    state = _unwrap(torch.load(path, map_location="cpu", weights_only=True), str(path))
    with torch.device("meta"):
        model = cls(config if config is not None else VAEConfig.preset("mugv"))
    model = model.to_empty(device="cpu")
    load_state_dict_strict(model, state, str(path))
    return _finish(model, device, dtype)


def save_pretrained(model: VideoVAE, directory: str | Path) -> Path:
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))
    _atomic_write_bytes(directory / CONFIG_NAME, model.config.to_json().encode())
    return directory


def _resolve(
    path_or_repo_id: str | Path,
    filenames: list[str],
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """A local folder holding ``filenames``: the path itself or a Hub snapshot."""
    local = Path(path_or_repo_id)
    if local.exists():
        folder = local / subfolder if subfolder else local
        for name in filenames:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} has no {name}")
        return folder
    repo_id = str(path_or_repo_id)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise FileNotFoundError(
            f"{repo_id!r} is neither an existing local path nor a Hub repo id 'org/name'"
        )
    from huggingface_hub import hf_hub_download

    got = None
    for name in filenames:
        got = hf_hub_download(
            repo_id,
            name,
            subfolder=subfolder,
            revision=revision,
            token=token,
            endpoint=endpoint,
        )
    assert got is not None
    return Path(got).parent


def from_pretrained(
    cls: type[VideoVAE],
    path_or_repo_id: str | Path,
    *,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    config: VAEConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> VideoVAE:
    from safetensors.torch import load_file

    p = Path(path_or_repo_id)
    if p.is_file():  # an official vae.pt
        return from_official(cls, p, config, device=device, dtype=dtype)
    folder = _resolve(
        path_or_repo_id,
        [CONFIG_NAME, WEIGHTS_NAME],
        revision=revision,
        token=token,
        endpoint=endpoint,
    )
    if config is None:
        config = VAEConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
    with torch.device("meta"):
        model = cls(config)
    model = model.to_empty(device="cpu")
    load_state_dict_strict(model, load_file(folder / WEIGHTS_NAME), str(folder))
    return _finish(model, device, dtype)


def push_to_hub(
    model: VideoVAE,
    repo_id: str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    private: bool = False,
    commit_message: str = "Upload MUG-V video VAE",
) -> str:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return repo_id


# ---------------------------------------------------------------------------------------
# SDXL VAE (diffusers format) -> 2D trunk
# ---------------------------------------------------------------------------------------

# Attention names of older diffusers checkpoints -> current names.
_LEGACY_ATTENTION = {
    ".query.": ".to_q.",
    ".key.": ".to_k.",
    ".value.": ".to_v.",
    ".proj_attn.": ".to_out.0.",
}


def load_diffusers_trunk(
    model: VideoVAE,
    path_or_repo_id: str | Path,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> list[str]:
    from safetensors.torch import load_file

    folder = _resolve(
        path_or_repo_id,
        ["config.json", DIFFUSERS_WEIGHTS],
        subfolder=subfolder,
        revision=revision,
        token=token,
    )
    cfg = json.loads((folder / "config.json").read_text())
    want = {
        "block_out_channels": list(model.config.block_out_channels),
        "layers_per_block": model.config.layers_per_block,
        "norm_num_groups": model.config.norm_num_groups,
        "latent_channels": model.config.spatial_latent_channels,
    }
    wrong = {k: (cfg.get(k), v) for k, v in want.items() if k in cfg and cfg[k] != v}
    if wrong:
        detail = ", ".join(f"{k}: source {a} vs model {b}" for k, (a, b) in wrong.items())
        raise ValueError(f"diffusers VAE at {folder} does not match the trunk config ({detail})")
    source = load_file(folder / DIFFUSERS_WEIGHTS)
    trunk = model.spatial_vae.module
    own = trunk.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in source.items():
        if not key.startswith(("encoder.", "decoder.")):
            skipped.append(key)
            continue
        name = key
        for old, new in _LEGACY_ATTENTION.items():
            name = name.replace(old, new)
        if name in own and value.ndim == 4 and own[name].ndim == 2:  # 1x1-conv attention
            value = value[:, :, 0, 0]
        mapped[name] = value
    load_state_dict_strict(trunk, mapped, f"{folder / DIFFUSERS_WEIGHTS} (2D trunk)")
    return sorted(skipped)
