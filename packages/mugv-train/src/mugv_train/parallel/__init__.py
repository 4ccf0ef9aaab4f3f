"""MUG-DiT on Megatron-Core: layer specs, the model, process groups, the pipeline schedule,
gradient reduction over TP/SP/CP/PP/DP, and the weight converter."""

from mugv_train.parallel._comm import copy_reduce_grad, gather_seq, split_seq
from mugv_train.parallel._convert import (
    dit_to_megatron,
    megatron_to_dit,
    merge_tensor_parallel,
    shard_for_tensor_parallel,
    stack_layers,
    unstack_layers,
)
from mugv_train.parallel._grads import clip_grad_norm, finalize_grads
from mugv_train.parallel._layers import MUGDiTLayer, MUGDiTLayerSubmodules
from mugv_train.parallel._model import (
    MegatronMUGDiT,
    full_state_dict,
    load_full_state_dict,
    megatron_transformer_config,
)
from mugv_train.parallel._pipeline import broadcast_from_last_stage, run_pipeline
from mugv_train.parallel._spec import mugdit_layer_spec
from mugv_train.parallel._state import init_distributed, seed_everything

__all__ = [
    "MUGDiTLayer",
    "MUGDiTLayerSubmodules",
    "MegatronMUGDiT",
    "broadcast_from_last_stage",
    "clip_grad_norm",
    "copy_reduce_grad",
    "dit_to_megatron",
    "finalize_grads",
    "full_state_dict",
    "gather_seq",
    "init_distributed",
    "load_full_state_dict",
    "megatron_to_dit",
    "megatron_transformer_config",
    "merge_tensor_parallel",
    "mugdit_layer_spec",
    "run_pipeline",
    "seed_everything",
    "shard_for_tensor_parallel",
    "split_seq",
    "stack_layers",
    "unstack_layers",
]
