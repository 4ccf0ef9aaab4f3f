"""Vision-language model stages: captioner and artifact filter (paper §2.1).

The paper captions with a fine-tuned Qwen2-VL (72B distilled into 7B) and filters heavy
post-processing, speed changes and camera shake with a proprietary multimodal LLM. This
backend runs any transformers image-text-to-text model (``AutoProcessor`` +
``AutoModelForImageTextToText``: Qwen2-VL, LLaVA, ...) on a clip's sampled frames given as
a multi-image chat turn, greedy decoding. The artifact filter flags a clip when the
model's answer starts with "yes", passes it on "no"; any other answer does not parse and
follows ``captions.on_unparsable`` (default: the clip is dropped, the answer in the reason).
Captions: an empty answer does not parse either.

vLLM is an optional, GPU-only backend (``captions.backend="vllm"``): it is not a declared
dependency of mugv-data, because its wheels pin their own torch build, which would fork
the workspace's torch. It is imported by name, only when that backend is chosen, and a
missing install is one clear error naming ``pip install vllm``.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

import numpy as np

from mugv_data.config import CaptionConfig

_YES_NO = re.compile(r"^[\W_]*(yes|no)\b", re.IGNORECASE)


def _import_vllm() -> ModuleType:
    """The optional vLLM backend, imported by name (not declared: see the module docstring)."""
    try:
        return importlib.import_module("vllm")
    except ImportError:
        raise ImportError(
            "captions.backend='vllm' needs vLLM installed where the model stage runs "
            "(pip install vllm); or set captions.backend='transformers'"
        ) from None


def parse_yes_no(answer: str) -> bool | None:
    """True for an answer starting with "yes", False for "no", None if it is neither."""
    m = _YES_NO.match(answer or "")
    return None if m is None else m.group(1).lower() == "yes"


class VLMStage:
    """A captioner / artifact judge around a transformers vision-language model.

    ``*_batch`` methods run several clips in one left-padded ``generate`` call (greedy, so
    a batch gives the answers of one-at-a-time calls); ``backend="vllm"`` hands the same
    chat prompts to a vLLM engine instead (``from_pretrained`` only).
    """

    def __init__(
        self,
        model,
        processor,
        *,
        caption_prompt: str = CaptionConfig.caption_prompt,
        artifact_prompt: str = CaptionConfig.artifact_prompt,
        max_new_tokens: int = 96,
        backend: str = "transformers",
    ) -> None:
        self.model = model.eval() if backend == "transformers" else model
        self.processor = processor
        self.caption_prompt = caption_prompt
        self.artifact_prompt = artifact_prompt
        self.max_new_tokens = max_new_tokens
        self.backend = backend

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, device: str = "cpu", backend: str = "transformers", **kwargs
    ) -> VLMStage:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(name_or_path)
        if backend == "vllm":
            vllm = _import_vllm()
            # vLLM places the engine on the GPUs this process sees (a Ray actor's own).
            return cls(vllm.LLM(model=name_or_path), processor, backend="vllm", **kwargs)
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(name_or_path).to(device)
        return cls(model, processor, **kwargs)

    @classmethod
    def from_config(cls, cfg: CaptionConfig, *, device: str = "cpu") -> VLMStage:
        if not cfg.model:
            raise ValueError("captions.model is not set")
        return cls.from_pretrained(
            cfg.model,
            device=device,
            backend=cfg.backend,
            caption_prompt=cfg.caption_prompt,
            artifact_prompt=cfg.artifact_prompt,
            max_new_tokens=cfg.max_new_tokens,
        )

    def _prompt(self, n_images: int, prompt: str) -> str:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
        return self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )

    def ask_batch(self, clips: list[list[np.ndarray]], prompt: str) -> list[str]:
        """One chat turn per clip (its frames as images, then ``prompt``); decoded answers."""
        from PIL import Image

        if not clips:
            return []
        images = [[Image.fromarray(f) for f in frames] for frames in clips]
        texts = [self._prompt(len(im), prompt) for im in images]
        if self.backend == "vllm":
            params = _import_vllm().SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens)
            reqs = [
                {"prompt": t, "multi_modal_data": {"image": im}} for t, im in zip(texts, images)
            ]
            return [o.outputs[0].text.strip() for o in self.model.generate(reqs, params)]
        import torch

        tok = getattr(self.processor, "tokenizer", None)
        side = getattr(tok, "padding_side", None)
        if tok is not None:
            tok.padding_side = "left"  # generation continues every row from its last token
        try:
            inputs = self.processor(
                text=texts,
                images=[im for ims in images for im in ims],
                padding=len(texts) > 1,
                return_tensors="pt",
            )
        finally:
            if tok is not None and side is not None:
                tok.padding_side = side
        inputs = inputs.to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [a.strip() for a in self.processor.batch_decode(new, skip_special_tokens=True)]

    def ask(self, frames: list[np.ndarray], prompt: str) -> str:
        """One chat turn: the frames as images, then ``prompt``; returns the decoded answer."""
        return self.ask_batch([frames], prompt)[0]

    def caption(self, frames: list[np.ndarray]) -> str:
        return self.ask(frames, self.caption_prompt)

    def caption_batch(self, clips: list[list[np.ndarray]]) -> list[str]:
        return self.ask_batch(clips, self.caption_prompt)

    def has_artifacts(self, frames: list[np.ndarray]) -> tuple[bool | None, str]:
        """(flag, answer): flag True for "yes", False for "no", None if it is neither."""
        return self.artifact_batch([frames])[0]

    def artifact_batch(self, clips: list[list[np.ndarray]]) -> list[tuple[bool | None, str]]:
        return [(parse_yes_no(a), a) for a in self.ask_batch(clips, self.artifact_prompt)]
