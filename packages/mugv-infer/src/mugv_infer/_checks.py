"""Argument checks at the boundary of `MUGVPipeline` (``__call__`` and ``from_pretrained``).

Every check runs before a model loads or a step is sampled and raises a TypeError (wrong
kind of value), ValueError (right kind, wrong value: NaN, 0 fps, a lone surrogate) or
FileNotFoundError naming the argument and the value. They take the caller's ``locals()``
so the pipeline's signature stays the single source of the arguments.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: A seed torch's generators accept: 0 <= seed < 2**64.
_SEED_LIMIT = 2**64
_OUTPUT_TYPES = ("latent", "pt", "np", "pil", "mp4")


def _kind(value: Any) -> str:
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def check_text(value: Any, name: str) -> None:
    """A string that is valid Unicode text (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name} holds a lone surrogate U+{ord(value[exc.start]):04X} at character "
            f"{exc.start}: not valid Unicode text; fix the text's encoding"
        ) from None


def check_prompts(value: Any, name: str, *, allow_none: bool = False) -> None:
    """A non-empty string or a non-empty list of non-empty strings."""
    if value is None and allow_none:
        return
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        items = list(value)
        if not items:
            raise ValueError(f"{name} must be a non-empty string or a list of them, got []")
    else:
        raise TypeError(f"{name} must be a string or a list of strings, got {_kind(value)}")
    for i, item in enumerate(items):
        label = name if isinstance(value, str) else f"{name}[{i}]"
        if not isinstance(item, str):
            raise TypeError(f"{label} must be a string, got {item!r} ({_kind(item)})")
        if not item.strip() and not allow_none:
            raise ValueError(f"{name} must be a non-empty string or a list of them, got {item!r}")
        check_text(item, label)


def check_finite(value: Any, name: str, *, positive: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not _is_real(value):
        raise TypeError(f"{name} must be a number, got {value!r} ({_kind(value)})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_int(value: Any, name: str, *, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({_kind(value)})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_seed(value: Any, name: str = "seed") -> None:
    if value is None:
        return
    if not _is_int(value):
        raise TypeError(f"{name} must be an int (or None for a random one), got {value!r} "
                        f"({_kind(value)})")  # fmt: skip
    if not 0 <= value < _SEED_LIMIT:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")


def regular_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file (never opened), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a FIFO, device or socket); it is never opened"
    return None


def check_image(value: Any, name: str) -> None:
    """A path to a regular file, a PIL image or a uint8 [H, W, 3] array, not empty."""
    from PIL import Image

    if isinstance(value, str | os.PathLike):
        problem = regular_file_problem(Path(value))
        if problem == "does not exist":
            raise FileNotFoundError(f"{name} {str(value)!r} does not exist")
        if problem is not None:
            raise ValueError(f"{name} {str(value)!r} {problem}")
        from mugv_infer._media import load_image

        load_image(value)  # decodes now: an unreadable file fails before any work
    elif isinstance(value, Image.Image):
        if 0 in value.size:
            raise ValueError(f"{name} is an empty image of size {value.size}")
    elif isinstance(value, np.ndarray):
        if value.ndim != 3 or 0 in value.shape:
            raise ValueError(
                f"{name} array must be a non-empty uint8 [H, W, 3], got {tuple(value.shape)}"
            )
    else:
        raise TypeError(
            f"{name} must be a file path, a PIL image or a uint8 [H, W, 3] array, got "
            f"{_kind(value)}"
        )


def _check_tensor(value: Any, name: str, ndim: int, *, finite: bool = True) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_kind(value)}")
    if value.ndim != ndim or 0 in value.shape:
        raise ValueError(f"{name} must be a non-empty {ndim}-D tensor, got {tuple(value.shape)}")
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} holds NaN or infinite values")


def check_output_path(value: Any, output_type: Any) -> None:
    if value is None:
        return
    paths = [value] if isinstance(value, str | os.PathLike) else value
    if not isinstance(paths, Sequence) or isinstance(paths, bytes):
        raise TypeError(f"output_path must be a path, a folder or a list of paths, got "
                        f"{_kind(value)}")  # fmt: skip
    seen: dict[Path, int] = {}
    for i, p in enumerate(paths):
        if not isinstance(p, str | os.PathLike):
            raise TypeError(f"output_path[{i}] must be a path, got {p!r} ({_kind(p)})")
        path = Path(p)
        if not isinstance(value, str | os.PathLike):  # a list: one file each
            if path.suffix.lower() != ".mp4":
                path = path.with_name(path.name + ".mp4")
            key = path.resolve()
            if key in seen:
                raise ValueError(
                    f"output_path[{seen[key]}] and output_path[{i}] are the same file "
                    f"{str(path)!r}; each clip needs its own path"
                )
            seen[key] = i
            if path.is_dir():
                raise IsADirectoryError(f"output_path[{i}] {str(path)!r} is a folder")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise NotADirectoryError(
                        f"output_path {str(p)!r}: {str(parent)!r} is a file, not a folder"
                    )
                break


