"""`TextEncoder`: T5-XXL with the official tokenisation, or any Hugging Face encoder.

Dimension legend: B prompts, S tokens (max_length, 300 for T5), E embedding width.

Official behaviour (reference §C): ``DeepFloyd/t5-v1_1-xxl`` loaded as ``T5EncoderModel``
in float32, ``AutoTokenizer`` with ``max_length=300``, ``padding="max_length"``,
``truncation=True`` and special tokens (the EOS ``</s>`` counts in the mask); the output
is ``last_hidden_state`` computed with the attention mask.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

T5_XXL = "DeepFloyd/t5-v1_1-xxl"


def check_prompts(prompts: Any, name: str = "prompts") -> list[str]:
    """``prompts`` as a non-empty list of valid Unicode strings, or a TypeError /
    ValueError naming the offending prompt (a lone surrogate such as ``"\\ud800"`` cannot
    be tokenised or written anywhere)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    elif isinstance(prompts, list | tuple):
        prompts = list(prompts)
    else:
        raise TypeError(
            f"{name} must be a string or a list of strings, got {type(prompts).__name__}"
        )
    if not prompts:
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got []")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"{name}[{i}] must be a string, got {p!r} ({type(p).__name__})")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = p[exc.start]
            raise ValueError(
                f"{name}[{i}] holds a lone surrogate U+{ord(bad):04X} at character "
                f"{exc.start}: not valid Unicode text; fix the prompt's encoding"
            ) from None
    return prompts


class TextEncoder:
    """Encode prompts to (embeddings [B, S, E] float, mask [B, S] bool).

    ``name_or_path`` is a Hub id or a local folder with a tokenizer and an encoder model.
    T5 checkpoints load as ``T5EncoderModel`` (encoder only); other encoder-decoder models
    use their encoder; anything else loads with ``AutoModel`` and its ``last_hidden_state``.
    Loading goes through transformers, so the Hugging Face cache and offline mode apply.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str] = T5_XXL,
        *,
        max_length: int = 300,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        local_files_only: bool = False,
        revision: str | None = None,
        **from_pretrained_kwargs: Any,
    ) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if not isinstance(dtype, torch.dtype):
            raise TypeError(
                f"dtype must be a torch.dtype such as torch.float32, got {dtype!r} "
                f"({type(dtype).__name__})"
            )
        if not isinstance(name_or_path, str | os.PathLike) or not str(name_or_path).strip():
            raise TypeError(f"name_or_path must be a Hub id or a folder path, got {name_or_path!r}")
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device {device!r} is not a torch device ({exc})") from exc
        from mugv_dit._hub import HubAccess

        hub = None
        if not Path(name_or_path).exists():  # a Hub id: decide offline / reachable once
            hub = HubAccess.check(local_files_only)
            local_files_only = hub.cache_only  # no retry loop without network
        kwargs = {
            "local_files_only": local_files_only,
            "revision": revision,
            **from_pretrained_kwargs,
        }
        try:
            config = AutoConfig.from_pretrained(name_or_path, **kwargs)
        except OSError as exc:
            if hub is None or not (hub.cache_only or hub.caused(exc)):
                raise
            raise hub.error(str(name_or_path), None, exc) from None
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        if config.model_type in ("t5", "mt5", "umt5"):
            model = T5EncoderModel.from_pretrained(name_or_path, dtype=dtype, **kwargs)
        else:
            model = AutoModel.from_pretrained(name_or_path, dtype=dtype, **kwargs)
            if getattr(config, "is_encoder_decoder", False):
                model = model.get_encoder()
        self.model = model.to(device).eval().requires_grad_(False)
        self.max_length = max_length
        self.name_or_path = str(name_or_path)

    @property
    def dim(self) -> int:
        """Embedding width E (4096 for T5-XXL)."""
        cfg = self.model.config
        return int(getattr(cfg, "d_model", None) or cfg.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: str | list[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, padded to ``max_length`` (official tokenisation)."""
        prompts = check_prompts(prompts)
        return self.tokenizer(
            prompts,
            max_length=self.max_length,
            padding="max_length",
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def __call__(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (emb [B, S, E] in the encoder dtype, mask [B, S] bool incl. EOS)."""
        tokens = self.tokenize(prompts)
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        emb = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return emb, mask.bool()
