"""Third-party noise printed while importing our engines, silenced for that import only.

With torchao installed (mugv-infer's ``quant`` extra), ``import diffusers``'s model code
prints on every fresh interpreter: torchao's ``SyntaxWarning: invalid escape sequence``
(a docstring, shown while its source compiles, i.e. every time under
``PYTHONDONTWRITEBYTECODE``), two torch pytree lines ("<enum ...> is an Enum subclass ...
register_constant() on Enum subclasses is deprecated", torchao's registration) and
diffusers' "Unable to import `torchao` Tensor objects". None is about the caller's code
or actionable by them (upstream: torchao's docstring escape and its ``register_constant``
calls). Only these categories and loggers are silenced, only while the package imports;
filters and log levels are restored afterwards, so later warnings show as usual.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

#: Loggers whose import-time messages are the noise above.
NOISY_LOGGERS = ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")


@contextlib.contextmanager
def quiet_third_party_imports() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=SyntaxWarning, module=r".*torchao")
            warnings.filterwarnings(
                "ignore", category=DeprecationWarning, module=r"(torchao|diffusers)(\.|$)"
            )
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
