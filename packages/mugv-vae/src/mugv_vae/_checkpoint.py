"""Checkpoints: the official ``vae.pt``, diffusers folders, the Hub, SDXL trunks.

Folder format (``save_pretrained``, diffusers' ``ModelMixin``): ``config.json`` (the
``VAEConfig`` fields plus diffusers' ``_class_name``) and
``diffusion_pytorch_model.safetensors`` (the state dict, keys identical to the official
``vae.pt``). Every file is written to a temporary folder and moved into place with
``os.replace``. Folders written before VideoVAE was a diffusers model (``model.safetensors``)
still load.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mugv_vae.config import VAEConfig

if TYPE_CHECKING:
    from mugv_vae.model import VideoVAE

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
"""Weights file of pre-diffusers folders (read only)."""
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_MAX_LISTED = 12

MIN_DIFFUSERS = "0.32.0"
"""Oldest diffusers with the ModelMixin / ConfigMixin API VideoVAE relies on."""


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(m.group()) for part in version.split(".")[:3] if (m := re.match(r"\d+", part)))


def check_diffusers_version(found: str, minimum: str = MIN_DIFFUSERS, *, feature: str) -> None:
    """ImportError naming the minimum when ``found`` is older than ``minimum``."""
    if _release(found) < _release(minimum):
        raise ImportError(
            f"{feature} needs diffusers>={minimum}, but diffusers {found} is installed; "
            f"upgrade it: pip install -U 'diffusers>={minimum}'"
        )


def require_diffusers(minimum: str = MIN_DIFFUSERS, *, feature: str = "mugv-vae") -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("diffusers")
    except PackageNotFoundError as exc:
        raise ImportError(
            f"{feature} needs diffusers>={minimum}: pip install 'diffusers>={minimum}'"
        ) from exc
    check_diffusers_version(found, minimum, feature=feature)


_raw = threading.local()


def raw_config_view() -> bool:
    return getattr(_raw, "on", False)


@contextlib.contextmanager
def diffusers_config_view() -> Iterator[None]:
    """Inside diffusers' loading code ``model.config`` is diffusers' dict (its quantizers
    write attributes onto it); elsewhere it is the typed, frozen `VAEConfig`."""
    before = raw_config_view()
    _raw.on = True
    try:
        yield
    finally:
        _raw.on = before


def atomic_save_folder(save: Callable[[Path], Any], save_directory: str | os.PathLike[str]) -> Path:
    """``save(tmp)`` into a temporary folder next to ``save_directory``, then every file moved
    into place with ``os.replace`` (``config.json`` last)."""
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        save(tmp)
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        mask = os.umask(0o022)
        os.umask(mask)
        for name in sorted(names, key=lambda n: n == CONFIG_NAME):
            os.chmod(tmp / name, 0o666 & ~mask)  # the umask's mode, not a writer's 0600
            os.replace(tmp / name, out / name)
    finally:
        for leftover in tmp.iterdir() if tmp.exists() else []:
            leftover.unlink()
        if tmp.exists():
            tmp.rmdir()
    return out


def push_folder_to_hub(
    save: Callable[[str], Any],
    repo_id: str,
    *,
    token: str | None,
    endpoint: str | None,
    private: bool | None,
    commit_message: str,
    create_pr: bool = False,
) -> str:
    """Create ``repo_id`` if needed, ``save(tmp)`` and upload the folder in one commit
    (diffusers' own ``push_to_hub`` cannot target another ``endpoint``)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mugv-push-") as tmp:
        save(tmp)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=tmp, commit_message=commit_message, create_pr=create_pr
        )
    return str(getattr(info, "commit_url", info))


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
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object: name it, never run it
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:
            raise ValueError(f"cannot read {path}: not a torch checkpoint ({exc})") from exc
        raise ValueError(
            f"refusing to load {path}: it holds pickled Python objects ({found.group(1)}), not "
            "only tensors, and loading it could run code; the official vae.pt is plain tensors"
        ) from exc
    except (RuntimeError, EOFError, KeyError) as exc:  # truncated or not a checkpoint
        raise ValueError(
            f"cannot read {path}: not a complete torch checkpoint ({exc}); download it again"
        ) from exc
    state = _unwrap(loaded, str(path))
    with torch.device("meta"):
        model = cls(config if config is not None else VAEConfig.preset("mugv"))
    model = model.to_empty(device="cpu")
    load_state_dict_strict(model, state, str(path))
    return _finish(model, device, dtype)


