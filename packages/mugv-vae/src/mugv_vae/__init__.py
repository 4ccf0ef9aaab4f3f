"""The MUG-V video VAE: 8x8x8 compression to 24 latent channels; loads the official `vae.pt`.

Entry points:
- ``VAEConfig`` with ``VAEConfig.preset("mugv")`` (official topology) and ``"debug"``.
- ``VideoVAE``: ``encode`` / ``decode`` / ``encode_image`` / ``latent_shape``,
  ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` / ``from_official``.
- ``LATENT_SHIFT``, ``LATENT_SCALE`` (per-channel latent statistics), ``SCALING_FACTOR``.
- Losses: ``VAELoss`` (+ ``LossWeights``), ``adaptive_l1``, ``saliency_weights``, ``kl_loss``,
  ``LPIPS`` (weights from a path), ``PatchDiscriminator3D``, ``hinge_d_loss``, ``hinge_g_loss``.
- Training: ``TrainConfig`` and ``VAETrainer`` (``mugv-vae train``).
- Evaluation: ``evaluate_folder``, ``psnr_video``, ``ssim_video`` (``mugv-vae eval``).
- Video files: ``read_video``, ``write_video`` (PyAV).

Everything not listed in ``__all__`` is private.
"""

from mugv_vae._quiet import quiet_third_party_imports as _quiet_imports

with _quiet_imports():  # third-party import noise only, see _quiet
    from mugv_vae._video_io import read_video, write_video
    from mugv_vae.config import LATENT_SCALE, LATENT_SHIFT, SCALING_FACTOR, VAEConfig
    from mugv_vae.evaluation import evaluate_folder, psnr_video, ssim_video
    from mugv_vae.losses import (
        LPIPS,
        LossWeights,
        PatchDiscriminator3D,
        VAELoss,
        adaptive_l1,
        hinge_d_loss,
        hinge_g_loss,
        kl_loss,
        saliency_weights,
    )
    from mugv_vae.model import VideoVAE
    from mugv_vae.training import TrainConfig, VAETrainer

__version__ = "0.1.0"

__all__ = [
    "LATENT_SCALE",
    "LATENT_SHIFT",
    "LPIPS",
    "SCALING_FACTOR",
    "LossWeights",
    "PatchDiscriminator3D",
    "TrainConfig",
    "VAEConfig",
    "VAELoss",
    "VAETrainer",
    "VideoVAE",
    "__version__",
    "adaptive_l1",
    "evaluate_folder",
    "hinge_d_loss",
    "hinge_g_loss",
    "kl_loss",
    "psnr_video",
    "read_video",
    "saliency_weights",
    "ssim_video",
    "write_video",
]
