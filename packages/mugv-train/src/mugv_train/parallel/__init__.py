"""MUG-DiT on Megatron-Core: layer specs, the model (one chunk per virtual pipeline stage),
process groups, and the weight converter. The step itself (schedules, DDP, gradient
finalisation, optimizer) is Megatron-Core's, wired in ``mugv_train._engine``."""

from mugv_train.parallel._convert import (
    dit_to_megatron,
    megatron_to_dit,
    merge_tensor_parallel,
    shard_for_tensor_parallel,
    stack_layers,
    unstack_layers,
)
from mugv_train.parallel._layers import MUGDiTLayer, MUGDiTLayerSubmodules
from mugv_train.parallel._model import (
    MegatronMUGDiT,
    full_state_dict,
    load_full_state_dict,
    megatron_transformer_config,
    stage_layers,
)
from mugv_train.parallel._spec import mugdit_layer_spec
from mugv_train.parallel._state import init_distributed, seed_everything

__all__ = [
    "MUGDiTLayer",
    "MUGDiTLayerSubmodules",
    "MegatronMUGDiT",
    "dit_to_megatron",
    "full_state_dict",
    "init_distributed",
    "load_full_state_dict",
    "megatron_to_dit",
    "megatron_transformer_config",
    "merge_tensor_parallel",
    "mugdit_layer_spec",
    "seed_everything",
    "shard_for_tensor_parallel",
    "stack_layers",
    "stage_layers",
    "unstack_layers",
]