def _resolve(
    path_or_repo_id: str | Path,
    filenames: list[str],
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
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
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
    assert got is not None
    return Path(got).parent


def _find_folder(path_or_repo_id: str | Path, **hub: Any) -> tuple[Path, str]:
    """(folder, weights file name): the diffusers file, else the pre-diffusers one."""
    local = Path(path_or_repo_id)
    if local.exists():
        folder = local / hub["subfolder"] if hub.get("subfolder") else local
        for name in (DIFFUSERS_WEIGHTS, WEIGHTS_NAME):
            if (folder / CONFIG_NAME).is_file() and (folder / name).is_file():
                return folder, name
        raise FileNotFoundError(
            f"{folder} has no {CONFIG_NAME} + {DIFFUSERS_WEIGHTS} (VideoVAE.save_pretrained) "
            "and is not an official vae.pt file"
        )
    repo_id = str(path_or_repo_id)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise FileNotFoundError(
            f"{repo_id!r} is neither an existing local path nor a Hub repo id 'org/name'"
        )
    try:
        return _resolve(path_or_repo_id, [CONFIG_NAME, DIFFUSERS_WEIGHTS], **hub), DIFFUSERS_WEIGHTS
    except Exception as first:  # not in the repo (or cache): a pre-diffusers upload?
        try:
            return _resolve(path_or_repo_id, [CONFIG_NAME, WEIGHTS_NAME], **hub), WEIGHTS_NAME
        except Exception:
            raise first from None


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
    fields: tuple[str, ...] = (),
    **kwargs: Any,
) -> VideoVAE:
    from safetensors.torch import load_file

    p = Path(path_or_repo_id)
    if p.is_file():  # an official vae.pt
        return from_official(
            cls, p, config, device=device, dtype=dtype or kwargs.get("torch_dtype")
        )
    hub = {
        "subfolder": kwargs.pop("subfolder", None),
        "revision": revision,
        "token": token,
        "endpoint": endpoint,
        "cache_dir": kwargs.pop("cache_dir", None),
        "local_files_only": bool(kwargs.pop("local_files_only", False)),
    }
    folder, weights = _find_folder(path_or_repo_id, **hub)
    overrides = {k: kwargs.pop(k) for k in fields if k in kwargs}
    for name in ("dtype", "torch_dtype"):
        dtype = dtype if dtype is not None else kwargs.pop(name, None)
        kwargs.pop(name, None)
    # config.json checked here, before any weights are read: a clear error naming the field
    try:
        data = json.loads((folder / CONFIG_NAME).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder / CONFIG_NAME} is not a valid config.json: {exc}") from exc
    try:
        saved = VAEConfig.from_dict({k: v for k, v in data.items() if not k.startswith("_")})
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{folder / CONFIG_NAME}: {exc}") from exc
    _check_safetensors(folder / weights)
    if weights == WEIGHTS_NAME or config is not None:  # pre-diffusers folder, or a new topology
        config = saved if config is None else config
        if overrides:
            config = config.replace(**overrides)
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device="cpu")
        load_state_dict_strict(model, load_file(folder / weights), str(folder))
        return _finish(model, device, dtype)
    kwargs.pop("output_loading_info", None)
    if dtype is None:  # keep the saved dtype (diffusers would load float32)
        dtype = _stored_dtype(folder / weights)
    from diffusers import ModelMixin

    try:  # diffusers renamed torch_dtype= to dtype= (the old name warns)
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401

        kwargs["dtype"] = dtype
    except ImportError:
        kwargs["torch_dtype"] = dtype
    with diffusers_config_view():
        model, info = ModelMixin.from_pretrained.__func__(
            cls, folder, output_loading_info=True, local_files_only=True, **overrides, **kwargs
        )
    problems = {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys") if info.get(k)}
    if problems or info.get("mismatched_keys"):
        raise KeyError(
            f"checkpoint {folder} does not match the model: "
            + "; ".join(f"{k.replace('_', ' ')}: {_fmt_keys(v)}" for k, v in problems.items())
            + (
                f"; shape mismatches: {info['mismatched_keys']}"
                if info.get("mismatched_keys")
                else ""
            )
        )
    return _finish(model, device, None)


def _check_safetensors(path: Path) -> None:
    """A ValueError naming ``path`` when it is not a complete safetensors file."""
    from safetensors import safe_open

    try:
        with open(path, "rb") as head:
            declared = 8 + int.from_bytes(head.read(8).ljust(8, b"\0"), "little")
        if path.stat().st_size < declared:
            raise ValueError("shorter than its header says")
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:  # safetensors' own error type too
        raise ValueError(
            f"cannot read {path}: not a valid safetensors file ({exc}); it is truncated or "
            "damaged, save or download it again"
        ) from exc


def _stored_dtype(path: Path) -> torch.dtype | None:
    from safetensors import safe_open

    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            dtype = f.get_slice(key).get_dtype()
            if dtype in names:
                return names[dtype]
    return None


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
