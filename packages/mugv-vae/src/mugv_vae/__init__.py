"""The MUG-V video VAE: 8x8x8 compression to 24 latent channels; loads the official `vae.pt`.

Entry points:
- ``VAEConfig`` with ``VAEConfig.preset("mugv")`` (official topology) and ``"debug"``.
- ``VideoVAE``: ``encode`` / ``decode`` / ``encode_image`` / ``latent_shape``,
  ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` / ``from_official``.
- ``LATENT_SHIFT``, ``LATENT_SCALE`` (per-channel latent statistics), ``SCALING_FACTOR``.

Everything not listed in ``__all__`` is private.
"""

from mugv_vae.config import LATENT_SCALE, LATENT_SHIFT, SCALING_FACTOR, VAEConfig
from mugv_vae.model import VideoVAE

__version__ = "0.1.0"

__all__ = [
    "LATENT_SCALE",
    "LATENT_SHIFT",
    "SCALING_FACTOR",
    "VAEConfig",
    "VideoVAE",
    "__version__",
]
