"""The MUG-V video enhancer: a one-step Wan2.1-1.3B refiner with the official LoRA.

Entry points:
- ``MUGVEnhancer``: ``from_pretrained`` (official files or a saved folder),
  ``save_pretrained``, ``__call__(video, prompt, ...)`` -> ``EnhancementOutput``.
- ``EnhancerQuirks``: the official behaviours as options (bf16 input, uint8 truncation).
- ``WAN_NEGATIVE_PROMPT``, ``ENHANCE_PROMPT``: the official negative and example prompts.
"""

from mugv_infer.enhance.enhancer import (
    ENHANCE_PROMPT,
    WAN_NEGATIVE_PROMPT,
    EnhancementOutput,
    EnhancerQuirks,
    MUGVEnhancer,
)

__all__ = [
    "ENHANCE_PROMPT",
    "WAN_NEGATIVE_PROMPT",
    "EnhancementOutput",
    "EnhancerQuirks",
    "MUGVEnhancer",
]
