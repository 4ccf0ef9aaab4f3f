"""`QuickstartConfig`: everything one quickstart run does, with two presets.

``full`` is the README run (about 13 minutes on 2 CPU cores); ``fast`` is the reduced
run the tests use (same stages, fewer clips and steps). Training lengths are step
counts, not time budgets, so a seed gives the same run on any machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from mugv_quickstart.synthetic import SetConfig


@dataclass(frozen=True)
class QuickstartConfig:
    """One quickstart run. Build with ``QuickstartConfig.preset("full" | "fast")``."""

    seed: int = 0
    """Seeds the data, both trainings, the initial noise of generation."""
    data: SetConfig = field(default_factory=SetConfig)
    """The synthetic captioned set."""
    text_max_length: int = 24
    """Text-encoder tokens per caption (the captions are at most ~15 tokens)."""

    vae_steps: int = 800
    """Optimiser steps of the debug VAE, the trunk steps included."""
    vae_trunk_steps: int = 300
    """The first steps train the VAE's 2D trunk alone, as an image autoencoder on 16 random
    frames per step (mugv-vae ``TrainConfig.trunk_steps``), like the paper's start from a
    trained image VAE (SDXL's). A from-scratch VAE kept one bit of hue (red, green and
    yellow objects decoded alike, even after 1500 steps); the trunk alone learns all four
    hues in these steps. 0: train the whole VAE from scratch."""
    vae_freeze_trunk: bool = True
    """After the trunk steps, train the temporal stage only (``freeze_trunk``). Trained
    jointly with the trunk (feature term included), the reconstructions lost the object's
    colour altogether (0% after 900 steps, against 100% frozen)."""
    vae_feature_weight: float = 10.0
    """Weight of mugv-vae's feature-matching term (``LossWeights.feature``): the temporal
    stage's decode of each latent against the trunk's features. Without it the fresh
    temporal stage decoded grey objects after 300 steps on the trained trunk; with it
    (300 trunk + 500 video steps, seed 0) held-out reconstructions reach 26.9 dB and the
    right colour and direction on all 32 held-out clips (from scratch: 22.7 dB, 50%)."""
    vae_blocks: int = 1
    """Blocks per stage of the debug VAE (its trunk's ``layers_per_block`` and the
    temporal ``temporal_num_res_blocks``; the preset has 2 and 4): same stages and widths,
    a step in 2/3 of the time, and no slower to learn the object in our runs."""
    vae_batch_size: int = 2
    vae_lr: float = 1e-3
    """On the same kept clips (seed 0), 500 steps at 1e-3 reconstructed held-out clips at
    22.7 dB and the right colour for 50% of them, 2e-3 at 22.0 dB and 25%."""
    vae_crop: tuple[int, int, int] = (16, 48, 64)
    """Training crops (frames, height, width): whole frames. Crops of a third of the frame
    mostly miss the 15 px object, and the VAE then learns the grey background only."""
    vae_adaptive_start: int | None = 0
    """Step from which mugv-vae's adaptive l1 (paper: saliency = temporal change of the
    Laplacian) replaces l1: the static background gets weight ~1, the moving object's
    edges and stripes most of the gradient."""
    vae_logvar_init: float | None = -6.0
    """``TrainConfig.posterior_logvar_init``: without it a fresh encoder's posterior noise
    (std 1) swamps its latents (std ~0.1) for far longer than this run lasts."""

    dit_steps: int = 2200
    """Optimiser steps of the debug DiT."""
    dit_batch_size: int = 16
    dit_lr: float = 1e-3
    dit_hidden_size: int = 288
    dit_depth: int = 2
    dit_num_heads: int = 4
    timestep_shift_scale: float | None = 16.0
    """Factor on the official resolution/length timestep shift ratio, in training
    (``ObjectiveConfig.timestep_shift_scale``) and sampling (``FlowEulerSampler.shift_scale``);
    ``None`` turns the shift off. The official ratio sqrt(H W / 512^2) sqrt(T) is 0.19 at
    48x64x3 latents, which moves training towards clean latents (t > 0.8 about 2% of the
    time); x16 gives 3.0 (720p 5 s clips get 7), so the high-noise steps where a sample's
    layout, colour and motion are decided are trained."""

    num_inference_steps: int = 20
    """Euler steps per generated clip."""
    guidance: float | None = 4.0
    """Classifier-free guidance scale against the null caption the DiT was trained with
    (caption dropout 0.1; mugv-train exports it); ``None``: no guidance."""
    num_eval_prompts: int = 32
    """Held-out clips whose captions are generated as T2V and as I2V (from the clip's first
    frame): the full set's 32 (each of the 16 held-out captions twice, different noise)."""

    def __post_init__(self) -> None:
        for name in ("vae_steps", "dit_steps", "num_inference_steps", "num_eval_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timestep_shift_scale is not None and self.timestep_shift_scale <= 0:
            raise ValueError(
                f"timestep_shift_scale must be > 0 (or None: no shift), got "
                f"{self.timestep_shift_scale}"
            )
        if not 0 <= self.vae_trunk_steps <= self.vae_steps:
            raise ValueError(
                f"vae_trunk_steps must be in [0, vae_steps={self.vae_steps}], got "
                f"{self.vae_trunk_steps}"
            )
        if self.vae_feature_weight < 0:
            raise ValueError(f"vae_feature_weight must be >= 0, got {self.vae_feature_weight}")
        if self.vae_blocks < 1:
            raise ValueError(f"vae_blocks must be >= 1, got {self.vae_blocks}")
        if self.guidance is not None and self.guidance < 1:
            raise ValueError(f"guidance must be >= 1 (or None: no guidance), got {self.guidance}")
        if self.dit_hidden_size % self.dit_num_heads:
            raise ValueError(
                f"dit_hidden_size ({self.dit_hidden_size}) must be divisible by dit_num_heads "
                f"({self.dit_num_heads})"
            )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> QuickstartConfig:
        """``full`` (the README run) or ``fast`` (the tests' reduced run), with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown quickstart preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of the whole config: a rerun into the same folder must match it."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


PRESETS: dict[str, QuickstartConfig] = {
    "full": QuickstartConfig(),
    "fast": QuickstartConfig(
        data=SetConfig(clips_per_train_combo=1, clips_per_heldout_combo=1),
        vae_steps=8,
        vae_trunk_steps=3,
        dit_steps=60,
        dit_batch_size=8,
        dit_hidden_size=96,
        dit_num_heads=2,
        num_inference_steps=4,
        num_eval_prompts=4,
    ),
}
