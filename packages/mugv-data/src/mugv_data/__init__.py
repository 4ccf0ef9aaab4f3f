"""MUG-V data curation: raw videos to training shards, local engine or Ray.

Entry points:
- Curation: ``curate(inputs, out_dir, config)`` / ``Pipeline``, configured by
  ``CurationConfig`` (presets ``paper`` and ``synthetic``; per-source ``SourceConfig``
  with ``SceneConfig``, ``SharpnessConfig``, ``MotionConfig``, ``AestheticConfig``,
  ``CaptionConfig``; and ``DedupConfig``, ``BalanceConfig``, ``BucketConfig``).
  ``InputItem`` describes one input, ``Models`` plugs model stages in as callables.
- The stages as functions (what both engines run): ``discover_inputs``, ``probe_stage``,
  ``scene_stage`` (``split_scenes`` -> ``SceneResult``), ``clip_stage``, ``finalize``.
- Stages as objects: ``AestheticPredictor`` (CLIP + MLP head), ``VLMStage`` (captioner
  and artifact filter on a transformers vision-language model).
- Model stages: ``ModelLoadError`` (a model that cannot load, raised before work).
- Pre-encoding: ``encode_clips(curated_dir, shard_dir, vae=..., text_encoder=...)`` (one
  process, or one torchrun rank of several), ``encode_clips_ray`` (Ray actors).
- Shards (what mugv-train streams): ``ShardWriter``, ``open_shards`` -> ``ShardSet``,
  ``ShardError``; the official CSV layout: ``import_official_csv``, ``export_official_csv``.
- Reports: ``summarize``, ``plot_stats``, ``explain``.
- Synthetic test videos: ``mugv_data.synthetic.make_synthetic_set``.
- CLI: ``mugv-data curate | encode | stats | inspect | export-csv | import-csv``.
"""

from mugv_data._model_stages import ModelLoadError
from mugv_data.config import (
    AestheticConfig,
    BalanceConfig,
    BucketConfig,
    CaptionConfig,
    CurationConfig,
    DedupConfig,
    MotionConfig,
    RayConfig,
    SceneConfig,
    SharpnessConfig,
    SourceConfig,
)
from mugv_data.official import export_official_csv, import_official_csv
from mugv_data.pipeline import (
    CurationResult,
    InputItem,
    Models,
    Pipeline,
    clip_stage,
    curate,
    discover_inputs,
    finalize,
    probe_stage,
    scene_stage,
)
from mugv_data.shards import (
    ShardError,
    ShardSet,
    ShardWriter,
    merge_manifest,
    open_shards,
    write_shard,
)
from mugv_data.stages.encode import encode_clips, encode_clips_ray
from mugv_data.stages.scenes import SceneResult, split_scenes
from mugv_data.stages.vlm import VLMStage
from mugv_data.stats import explain, summarize
from mugv_data.stats import plot as plot_stats

__version__ = "0.1.0"


def __getattr__(name: str):
    # The aesthetic predictor subclasses torch.nn.Module: imported on first use, so the
    # curation stages (and the Ray / process-pool workers running them) never import torch.
    if name == "AestheticPredictor":
        from mugv_data.stages.aesthetic import AestheticPredictor

        return AestheticPredictor
    raise AttributeError(f"module 'mugv_data' has no attribute {name!r}")


__all__ = [
    "AestheticConfig",
    "AestheticPredictor",
    "BalanceConfig",
    "BucketConfig",
    "CaptionConfig",
    "CurationConfig",
    "CurationResult",
    "DedupConfig",
    "InputItem",
    "ModelLoadError",
    "Models",
    "MotionConfig",
    "Pipeline",
    "RayConfig",
    "SceneConfig",
    "SceneResult",
    "ShardError",
    "ShardSet",
    "ShardWriter",
    "SharpnessConfig",
    "SourceConfig",
    "VLMStage",
    "__version__",
    "clip_stage",
    "curate",
    "discover_inputs",
    "encode_clips",
    "encode_clips_ray",
    "explain",
    "export_official_csv",
    "finalize",
    "import_official_csv",
    "merge_manifest",
    "open_shards",
    "plot_stats",
    "probe_stage",
    "scene_stage",
    "split_scenes",
    "summarize",
    "write_shard",
]
