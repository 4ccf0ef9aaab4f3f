"""The Transformer Engine spec on a GPU (issue 13's GPU checks; run where a GPU is lent).

1. The TE spec (TE linears and norms) computes the local spec's forward and gradients
   from the same weights.
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

    cfg, local, te = _pair(ParallelConfig(transformer_impl="transformer_engine"))
    assert isinstance(te.decoder.layers[0].self_attention.linear_qkv, TEColumnParallelLinear)
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
