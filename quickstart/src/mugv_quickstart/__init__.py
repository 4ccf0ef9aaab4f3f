"""MUG-V quickstart: synthesize captioned clips, curate, train a debug VAE and DiT, generate.

Entry points:
- the ``mugv-quickstart`` command (``mugv_quickstart.cli:main``; ``python -m mugv_quickstart``);
- ``run_quickstart(out, config)`` and ``STAGES``; ``QuickstartConfig`` (presets ``full``,
  ``fast``);
- the synthetic set: ``SetConfig``, ``make_set``, ``render_clip``, ``load_set``;
- the measures: ``classify_colour``, ``estimate_direction``, ``agreement``, ``p_above_chance``, ``psnr``;
  latent-space caption probes ``fit_latent_probes`` (``LatentProbes``, ``LinearProbe``,
  ``latent_colour``, ``latent_motion``, ``caption_labels``).

Names are imported lazily, so ``import mugv_quickstart`` does not load torch (the command
sets OpenMP's environment before torch starts).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "QuickstartConfig": "mugv_quickstart.config",
    "run_quickstart": "mugv_quickstart.stages",
    "STAGES": "mugv_quickstart.stages",
    "SetConfig": "mugv_quickstart.synthetic",
    "make_set": "mugv_quickstart.synthetic",
    "render_clip": "mugv_quickstart.synthetic",
    "load_set": "mugv_quickstart.synthetic",
    "classify_colour": "mugv_quickstart.measure",
    "estimate_direction": "mugv_quickstart.measure",
    "agreement": "mugv_quickstart.measure",
    "p_above_chance": "mugv_quickstart.measure",
    "psnr": "mugv_quickstart.measure",
    "fit_latent_probes": "mugv_quickstart.latent_probe",
    "LatentProbes": "mugv_quickstart.latent_probe",
    "LinearProbe": "mugv_quickstart.latent_probe",
    "latent_colour": "mugv_quickstart.latent_probe",
    "latent_motion": "mugv_quickstart.latent_probe",
    "caption_labels": "mugv_quickstart.latent_probe",
}

__all__ = [
    "STAGES",
    "LatentProbes",
    "LinearProbe",
    "QuickstartConfig",
    "SetConfig",
    "__version__",
    "agreement",
    "caption_labels",
    "classify_colour",
    "estimate_direction",
    "fit_latent_probes",
    "latent_colour",
    "latent_motion",
    "load_set",
    "make_set",
    "p_above_chance",
    "psnr",
    "render_clip",
    "run_quickstart",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mugv_quickstart' has no attribute {name!r}")
