"""Checkpoint formats: the official ``dit.pt`` and the diffusers folder.

The official file is a plain state dict with the keys of reference §A.2. The diffusers
folder (``MUGDiT.save_pretrained``) stores the same keys in
``diffusion_pytorch_model.safetensors`` next to a ``config.json`` holding the
`DiTConfig` fields (plus diffusers' ``_class_name``). Folders written before MUGDiT was a
diffusers model (``model.safetensors``) still load.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mugv_dit.config import DiTConfig

CONFIG_NAME = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
WEIGHTS_NAME = "model.safetensors"
"""The weights file of folders written before MUGDiT became a diffusers model (read only)."""
OFFICIAL_NAME = "dit.pt"
_HEAD_DIM_KEY = "blocks.0.attn.q_norm.weight"


# -- reading ---------------------------------------------------------------------------
def load_official_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read an official ``dit.pt`` safely (``weights_only=True``, memory-mapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official DiT checkpoint {path} does not exist")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip archive (legacy format): mmap is not possible
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object: name it, never run it
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:
            raise ValueError(f"cannot read {path}: not a torch checkpoint ({exc})") from exc
        raise ValueError(
            f"refusing to load {path}: it holds pickled Python objects ({found.group(1)}), not "
            "only tensors, and loading it could run code; the official dit.pt is plain tensors"
        ) from exc
    except (RuntimeError, EOFError, KeyError) as exc:  # truncated or not a checkpoint
        raise ValueError(
            f"cannot read {path}: not a complete torch checkpoint ({exc}); download it again"
        ) from exc
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


def read_config_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` as a dict, or a ValueError naming the file (never anything else)."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a valid config.json (JSON text): {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a valid config.json: a JSON object is needed")
    try:  # every field checked here, so the error names the file
        config_from_json(data)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    return data


def config_from_json(data: Mapping[str, Any]) -> DiTConfig:
    """A `DiTConfig` from a ``config.json`` (diffusers' private ``_*`` keys ignored)."""
    return DiTConfig.from_dict({k: v for k, v in data.items() if not k.startswith("_")})


def load_legacy(config_path: str | os.PathLike[str], weights_path: str | os.PathLike[str]):
    """Read a pre-diffusers folder: (DiTConfig, state dict)."""
    from safetensors.torch import load_file

    config = config_from_json(read_config_json(config_path))
    try:
        return config, load_file(str(weights_path))
    except Exception as exc:  # safetensors' own error type: name the file
        raise ValueError(
            f"cannot read {weights_path}: not a valid safetensors file ({exc}); it is "
            "truncated or damaged, save or download it again"
        ) from exc


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
    """Write a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)
    atomically without building the model; returns the folder."""
    from safetensors.torch import save_file

    from mugv_dit.model import MUGDiT

    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.to(dtype) if dtype is not None else v).detach().to("cpu").contiguous()
        for k, v in state.items()
    }
    _atomic_write(
        out / DIFFUSERS_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    with torch.device("meta"):
        text = MUGDiT(config).to_json_string()
    _atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return out


def convert_official_checkpoint(
    src_pt: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    config: DiTConfig | None = None,
) -> Path:
    """Convert an official ``dit.pt`` into a diffusers folder (`MUGDiT.save_pretrained`'s).

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
def _folder_kind(folder: Path) -> tuple[str, list[str]] | None:
    if (folder / CONFIG_NAME).is_file():
        if (folder / DIFFUSERS_WEIGHTS).is_file() or (folder / DIFFUSERS_INDEX).is_file():
            return "diffusers", [str(folder)]
        if (folder / WEIGHTS_NAME).is_file():
            return "legacy", [str(folder / CONFIG_NAME), str(folder / WEIGHTS_NAME)]
    if (folder / OFFICIAL_NAME).is_file():
        return "official", [str(folder / OFFICIAL_NAME)]
    return None


def resolve_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    local_files_only: bool = False,
) -> tuple[str, list[str]]:
    """Find the files to load, locally or through the Hugging Face cache.

    Returns ("diffusers", [folder]) for a ``save_pretrained`` folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``, possibly sharded), ("legacy", [config,
    weights]) for the pre-diffusers ``model.safetensors`` folders, or ("official",
    [dit.pt]). Only the files of the chosen format are downloaded.
    """
    path = Path(name_or_path)
    if path.is_file():
        return "official", [str(path)]
    if path.is_dir():
        folder = path / subfolder if subfolder else path
        found = _folder_kind(folder)
        if found is None:
            raise FileNotFoundError(
                f"{folder} holds neither {CONFIG_NAME} + {DIFFUSERS_WEIGHTS} (save_pretrained) "
                f"nor the official {OFFICIAL_NAME}"
            )
        return found
    repo_id = str(name_or_path)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise FileNotFoundError(
            f"{repo_id!r} is neither an existing local path nor a Hub repo id ('org/name')"
        )
    from mugv_dit._hub import HubAccess

    hub = HubAccess.check(local_files_only, endpoint)  # offline / reachable, decided once
    kwargs: dict[str, Any] = {
        "subfolder": subfolder,
        "revision": revision,
        "cache_dir": cache_dir,
        "token": token,
        "missing_ok": True,
    }
    config = hub.download(repo_id, CONFIG_NAME, **kwargs)
    if config is not None:
        for name in (DIFFUSERS_WEIGHTS, DIFFUSERS_INDEX, WEIGHTS_NAME):
            weights = hub.download(repo_id, name, **kwargs)
            if weights is None:
                continue
            if name == DIFFUSERS_INDEX:  # sharded: fetch every shard the index names
                shards = sorted(set(json.loads(Path(weights).read_text())["weight_map"].values()))
                for shard in shards:
                    hub.download(repo_id, shard, **{**kwargs, "missing_ok": False})
            if name == WEIGHTS_NAME:
                return "legacy", [config, weights]
            return "diffusers", [str(Path(weights).parent)]
        if hub.cache_only:
            err = hub.error(repo_id, DIFFUSERS_WEIGHTS, cache_dir=cache_dir)
            raise type(err)(f"{repo_id} has {CONFIG_NAME} but the weights are missing: {err}")
        raise FileNotFoundError(
            f"Hub repo {repo_id} has {CONFIG_NAME} but no {DIFFUSERS_WEIGHTS}; the weights "
            "are missing"
        )
    official = hub.download(repo_id, OFFICIAL_NAME, **kwargs)
    if official is not None:
        return "official", [official]
    if hub.cache_only:
        err = hub.error(repo_id, OFFICIAL_NAME, cache_dir=cache_dir)
        raise type(err)(f"no MUG-DiT weights found for {repo_id}: {err}")
    raise FileNotFoundError(
        f"no MUG-DiT weights in Hub repo {repo_id}: it has neither {CONFIG_NAME} + "
        f"{DIFFUSERS_WEIGHTS} nor {OFFICIAL_NAME}"
    )


def stored_dtype(folder: str | os.PathLike[str]) -> torch.dtype | None:
    """dtype of the first floating tensor of a diffusers folder's (first) safetensors file:
    diffusers would load into float32 unless told, we keep the saved dtype."""
    from safetensors import safe_open

    folder = Path(folder)
    path = folder / DIFFUSERS_WEIGHTS
    if not path.is_file() and (folder / DIFFUSERS_INDEX).is_file():
        weight_map = json.loads((folder / DIFFUSERS_INDEX).read_text())["weight_map"]
        path = folder / sorted(set(weight_map.values()))[0]
    if not path.is_file():
        return None
    with open(path, "rb") as head:
        declared = 8 + int.from_bytes(head.read(8).ljust(8, b"\0"), "little")
    if path.stat().st_size < declared:
        raise ValueError(
            f"cannot read {path}: not a valid safetensors file (shorter than its header says); "
            "it is truncated or damaged, save or download it again"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                dtype = f.get_slice(name).get_dtype()
                if dtype in ("F32", "F16", "BF16", "F64"):
                    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                            "F64": torch.float64}[dtype]  # fmt: skip
    except Exception as exc:  # safetensors' own error type: name the file
        raise ValueError(
            f"cannot read {path}: not a valid safetensors file ({exc}); it is truncated or "
            "damaged, save or download it again"
        ) from exc
    return None


def check_loading_info(info: Mapping[str, Any], *, source: str, cls_name: str) -> None:
    """Turn diffusers' loading report into the strict error (diffusers only warns about
    unexpected keys)."""
    problems = []
    for key, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected")):
        keys = sorted(info.get(key) or [])
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{what} keys: {shown}")
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        problems.append(
            "shape mismatches: "
            + ", ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched)
        )
    if problems:
        raise ValueError(
            f"checkpoint {source} does not fit {cls_name}: " + "; ".join(problems) + "."
        )


def atomic_save_folder(save, save_directory: str | os.PathLike[str]) -> Path:
    """Run ``save(tmp_dir)`` in a temporary folder next to ``save_directory``, then move
    every file it wrote into place with ``os.replace`` (``config.json`` last), so a reader
    never sees a half-written file."""
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
    save,
    repo_id: str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str,
    create_pr: bool = False,
) -> str:
    """Create ``repo_id`` if needed, ``save(tmp)`` and upload the folder in one commit.

    diffusers' ``push_to_hub`` always talks to the default endpoint; this takes ``endpoint``
    (a private Hub, or a test server). Returns the commit URL.
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mugv-push-") as tmp:
        save(tmp)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
        )
    return str(getattr(info, "commit_url", info))


