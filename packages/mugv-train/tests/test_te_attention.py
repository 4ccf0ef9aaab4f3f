"""The Transformer Engine spec's core attention, checked on CPU with a stand-in for TE
(issue 13): TE itself needs a GPU (tests in test_te_fp8_gpu.py run where one is lent).

The stand-in ``TEDotProductAttention`` computes attention with TE's documented conventions
(sbhd layout, ``attention_mask`` True = masked out, a (q, kv) pair for cross-attention,
``attn_mask_type`` 'padding' / 'no_mask'), so these tests check our side: the spec builds the
right classes, the masks we hand TE equal our key masks, cross-attention gets no CP, and the
whole model with the TE core attention equals the local spec.
"""

from __future__ import annotations

import sys
import types
from typing import ClassVar

import pytest
import torch
from train_helpers import tiny_dit_config, tiny_inputs


class _StubTEAttention(torch.nn.Module):
    built: ClassVar[list[dict]] = []

    def __init__(self, config, layer_number, attn_mask_type, attention_type, **kwargs):
        super().__init__()
        self.cp = config.context_parallel_size
        self.scale = kwargs["softmax_scale"]
        _StubTEAttention.built.append(
            dict(attention_type=attention_type, cp=self.cp, **kwargs, mask=attn_mask_type.name)
        )

    def forward(self, q, k, v, attention_mask, attn_mask_type):
        assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
        scores = torch.einsum("qbnk,sbnk->bnqs", q, k) * self.scale  # sbhd
        if attn_mask_type.name == "padding":
            mask = attention_mask[1] if isinstance(attention_mask, tuple) else attention_mask
            if isinstance(attention_mask, tuple):
                assert attention_mask[0].shape == (q.shape[1], 1, 1, q.shape[0])
            scores = scores.masked_fill(mask, float("-inf"))  # TE: True = masked out
        else:
            assert attn_mask_type.name == "no_mask" and attention_mask is None
        out = torch.einsum("bnqs,sbnk->qbnk", scores.softmax(-1), v)
        return out.flatten(2)


@pytest.fixture
def stub_te(monkeypatch):
    """``transformer_engine`` and Megatron's TE extension replaced by CPU stand-ins: TE
    linears / norm by the local ones, TEDotProductAttention by :class:`_StubTEAttention`."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    from mugv_train.parallel import _checks
    from mugv_train.parallel._layers import HeadRMSNorm

    ext = types.ModuleType("megatron.core.extensions.transformer_engine")
    ext.TEColumnParallelLinear = ColumnParallelLinear
    ext.TERowParallelLinear = RowParallelLinear
    ext.TENorm = HeadRMSNorm
    ext.TEDotProductAttention = _StubTEAttention
    monkeypatch.setitem(sys.modules, "transformer_engine", types.ModuleType("transformer_engine"))
    monkeypatch.setitem(sys.modules, "megatron.core.extensions.transformer_engine", ext)
    monkeypatch.setattr(_checks, "check_backend", lambda parallel: None)  # no GPU here
    _StubTEAttention.built.clear()
    return _StubTEAttention


def test_te_spec_uses_te_attention_for_self_and_cross_attention(stub_te):
    from megatron.core.transformer.spec_utils import ModuleSpec

    from mugv_train.parallel._layers import SDPACoreAttention, TECoreAttention
    from mugv_train.parallel._spec import mugdit_layer_spec

    def cores(spec):
        sub = spec.submodules
        return sub.self_attention.submodules.core_attention, (
            sub.cross_attention.submodules.core_attention
        )

    self_attn, cross_attn = cores(mugdit_layer_spec("transformer_engine", cp_comm_type="a2a"))
    assert isinstance(self_attn, ModuleSpec) and self_attn.module is TECoreAttention
    assert self_attn.params == {"attention_type": "self", "cp_comm_type": "a2a"}
    assert cross_attn.module is TECoreAttention and cross_attn.params == {"attention_type": "cross"}
    assert cores(mugdit_layer_spec("local")) == (SDPACoreAttention, SDPACoreAttention)


def test_te_masks_equal_our_key_masks():
    from mugv_train.parallel._layers import te_attention_mask, te_padding_mask

    key_mask = torch.tensor([[True, True, False], [True, True, True]])
    te = te_padding_mask(key_mask)
    assert te.shape == (2, 1, 1, 3) and te.dtype == torch.bool
    assert torch.equal(te[:, 0, 0], ~key_mask)  # TE masks where we do not attend
    assert torch.equal(te_attention_mask(4, key_mask, "self"), te)
    q, kv = te_attention_mask(4, key_mask, "cross")
    assert q.shape == (2, 1, 1, 4) and not q.any() and torch.equal(kv, te)
    with pytest.raises(ValueError, match=r"key_mask must be a \[B, L\] bool tensor"):
        te_padding_mask(key_mask.float())


def test_te_core_attention_equals_sdpa_with_and_without_padding(stub_te):
    from megatron.core.transformer.transformer_config import TransformerConfig

    from mugv_train.parallel._layers import TECoreAttention, sdpa_attention

    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(7, 2, 4, 8, generator=g)
    k, v = torch.randn(2, 5, 2, 4, 8, generator=g)
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    for kind in ("self", "cross"):
        core = TECoreAttention(config, attention_type=kind)
        assert core.ring_exchange is False  # CP 1
        torch.testing.assert_close(core(q, k, v, mask), sdpa_attention(q, k, v, mask))
        torch.testing.assert_close(core(q, k, v, None), sdpa_attention(q, k, v, None))
    assert [b["attention_type"] for b in stub_te.built] == ["self", "cross"]
    assert all(b["softmax_scale"] == 8**-0.5 for b in stub_te.built)


def test_cross_attention_gets_no_context_parallelism(stub_te, monkeypatch):
    from megatron.core.transformer.transformer_config import TransformerConfig

    from mugv_train.parallel._layers import TECoreAttention

    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4)
    config.context_parallel_size = 2  # as on a CP=2 run (no group needed by the stand-in)
    self_attn = TECoreAttention(config, attention_type="self", cp_comm_type="all_gather")
    cross = TECoreAttention(config, attention_type="cross", cp_comm_type="all_gather")
    assert self_attn.ring_exchange and not cross.ring_exchange
    assert [(b["attention_type"], b["cp"], b["cp_comm_type"]) for b in stub_te.built] == [
        ("self", 2, "all_gather"),
        ("cross", 1, None),  # the caption is replicated: TE gets a CP 1 config
    ]


def test_model_with_te_core_attention_equals_the_local_spec(megatron_tp1, stub_te):
    from mugv_train.config import ParallelConfig
    from mugv_train.parallel import MegatronMUGDiT, full_state_dict, load_full_state_dict
    from mugv_train.parallel._layers import TECoreAttention

    cfg = tiny_dit_config(depth=2)
    torch.manual_seed(0)
    local = MegatronMUGDiT(cfg, ParallelConfig())
    with torch.no_grad():
        for p in local.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    te = MegatronMUGDiT(cfg, ParallelConfig(transformer_impl="transformer_engine"))
    assert isinstance(te.decoder.layers[0].self_attention.core_attention, TECoreAttention)
    assert isinstance(te.decoder.layers[0].cross_attention.core_attention, TECoreAttention)
    load_full_state_dict(te, full_state_dict(local))
    inputs = tiny_inputs(cfg, t=3, h=6, w=6, s=7)  # caption padding: the cross mask is used
    torch.testing.assert_close(te(**inputs), local(**inputs), rtol=1e-5, atol=1e-5)
