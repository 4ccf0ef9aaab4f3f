"""MUG-DiT: the MUG-V diffusion transformer; loads the official ``dit.pt``.

Entry points:

- `DiTConfig` (``DiTConfig.preset("10b")``) and `MUGDiT`:
  ``model(x, timestep, text, text_mask=None, fps=None, x_mask=None, frame_indices=None)``
  -> float32 [B, 2C, T, H, W]; ``MUGDiT.from_pretrained`` / ``from_official`` /
  ``save_pretrained`` / ``push_to_hub``.
- `TextEncoder`: T5-XXL with the official tokenisation, or any Hugging Face encoder.
- Building blocks: `TimestepEmbedder`, `CaptionEmbedder`, `PatchEmbed3D`, `FinalLayer`,
  `MUGDiTBlock`, `RotaryEmbedding3D`, `rope_3d_freqs`, `apply_rope_3d`, `timestep_embedding`.
- Fused ops (``backend="torch" | "triton" | "auto"``): `modulated_layernorm`,
  `gated_residual`, `qk_norm_rope`; attention backends: `attention`, `cross_attention`.
- `convert_official_checkpoint`, `resolve_pretrained` (a Hub id or a path -> the weight
  files to read, through the Hugging Face cache), `HubAccess` (Hub downloads that fail fast
  with one line: offline, unreachable, not found, not cached) and the ``mugv-dit`` command
  line.

Everything not listed in ``__all__`` is private.
"""

from mugv_dit._quiet import quiet_third_party_imports as _quiet_imports

with _quiet_imports():  # third-party import noise only, see _quiet
    from mugv_dit._attention import attention, cross_attention
    from mugv_dit._checkpoint import convert_official_checkpoint, resolve_pretrained
    from mugv_dit._hub import HubAccess
    from mugv_dit.config import PRESETS, DiTConfig
    from mugv_dit.kernels import gated_residual, modulated_layernorm, qk_norm_rope
    from mugv_dit.layers.attention import CrossAttention, RMSNorm, SelfAttention
    from mugv_dit.layers.blocks import MUGDiTBlock
    from mugv_dit.layers.embedders import (
        CaptionEmbedder,
        FinalLayer,
        Mlp,
        PatchEmbed3D,
        TimestepEmbedder,
        timestep_embedding,
    )
    from mugv_dit.layers.rope import RotaryEmbedding3D, apply_rope_3d, rope_3d_freqs
    from mugv_dit.model import MUGDiT
    from mugv_dit.text import TextEncoder

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CaptionEmbedder",
    "CrossAttention",
    "DiTConfig",
    "FinalLayer",
    "HubAccess",
    "MUGDiT",
    "MUGDiTBlock",
    "Mlp",
    "PatchEmbed3D",
    "RMSNorm",
    "RotaryEmbedding3D",
    "SelfAttention",
    "TextEncoder",
    "TimestepEmbedder",
    "__version__",
    "apply_rope_3d",
    "attention",
    "convert_official_checkpoint",
    "cross_attention",
    "gated_residual",
    "modulated_layernorm",
    "qk_norm_rope",
    "resolve_pretrained",
    "rope_3d_freqs",
    "timestep_embedding",
]
