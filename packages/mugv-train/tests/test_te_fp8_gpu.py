"""The Transformer Engine spec on a GPU (issue 13's GPU checks; run where a GPU is lent).

1. The TE spec (TE linears, norms and TEDotProductAttention) computes the local spec's
   forward and gradients from the same weights; with two GPUs also at context_parallel=2
   (TE's own K/V exchange, ``cp_comm_type`` p2p / all_gather / a2a, against the local
   spec's K/V all-gather), with and without padded tokens.
2. With ``parallel.fp8`` the layers run inside Megatron's FP8 context: TE's linears see
   FP8 enabled, record amax statistics, and the output moves by FP8 rounding (differs
   from, yet stays close to, the bf16 output).
Both need transformer-engine (the ``te`` extra) besides the GPU.
"""

from __future__ import annotations

import pytest
import torch
from train_helpers import tiny_dit_config, tiny_inputs

pytestmark = pytest.mark.gpu


def _te():
    return pytest.importorskip(
        "transformer_engine.pytorch", reason="the TE spec needs the `te` extra"
    )


def _cuda(inputs: dict) -> dict:
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def _pair(parallel_te, parallel_local=None):
    """A local-spec model and a TE-spec model holding the same weights."""
    from mugv_train.config import ParallelConfig
    from mugv_train.parallel import MegatronMUGDiT, full_state_dict, load_full_state_dict

    cfg = tiny_dit_config(depth=2, hidden_size=96, num_heads=4, text_dim=32)
    torch.manual_seed(0)
    local = MegatronMUGDiT(cfg, parallel_local or ParallelConfig()).cuda()
    with torch.no_grad():  # away from the init (zero-initialised parts)
        for p in local.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    te = MegatronMUGDiT(cfg, parallel_te).cuda()
    load_full_state_dict(te, full_state_dict(local))
    return cfg, local, te


def test_te_spec_forward_and_gradients_equal_the_local_spec(megatron_tp1):
    _te()
    from megatron.core.extensions.transformer_engine import TEColumnParallelLinear

    from mugv_train.config import ParallelConfig
    from mugv_train.parallel._layers import TECoreAttention

    cfg, local, te = _pair(ParallelConfig(transformer_impl="transformer_engine"))
    assert isinstance(te.decoder.layers[0].self_attention.linear_qkv, TEColumnParallelLinear)
    assert isinstance(te.decoder.layers[0].self_attention.core_attention, TECoreAttention)
    assert isinstance(te.decoder.layers[0].cross_attention.core_attention, TECoreAttention)
    inputs = _cuda(tiny_inputs(cfg, t=3, h=6, w=6, s=7))
    out_local, out_te = local(**inputs), te(**inputs)
    assert out_te.shape == out_local.shape
    assert _rel(out_te, out_local) < 5e-3  # fp32 GEMMs (TE may use TF32)
    out_local.pow(2).mean().backward()
    out_te.pow(2).mean().backward()
    grads_te = {n: p.grad for n, p in te.named_parameters()}
    for name, p in local.named_parameters():
        assert grads_te[name] is not None, name
        assert _rel(grads_te[name], p.grad) < 2e-2, name


def test_fp8_gemms_execute_inside_megatrons_fp8_context(megatron_tp1):
    _te()
    from megatron.core.transformer.module import Float16Module
    from transformer_engine.pytorch.fp8 import FP8GlobalStateManager

    from mugv_train.config import ParallelConfig
    from mugv_train.parallel._checks import ParallelLayoutError, check_backend

    fp8 = ParallelConfig(transformer_impl="transformer_engine", fp8=True, precision="bf16")
    if torch.cuda.get_device_capability() < (8, 9):  # no FP8 tensor cores: refused up front
        with pytest.raises(ParallelLayoutError, match="FP8 tensor cores"):
            check_backend(fp8)
        return
    bf16 = ParallelConfig(transformer_impl="transformer_engine", precision="bf16")
    cfg, plain, model = _pair(fp8, parallel_local=bf16)
    seen = []
    fc1 = model.decoder.layers[0].mlp.linear_fc1
    fc1.register_forward_hook(
        lambda mod, args, out: seen.append(
            FP8GlobalStateManager.is_fp8_enabled() and bool(getattr(mod, "fp8", False))
        )
    )
    plain16, model16 = Float16Module(plain.config, plain), Float16Module(model.config, model)
    inputs = _cuda(tiny_inputs(cfg, t=3, h=6, w=6, s=7))
    out = model16(**inputs)
    ref = plain16(**inputs)
    assert seen == [True]  # the TE GEMM ran with FP8 enabled
    meta = getattr(fc1, "fp8_meta", {})
    if "scaling_fwd" in meta and hasattr(meta["scaling_fwd"], "amax_history"):
        assert meta["scaling_fwd"].amax_history.abs().sum() > 0  # FP8 statistics recorded
    err = _rel(out, ref)
    assert 0 < err < 0.1, err  # FP8 rounding moved the output, by a little
    out.float().pow(2).mean().backward()  # and the FP8 backward runs
    assert all(p.grad is not None for p in model.decoder.parameters())


def _te_cp_worker(rank: int, world: int, comm: str) -> list[tuple[str, float]]:
    """On each of 2 GPUs (NCCL): the TE spec at CP=2 against the local spec at CP=2 (the
    reference path, itself equal to one process in test_model_parallel)."""
    import warnings

    warnings.filterwarnings("ignore")
    from mugv_train.config import ParallelConfig
    from mugv_train.parallel import init_distributed

    local_cfg = ParallelConfig(context_parallel=2)
    te_cfg = ParallelConfig(context_parallel=2, transformer_impl="transformer_engine",
                            cp_comm_type=comm)  # fmt: skip
    init_distributed(te_cfg)
    cfg, local, te = _pair(te_cfg, parallel_local=local_cfg)  # same seed on both ranks
    errors = []
    for h, w in ((6, 6), (6, 4), (4, 2)):  # token counts with and without CP padding
        inputs = _cuda(tiny_inputs(cfg, t=3, h=h, w=w, s=7))
        gt, gh, gw = te._grid(inputs["x"])
        padded = te.padded_length(inputs["x"]) - (gt * gh * gw + 2)  # > 0: masked keys
        out_local, out_te = local(**inputs), te(**inputs)
        errors.append((f"out {h}x{w} pad={padded}", _rel(out_te, out_local)))
        local.zero_grad(set_to_none=True)
        te.zero_grad(set_to_none=True)
        out_local.pow(2).mean().backward()
        out_te.pow(2).mean().backward()
        grads_te = dict(te.named_parameters())
        for name, p in local.named_parameters():
            errors.append((f"grad {name} {h}x{w}", _rel(grads_te[name].grad, p.grad)))
    return errors


@pytest.mark.distributed
@pytest.mark.timeout(600)
@pytest.mark.parametrize("comm", ["p2p", "all_gather", "a2a"])
def test_te_spec_with_context_parallel_equals_the_local_spec(comm):
    """TE's context-parallel attention (two GPUs) equals the local spec's CP reference."""
    _te()
    if torch.cuda.device_count() < 2:
        pytest.skip("context_parallel=2 with the TE spec needs two GPUs")
    from mugv_testing import run_distributed

    for errors in run_distributed(_te_cp_worker, world_size=2, args=(comm,), timeout=500):
        for what, err in errors:
            assert err < (5e-3 if what.startswith("out") else 2e-2), (comm, what, err)
