"""MUG-DiT: the MUG-V diffusion transformer; loads the official `dit.pt`.

Entry points are listed in ``__all__``; everything not listed there is private.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
