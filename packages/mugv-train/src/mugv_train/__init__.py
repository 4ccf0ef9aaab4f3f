"""MUG-V training: Megatron-Core training of MUG-DiT with flow matching.

Entry points:
- ``train(config) -> TrainResult`` (``mugv_train.loop``): run or resume a training run,
  from Python or under torchrun; ``TrainResult.losses`` / ``.plot()`` / ``.export_dir``.
- Configs: ``TrainConfig`` with sections ``DataConfig``, ``ParallelConfig``, ``OptimConfig``,
  ``ObjectiveConfig``, ``CheckpointConfig``, ``LogConfig``, ``LoRAConfig``, ``EMAConfig``;
  ``apply_overrides(config, ["optim.lr=1e-4", ...])``.
- Recipes (functions returning a config): ``recipes.debug``, ``stage1``, ``stage2``,
  ``stage3``, ``sft``, ``dpo``, ``kto``, ``lora``; ``RECIPES`` by name.
- Objectives: ``mugv_train.objectives`` (flow matching, task mix, DPO, KTO).
- Megatron model and converter: ``MegatronMUGDiT``, ``mugdit_layer_spec``,
  ``dit_to_megatron`` / ``megatron_to_dit``; ``mugv_train.parallel`` for TP sharding,
  torch_dist layer stacking and process groups. The step runs on Megatron-Core's engine
  (``get_forward_backward_func``, ``DistributedDataParallel``, ``finalize_model_grads``,
  ``get_megatron_optimizer``).
- ``grow_width`` (2B -> 10B width growth), ``post_hoc_ema``, ``export_mugv_dit``,
  ``export_lora`` (LoRA adapters as diffusers-layout ``lora.safetensors``),
  ``write_synthetic_shards``, ``dit_flops_per_sample``; the ``mugv-train`` command.

Everything not listed in ``__all__`` is private.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mugv_train.checkpointing import (
        CheckpointError,
        CheckpointMismatchError,
        UnsafeCheckpointError,
        latest_checkpoint,
    )
    from mugv_train.config import (
        CheckpointConfig,
        DataConfig,
        EMAConfig,
        LogConfig,
        LoRAConfig,
        ObjectiveConfig,
        OptimConfig,
        ParallelConfig,
        TrainConfig,
        apply_overrides,
    )
    from mugv_train.ema import OnlineEMA, post_hoc_ema, post_hoc_ema_from_exports
    from mugv_train.flops import dit_flops_per_sample, dit_forward_flops
    from mugv_train.growth import grow_width
    from mugv_train.loop import (
        NULL_TEXT_FILE,
        NonFiniteLossError,
        TrainResult,
        export_mugv_dit,
        null_text_embedding,
        train,
    )
    from mugv_train.lora import export_lora
    from mugv_train.parallel import (
        MegatronMUGDiT,
        dit_to_megatron,
        megatron_to_dit,
        mugdit_layer_spec,
    )
    from mugv_train.recipes import RECIPES
    from mugv_train.schedules import lr_at
    from mugv_train.synthetic import write_synthetic_shards

# Imported on first use (PEP 562): `mugv-train --help` and light imports stay fast and
# quiet, without loading torch, Megatron or diffusers.
_EXPORTS: dict[str, str] = {
    "apply_overrides": "mugv_train.config",
    "CheckpointConfig": "mugv_train.config",
    "CheckpointError": "mugv_train.checkpointing",
    "CheckpointMismatchError": "mugv_train.checkpointing",
    "DataConfig": "mugv_train.config",
    "dit_flops_per_sample": "mugv_train.flops",
    "dit_forward_flops": "mugv_train.flops",
    "dit_to_megatron": "mugv_train.parallel",
    "EMAConfig": "mugv_train.config",
    "export_lora": "mugv_train.lora",
    "export_mugv_dit": "mugv_train.loop",
    "grow_width": "mugv_train.growth",
    "latest_checkpoint": "mugv_train.checkpointing",
    "LogConfig": "mugv_train.config",
    "LoRAConfig": "mugv_train.config",
    "lr_at": "mugv_train.schedules",
    "megatron_to_dit": "mugv_train.parallel",
    "MegatronMUGDiT": "mugv_train.parallel",
    "mugdit_layer_spec": "mugv_train.parallel",
    "NonFiniteLossError": "mugv_train.loop",
    "null_text_embedding": "mugv_train.loop",
    "NULL_TEXT_FILE": "mugv_train.loop",
    "ObjectiveConfig": "mugv_train.config",
    "OnlineEMA": "mugv_train.ema",
    "OptimConfig": "mugv_train.config",
    "ParallelConfig": "mugv_train.config",
    "post_hoc_ema": "mugv_train.ema",
    "post_hoc_ema_from_exports": "mugv_train.ema",
    "RECIPES": "mugv_train.recipes",
    "train": "mugv_train.loop",
    "TrainConfig": "mugv_train.config",
    "TrainResult": "mugv_train.loop",
    "UnsafeCheckpointError": "mugv_train.checkpointing",
    "write_synthetic_shards": "mugv_train.synthetic",
}

__version__ = "0.1.0"

__all__ = [
    "NULL_TEXT_FILE",
    "RECIPES",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointMismatchError",
    "DataConfig",
    "EMAConfig",
    "LoRAConfig",
    "LogConfig",
    "MegatronMUGDiT",
    "NonFiniteLossError",
    "ObjectiveConfig",
    "OnlineEMA",
    "OptimConfig",
    "ParallelConfig",
    "TrainConfig",
    "TrainResult",
    "UnsafeCheckpointError",
    "__version__",
    "apply_overrides",
    "dit_flops_per_sample",
    "dit_forward_flops",
    "dit_to_megatron",
    "export_lora",
    "export_mugv_dit",
    "grow_width",
    "latest_checkpoint",
    "lr_at",
    "megatron_to_dit",
    "mugdit_layer_spec",
    "null_text_embedding",
    "post_hoc_ema",
    "post_hoc_ema_from_exports",
    "train",
    "write_synthetic_shards",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mugv_train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