# -- diffusers ---------------------------------------------------------------------------
MIN_DIFFUSERS = "0.32.0"
"""Oldest diffusers with everything MUGDiT uses: ModelMixin/ConfigMixin, PeftAdapterMixin's
``load_lora_adapter`` and the torchao quantizer."""


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(m.group()) for part in version.split(".")[:3] if (m := re.match(r"\d+", part)))


def check_diffusers_version(found: str, minimum: str = MIN_DIFFUSERS, *, feature: str) -> None:
    """ImportError naming the minimum when ``found`` is older than ``minimum``."""
    if _release(found) < _release(minimum):
        raise ImportError(
            f"{feature} needs diffusers>={minimum}, but diffusers {found} is installed; "
            f"upgrade it: pip install -U 'diffusers>={minimum}'"
        )


def dtype_keyword() -> str:
    """diffusers renamed ``from_pretrained(torch_dtype=)`` to ``dtype=`` (the old name now
    warns); releases before the rename only know ``torch_dtype``."""
    try:  # the helper that came with the rename
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def require_diffusers(minimum: str = MIN_DIFFUSERS, *, feature: str = "mugv-dit") -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("diffusers")
    except PackageNotFoundError as exc:
        raise ImportError(
            f"{feature} needs diffusers>={minimum}: pip install 'diffusers>={minimum}'"
        ) from exc
    check_diffusers_version(found, minimum, feature=feature)
