"""The training step on Megatron-Core's engine (reference §G.4).

``MegatronEngine``: the model chunks wrapped in Megatron's ``DistributedDataParallel``
(contiguous fp32 ``main_grad`` buffers, bucketed reduce overlapped with the backward,
parameter all-gather overlapped with the next forward under the distributed optimizer),
``get_megatron_optimizer`` (distributed optimizer: fp32 main weights and Adam moments
sharded over DP x CP; clipping by the global norm), bf16 through ``Float16Module``, and
the step through ``get_forward_backward_func()``: no pipelining, 1F1B or interleaved
1F1B (virtual stages), ``finalize_model_grads`` at its end (DP / CP reduction, TP sums of
the sequence-parallel and q/k-norm parameters, PP sums of the conditioning embedders).
The number of micro-batches comes from Megatron's micro-batch calculator.

``PlainEngine``: one process without CUDA (a CPU machine, e.g. the quickstart). Nothing
is split or reduced, so no engine is needed: forward, backward of loss / micro-batches,
torch's global-norm clip and AdamW with Megatron's weight-decay grouping. Megatron's engine
makes CUDA calls; several processes therefore need CUDA devices (CPU tests run the engine
over gloo under mugv-testing's CUDA shim).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mugv_train.config import TrainConfig

LossFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, Any]]


def cuda_calls_work() -> bool:
    """Whether ``torch.cuda`` calls work in this process (Megatron's engine needs them)."""
    if torch.cuda.is_available():
        return True
    try:
        torch.cuda.current_device()
    except (AssertionError, RuntimeError):
        return False
    return True


def _no_weight_decay(name: str, p: nn.Parameter) -> bool:
    """Megatron's default: biases and 1-D parameters (norms, tables' rows) get no decay."""
    return name.endswith(".bias") or p.dim() == 1


def _unwrap(module: nn.Module) -> nn.Module:
    while isinstance(getattr(module, "module", None), nn.Module):
        module = module.module
    return module


def _microbatch_calculator(config: TrainConfig, dp_size: int) -> int:
    """Set Megatron's micro-batch calculator for this run; returns micro-batches per step."""
    from megatron.core import num_microbatches_calculator as nmc

    kwargs = dict(
        rank=dist.get_rank() if dist.is_initialized() else 0,
        rampup_batch_size=None,
        global_batch_size=config.data.batch_size * config.data.microbatches * dp_size,
        micro_batch_size=config.data.batch_size,
        data_parallel_size=dp_size,
    )
    if nmc._GLOBAL_NUM_MICROBATCHES_CALCULATOR is None:
        nmc.init_num_microbatches_calculator(**kwargs)
    else:
        nmc.reconfigure_num_microbatches_calculator(**kwargs)
    return nmc.get_num_microbatches()


def _forward_step(loss_fn: LossFn | None):
    """Megatron's ``forward_step_func``: next (index, inputs) -> (output, loss closure)."""

    def forward_step(data_iterator, model):
        index, inputs = next(data_iterator)
        output = model(**inputs)

        def loss_func(out):
            loss, extra = loss_fn(out, index)
            # the schedule scales its own loss in place (x CP, / micro-batches)
            return loss, {"loss": loss.detach().clone(), "extra": extra}

        return output, loss_func

    return forward_step


def _run_schedule(
    chunks: Sequence[nn.Module],
    microbatches: Sequence[dict[str, Any]],
    loss_fn: LossFn,
    forward_only: bool,
) -> list[tuple[torch.Tensor, Any]]:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    core = _unwrap(chunks[0])
    x = microbatches[0]["x"]
    items = list(enumerate(microbatches))
    data = [iter(items) for _ in chunks]
    out = get_forward_backward_func()(
        forward_step_func=_forward_step(loss_fn),
        data_iterator=data if len(chunks) > 1 else data[0],
        model=list(chunks),
        num_microbatches=len(microbatches),
        seq_length=core.padded_length(x),
        micro_batch_size=x.shape[0],
        forward_only=forward_only,
    )
    return [(r["loss"], r["extra"]) for r in out]


def _mark_unpadded(shards: dict[Any, Any]) -> dict[Any, Any]:
    """Megatron's ``get_parameter_state_dp_reshardable`` lists each bucket's parameters
    without the ``padding`` flag that ``load_parameter_state_from_dp_reshardable`` filters
    on (only its sharded torch_dist path inserts padding entries): mark them unpadded."""
    for key, by_dtype in shards.items():
        if not isinstance(key, int):  # per_bucket_numel, per_bucket_numel_unpadded
            continue
        for buckets in by_dtype.values():
            for bucket in buckets:
                for elem in bucket:
                    elem.setdefault("padding", False)
    return shards


def _unshare_steps(opt: Any) -> None:
    """Give every parameter its own Adam ``step`` tensor after a load.

    Without Apex / TE, Megatron's ``DistributedOptimizer.load_state_dict`` sets one shared
    ``step`` tensor in every parameter's state; torch's Adam increments ``step`` in place
    per parameter, so a shared one would advance once per parameter per step (wrong bias
    correction after a resume)."""
    inner = getattr(opt, "optimizer", opt)
    for st in getattr(inner, "state", {}).values():
        if isinstance(st.get("step"), torch.Tensor):
            st["step"] = st["step"].clone()


class MegatronEngine:
    """Megatron DDP + (distributed) optimizer + Megatron's pipeline schedules."""

    def __init__(self, chunks: list[nn.Module], config: TrainConfig) -> None:
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.transformer.module import Float16Module

        self.config = config
        par = config.parallel
        mconfig = chunks[0].config
        self.microbatches = _microbatch_calculator(config, ps.get_data_parallel_world_size())
        if par.precision == "bf16":  # bf16 compute weights; fp32 main weights in the optimizer
            chunks = [Float16Module(mconfig, c) for c in chunks]
        distributed = par.distributed_optimizer
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=True,
            overlap_param_gather=distributed,
            use_distributed_optimizer=distributed,
            check_for_nan_in_grad=False,  # a NaN loss skips the step (see loop.py)
        )
        self.chunks = [
            DistributedDataParallel(mconfig, ddp_config, c, disable_bucketing=i > 0)
            for i, c in enumerate(chunks)
        ]
        o = config.optim
        opt_config = OptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
            adam_beta1=o.betas[0], adam_beta2=o.betas[1], adam_eps=o.eps,
            clip_grad=o.clip_grad, bf16=par.precision == "bf16",
            use_distributed_optimizer=distributed,
        )  # fmt: skip
        self.optimizer = get_megatron_optimizer(opt_config, self.chunks)
        # the schedule's hooks, as Megatron's training loop wires them
        one = len(self.chunks) == 1
        mconfig.no_sync_func = self.chunks[0].no_sync if one else [c.no_sync for c in self.chunks]
        mconfig.grad_sync_func = (
            self.chunks[0].start_grad_sync if one else [c.start_grad_sync for c in self.chunks]
        )
        if distributed:
            mconfig.param_sync_func = (
                self.chunks[0].start_param_sync
                if one
                else [c.start_param_sync for c in self.chunks]
            )
        mconfig.finalize_model_grads_func = finalize_model_grads

    @property
    def modules(self) -> list[nn.Module]:
        return [_unwrap(c) for c in self.chunks]

    def zero_grad(self) -> None:
        for c in self.chunks:
            c.zero_grad_buffer()
        self.optimizer.zero_grad()

    def forward_backward(
        self, microbatches: Sequence[dict[str, Any]], loss_fn: LossFn
    ) -> list[tuple[torch.Tensor, Any]]:
        if len(microbatches) != self.microbatches:
            raise ValueError(
                f"{len(microbatches)} micro-batches given, Megatron's calculator expects "
                f"{self.microbatches}"
            )
        for c in self.chunks:
            c.train()
        return _run_schedule(self.chunks, microbatches, loss_fn, forward_only=False)

    def step(self, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            raise RuntimeError("the Megatron optimizer skipped a step (found inf/nan gradients)")
        return float(grad_norm or 0.0)

    def sync_params(self) -> None:
        """Finish the overlapped parameter all-gather now (before reading the weights)."""
        if self.config.parallel.distributed_optimizer:
            for c in self.chunks:
                c.start_param_sync(force_sync=True)

    def state_dict(self) -> dict[str, Any]:
        """This rank's optimizer state (the distributed optimizer's own shard)."""
        opts = getattr(self.optimizer, "chained_optimizers", [self.optimizer])
        out: dict[str, Any] = {"common": [o.state_dict() for o in opts]}
        if self.config.parallel.distributed_optimizer:
            out["shards"] = [o.get_parameter_state_dp_reshardable() for o in opts]
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        opts = getattr(self.optimizer, "chained_optimizers", [self.optimizer])
        for i, o in enumerate(opts):
            o.load_state_dict(state["common"][i])
            if self.config.parallel.distributed_optimizer:
                with torch.no_grad():  # copies into views of the main (leaf) parameters
                    o.load_parameter_state_from_dp_reshardable(_mark_unpadded(state["shards"][i]))
            _unshare_steps(o)
        self.sync_params()

    def sharded_state_dict(self, model_sharded: dict, is_loading: bool = False) -> dict:
        """Megatron's torch_dist optimizer state, reshardable to any TP / PP / DP layout."""
        metadata = {"distrib_optim_sharding_type": "fully_reshardable"}
        if is_loading:  # a fresh optimizer has no Adam state to load into yet
            for o in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
                if not o.optimizer.state and hasattr(o, "_init_optimizer_states_with_dummy_values"):
                    o._init_optimizer_states_with_dummy_values()  # what Megatron's loader does
        return self.optimizer.sharded_state_dict(
            model_sharded, is_loading=is_loading, metadata=metadata
        )

    def load_sharded_state_dict(self, loaded: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(loaded)
        self.sync_params()


class PlainEngine:
    """One process without CUDA: forward/backward per micro-batch, torch clip + AdamW."""

    def __init__(self, chunks: list[nn.Module], config: TrainConfig) -> None:
        if len(chunks) != 1:
            raise ValueError("a single process holds one model chunk")
        self.config = config
        self.model = chunks[0]
        self.microbatches = config.data.microbatches
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        decay = [p for n, p in named if not _no_weight_decay(n, p)]
        no_decay = [p for n, p in named if _no_weight_decay(n, p)]
        o = config.optim
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": o.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=o.lr, betas=o.betas, eps=o.eps, foreach=False,
        )  # fmt: skip
        self._order = decay + no_decay

    @property
    def modules(self) -> list[nn.Module]:
        return [self.model]

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def forward_backward(
        self, microbatches: Sequence[dict[str, Any]], loss_fn: LossFn
    ) -> list[tuple[torch.Tensor, Any]]:
        self.model.train()
        return plain_forward(self.model, microbatches, loss_fn, backward=True)

    def step(self, lr: float) -> float:
        for group in self.opt.param_groups:
            group["lr"] = lr
        clip = self.config.optim.clip_grad
        params = [p for p in self.params if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        self.opt.step()
        return float(norm)

    def sync_params(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"torch": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["torch"])

    def sharded_state_dict(self, model_sharded: dict, is_loading: bool = False) -> dict:
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
        for i, p in enumerate(self._order):  # a template for a fresh optimizer (loading)
            state["state"].setdefault(
                i, {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            )
        id_map = get_param_id_to_sharded_param_map(model_sharded, self._order)
        optim_state_to_sharding_state(state, id_map, exclude_keys=("step",))
        state["adam_step"] = steps.pop() if steps else 0.0
        return state

    def load_sharded_state_dict(self, loaded: dict[str, Any]) -> None:
        loaded = dict(loaded)
        step = loaded.pop("adam_step")
        for st in loaded["state"].values():
            st["step"] = torch.tensor(step, dtype=torch.float32)
        self.opt.load_state_dict(loaded)


def plain_forward(
    model: nn.Module,
    microbatches: Sequence[dict[str, Any]],
    loss_fn: LossFn,
    *,
    backward: bool,
) -> list[tuple[torch.Tensor, Any]]:
    """Forward (and backward of loss / micro-batches) of each micro-batch in one process,
    as Megatron's no-pipelining schedule does."""
    results = []
    ctx = contextlib.nullcontext() if backward else torch.no_grad()
    with ctx:
        for i, inputs in enumerate(microbatches):
            loss, extra = loss_fn(model(**inputs), i)
            if backward:
                (loss / len(microbatches)).backward()
            results.append((loss.detach(), extra))
    return results


def forward_only(
    chunks: list[nn.Module], microbatches: Sequence[dict[str, Any]], loss_fn: LossFn
) -> list[tuple[torch.Tensor, Any]]:
    """Forward of a frozen model (the DPO / KTO reference) through the same schedule."""
    if cuda_calls_work():
        return _run_schedule(chunks, microbatches, loss_fn, forward_only=True)
    return plain_forward(chunks[0], microbatches, loss_fn, backward=False)


def build_engine(chunks: list[nn.Module], config: TrainConfig):
    """Megatron's engine where CUDA calls work, the plain one-process step otherwise."""
    if cuda_calls_work():
        return MegatronEngine(chunks, config)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world > 1:
        raise RuntimeError(
            f"{world} processes without CUDA: multi-process training runs Megatron-Core's "
            "engine (DDP, distributed optimizer, pipeline schedules), which needs CUDA "
            "devices; run one process on a CPU machine, or use GPUs"
        )
    return PlainEngine(chunks, config)
