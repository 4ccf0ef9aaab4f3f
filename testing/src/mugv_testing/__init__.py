"""Private test support shared by every package of the MUG-V workspace (not published).

Entry points:
- ``assert_close`` and ``TOLERANCES``: dtype-aware comparisons that report relative
  and maximum absolute error.
- ``build_hf_cache``: writes a Hugging Face cache in the standard layout so
  ``hf_hub_download`` and ``snapshot_download`` resolve offline.
- ``FakeHub``: a loopback HTTP server that accepts ``create_repo`` and ``upload_folder``.
- ``run_distributed``: runs a function in N processes over gloo, like ``torchrun``.

The pytest plugin (``mugv_testing.plugin``) registers the ``gpu``, ``distributed`` and
``slow`` markers and is loaded automatically through the ``pytest11`` entry point.
"""

from mugv_testing._distributed import run_distributed
from mugv_testing._fake_hub import FakeHub
from mugv_testing._hf_cache import build_hf_cache, offline_hf_cache
from mugv_testing._tolerance import TOLERANCES, Tolerance, assert_close

__all__ = [
    "TOLERANCES",
    "FakeHub",
    "Tolerance",
    "assert_close",
    "build_hf_cache",
    "offline_hf_cache",
    "run_distributed",
]
