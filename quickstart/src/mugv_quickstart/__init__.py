"""MUG-V quickstart: synthesize captioned clips, curate, train a debug VAE and DiT, generate.

Entry point: the ``mugv-quickstart`` command (``mugv_quickstart.cli:main``).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