def check_call_arguments(args: Mapping[str, Any]) -> None:
    """Check ``MUGVPipeline.__call__``'s arguments (its ``locals()``) before any work."""
    check_prompts(args["prompt"], "prompt")
    has_images = args.get("image") is not None or args.get("images") is not None
    if args.get("image") is not None and args.get("images") is not None:
        raise ValueError("give image= (first frame) or images= (any frames), not both")
    if has_images and (args.get("cond_latents") is not None or args.get("cond_mask") is not None):
        raise ValueError(
            "give conditioning images (image= / images=) or latents (cond_latents= / "
            "cond_mask=), not both"
        )
    negative = args.get("negative_prompt")
    if negative is not None:
        check_prompts(negative, "negative_prompt", allow_none=True)
    if args.get("image") is not None:
        check_image(args["image"], "image")
    images = args.get("images")
    if images is not None:
        if not isinstance(images, Mapping):
            raise TypeError(f"images must be a dict frame index -> image, got {_kind(images)}")
        for index, img in images.items():
            if not _is_int(index):
                raise TypeError(f"images keys must be int frame indices, got {index!r}")
            check_image(img, f"images[{index}]")
    if args.get("negative_embedding") is not None:
        _check_tensor(args["negative_embedding"], "negative_embedding", 2)
    for name in ("aspect", "resolution"):
        if not isinstance(args.get(name), str):
            raise TypeError(f"{name} must be a string such as '16:9' / '720p', got "
                            f"{args.get(name)!r} ({_kind(args.get(name))})")  # fmt: skip
    duration = args.get("duration")
    if not (isinstance(duration, str) or _is_int(duration)):
        raise TypeError(f"duration must be '5s', '3s' or an int frame count, got {duration!r} "
                        f"({_kind(duration)})")  # fmt: skip
    if _is_int(duration) and duration < 1:
        raise ValueError(f"duration must be >= 1 frame, got {duration}")
    for name in ("height", "width"):
        check_int(args.get(name), name, minimum=8, optional=True)
    check_int(args.get("steps"), "steps", minimum=1, optional=True)
    guidance = args.get("guidance")
    if guidance is not None:
        if _is_real(guidance):
            check_finite(guidance, "guidance")
        elif hasattr(guidance, "needs_uncond"):
            for attr in ("scale", "guidance_scale"):
                if hasattr(guidance, attr):
                    check_finite(getattr(guidance, attr), f"guidance.{attr}")
        else:
            raise TypeError(f"guidance must be a number, a Guidance or None, got "
                            f"{guidance!r} ({_kind(guidance)})")  # fmt: skip
    check_seed(args.get("seed"))
    generator = args.get("generator")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {_kind(generator)}")
    check_finite(args.get("fps"), "fps", positive=True)
    check_finite(args.get("aes_score"), "aes_score", optional=True)
    latents, mask = args.get("cond_latents"), args.get("cond_mask")
    if (latents is None) != (mask is None):
        raise ValueError("give both cond_latents and cond_mask, or neither")
    if latents is not None:
        _check_tensor(latents, "cond_latents", 5)
        _check_tensor(mask, "cond_mask", 2)
    output_type = args.get("output_type")
    if output_type not in _OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {_OUTPUT_TYPES}, got {output_type!r}")
    check_output_path(args.get("output_path"), output_type)
    if not isinstance(args.get("progress"), bool):
        raise TypeError(f"progress must be True or False, got {args.get('progress')!r}")
    callback = args.get("callback")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {_kind(callback)}")


def check_load_arguments(args: Mapping[str, Any]) -> None:
    """Check ``MUGVPipeline.from_pretrained``'s arguments (its ``locals()``) before loading."""
    source = args.get("repo_or_dir")
    if not isinstance(source, str | os.PathLike) or not str(source).strip():
        raise TypeError(f"repo_or_dir must be a Hub repo id or a folder, got {source!r}")
    for name in ("dtype", "text_encoder_dtype"):
        value = args.get(name)
        if value is not None and not isinstance(value, torch.dtype):
            raise TypeError(
                f"{name} must be a torch.dtype such as torch.bfloat16, got {value!r} "
                f"({_kind(value)})"
            )
    device = args.get("device")
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device {device!r} is not a torch device ({exc})") from exc
    offload = args.get("offload")
    if offload not in (None, "model", "block"):
        raise ValueError(f"offload must be None, 'model' or 'block', got {offload!r}")
    text_encoder = args.get("text_encoder")
    if text_encoder is not None and not (
        isinstance(text_encoder, str | os.PathLike) or callable(text_encoder)
    ):
        raise TypeError(
            f"text_encoder must be a Hub id, a folder or an encoder, got {_kind(text_encoder)}"
        )
    if not isinstance(args.get("local_files_only", False), bool):
        raise TypeError("local_files_only must be True or False")
