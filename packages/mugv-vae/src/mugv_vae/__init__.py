"""The MUG-V video VAE: 8x8x8 video VAE with 24 latent channels; loads the official `vae.pt`.

Entry points are listed in ``__all__``; everything not listed there is private.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
