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
  ``write_synthetic_shards``, ``dit_flops_per_sample``; the ``mugv-train`` command.

Everything not listed in ``__all__`` is private.
"""

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
from mugv_train.parallel import (
    MegatronMUGDiT,
    dit_to_megatron,
    megatron_to_dit,
    mugdit_layer_spec,
)
from mugv_train.recipes import RECIPES
from mugv_train.schedules import lr_at
from mugv_train.synthetic import write_synthetic_shards

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
