"""Vision-language model stages: captioner and artifact filter (paper §2.1).

The paper captions with a fine-tuned Qwen2-VL (72B distilled into 7B) and filters heavy
post-processing, speed changes and camera shake with a proprietary multimodal LLM. This
backend runs any transformers image-text-to-text model (``AutoProcessor`` +
``AutoModelForImageTextToText``: Qwen2-VL, LLaVA, ...) on a clip's sampled frames given as
a multi-image chat turn, greedy decoding. The artifact filter flags a clip when the
model's answer starts with "yes".
"""

from __future__ import annotations

import numpy as np

from mugv_data.config import CaptionConfig


class VLMStage:
    """A captioner / artifact judge around a transformers vision-language model."""

    def __init__(
        self,
        model,
        processor,
        *,
        caption_prompt: str = CaptionConfig.caption_prompt,
        artifact_prompt: str = CaptionConfig.artifact_prompt,
        max_new_tokens: int = 96,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.caption_prompt = caption_prompt
        self.artifact_prompt = artifact_prompt
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: str = "cpu", **kwargs) -> VLMStage:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(name_or_path)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path).to(device)
        return cls(model, processor, **kwargs)

    @classmethod
    def from_config(cls, cfg: CaptionConfig) -> VLMStage:
        if not cfg.model:
            raise ValueError("captions.model is not set")
        return cls.from_pretrained(
            cfg.model,
            caption_prompt=cfg.caption_prompt,
            artifact_prompt=cfg.artifact_prompt,
            max_new_tokens=cfg.max_new_tokens,
        )

    def ask(self, frames: list[np.ndarray], prompt: str) -> str:
        """One chat turn: the frames as images, then ``prompt``; returns the decoded answer."""
        import torch
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        inputs = self.processor(text=[text], images=images, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0].strip()

    def caption(self, frames: list[np.ndarray]) -> str:
        return self.ask(frames, self.caption_prompt)

    def has_artifacts(self, frames: list[np.ndarray]) -> tuple[bool, str]:
        answer = self.ask(frames, self.artifact_prompt)
        return answer.lower().lstrip(" \"'").startswith("yes"), answer
