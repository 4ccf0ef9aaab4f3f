"""MUG-V data curation: raw videos to training shards, local engine or Ray.

Entry points:
- Shards (what mugv-train streams): ``ShardWriter``, ``open_shards`` -> ``ShardSet``,
  ``ShardError``.
"""

from mugv_data.config import CurationConfig
from mugv_data.official import export_official_csv, import_official_csv
from mugv_data.pipeline import Pipeline, curate
from mugv_data.shards import ShardError, ShardSet, ShardWriter, open_shards
from mugv_data.stages.encode import encode_clips

__version__ = "0.1.0"

__all__ = [
    "CurationConfig",
    "Pipeline",
    "ShardError",
    "ShardSet",
    "ShardWriter",
    "__version__",
    "curate",
    "encode_clips",
    "export_official_csv",
    "import_official_csv",
    "open_shards",
]
