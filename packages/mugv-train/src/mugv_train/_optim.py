"""The optimizer step: gradient reduction, clipping and AdamW, on CPU or with Megatron on GPU.

``TorchOptimizer`` (CPU / gloo, and GPU when ``distributed_optimizer`` is off): torch AdamW
on every rank, gradients finalised by :func:`mugv_train.parallel.finalize_grads` (TP / CP /
PP sums, DP mean through one flat all-reduce) and clipped by the global norm.

``MegatronOptimizer`` (CUDA): the model wrapped in Megatron-Core's
``DistributedDataParallel`` (contiguous fp32 ``main_grad`` buffers, bucketed reduce-scatter)
and ``get_megatron_optimizer`` with ``use_distributed_optimizer`` (ZeRO-1: optimizer state
and fp32 master weights sharded over DP x CP). The partial TP / CP / PP sums of
``finalize_grads`` run on ``main_grad`` first; DDP's ``finish_grad_sync`` then averages
over DP x CP, which is the DP mean because CP copies are equal by then. Megatron's clip
counts shared embedders once through the ``shared`` attribute set here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mugv_train.config import TrainConfig
from mugv_train.parallel import clip_grad_norm, finalize_grads
from mugv_train.parallel._grads import SHARED_EMBEDDERS


class TorchOptimizer:
    """torch AdamW with this package's gradient reduction (works on every backend)."""

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        self.model, self.config = model, config
        self.params = [p for p in model.parameters() if p.requires_grad]
        o = config.optim
        self.opt = torch.optim.AdamW(
            self.params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
            foreach=False,
        )  # fmt: skip

    @property
    def module(self) -> nn.Module:
        return self.model

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self, lr: float) -> float:
        finalize_grads(self.model, sequence_parallel=self.config.parallel.sequence_parallel)
        norm = clip_grad_norm(self.model, self.config.optim.clip_grad)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        return norm

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)

    def sharded_state_dict(self, model_sharded: dict, is_loading: bool = False) -> dict[str, Any]:
        """AdamW moments as ShardedTensors sharded like their parameters (torch_dist).

        The per-parameter ``step`` counters are equal (every parameter steps every step):
        one ``adam_step`` number is stored instead.
        """
        from megatron.core.dist_checkpointing.optimizer import (
            get_param_id_to_sharded_param_map,
            optim_state_to_sharding_state,
        )

        state = self.opt.state_dict()
        steps = {float(st["step"]) for st in state["state"].values() if "step" in st}
        if len(steps) > 1:
            raise RuntimeError(f"AdamW parameters are at different steps {sorted(steps)}")
        for i, p in enumerate(self.params):  # a template for a fresh optimizer (loading)
            state["state"].setdefault(
                i, {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            )
        id_map = get_param_id_to_sharded_param_map(model_sharded, self.params)
        optim_state_to_sharding_state(state, id_map, exclude_keys=("step",))
        state["adam_step"] = steps.pop() if steps else 0.0
        return state

    def load_sharded_state_dict(self, loaded: dict[str, Any]) -> None:
        loaded = dict(loaded)
        step = loaded.pop("adam_step")
        for st in loaded["state"].values():
            st["step"] = torch.tensor(step, dtype=torch.float32)
        self.opt.load_state_dict(loaded)


class MegatronOptimizer:
    """Megatron DDP + distributed optimizer (CUDA only)."""

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "Megatron's DDP and distributed optimizer need CUDA; on CPU set "
                "parallel.distributed_optimizer=false (the loop then uses torch AdamW)"
            )
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        self.config = config
        if ps.get_pipeline_model_parallel_rank() > 0:  # counted once by Megatron's grad norm
            for name, p in model.named_parameters():
                if name.startswith(SHARED_EMBEDDERS):
                    p.shared = True
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,  # the TP / CP / PP sums must precede the DP reduction
            use_distributed_optimizer=True,
        )
        self.ddp = DistributedDataParallel(model.config, ddp_config, model)
        o = config.optim
        opt_config = OptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
            adam_beta1=o.betas[0], adam_beta2=o.betas[1], adam_eps=o.eps,
            clip_grad=o.clip_grad, bf16=config.parallel.precision == "bf16",
            use_distributed_optimizer=True,
        )  # fmt: skip
        self.opt = get_megatron_optimizer(opt_config, [self.ddp])

    @property
    def module(self) -> nn.Module:
        return self.ddp

    def zero_grad(self) -> None:
        self.ddp.zero_grad_buffer()
        self.opt.zero_grad()

    def step(self, lr: float) -> float:
        inner = self.ddp.module
        for p in inner.parameters():  # finalize_grads works on .grad: point it at main_grad
            if p.requires_grad and getattr(p, "main_grad", None) is not None:
                p.grad = p.main_grad
        finalize_grads(
            inner, sequence_parallel=self.config.parallel.sequence_parallel, data_parallel=False
        )
        for p in inner.parameters():
            p.grad = None
        self.ddp.finish_grad_sync()
        for group in self.opt.param_groups:
            group["lr"] = lr
        ok, grad_norm, _ = self.opt.step()
        if not ok:
            raise RuntimeError("the Megatron optimizer skipped a step (found inf/nan gradients)")
        return float(grad_norm or 0.0)

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)

    def sharded_state_dict(self, model_sharded: dict, is_loading: bool = False) -> dict[str, Any]:
        """The distributed optimizer's state, sharded over DP (Megatron's torch_dist layout)."""
        return self.opt.sharded_state_dict(model_sharded, is_loading=is_loading)

    def load_sharded_state_dict(self, loaded: dict[str, Any]) -> None:
        self.opt.load_state_dict(loaded)


def build_optimizer(model: nn.Module, config: TrainConfig):
    """Megatron DDP + distributed optimizer on CUDA when enabled, torch AdamW otherwise."""
    if torch.cuda.is_available() and config.parallel.distributed_optimizer:
        return MegatronOptimizer(model, config)
    return TorchOptimizer(model, config)
