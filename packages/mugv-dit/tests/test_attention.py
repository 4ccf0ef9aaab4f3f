"""Attention backends: SDPA against an explicit softmax, error paths, parity where installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import tiny_config

from mugv_dit import MUGDiT, attention, cross_attention


def _explicit(q, k, v, mask=None):
    s = torch.einsum("blnk,bsnk->bnls", q, k) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.einsum("bnls,bsnk->blnk", s.softmax(-1), v)


def _qkv(B=2, L=7, S=5, N=3, K=12, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, L, N, K, generator=g, dtype=dtype).to(device)
    k = torch.randn(B, S, N, K, generator=g, dtype=dtype).to(device)
    v = torch.randn(B, S, N, K, generator=g, dtype=dtype).to(device)
    return q, k, v


def test_sdpa_self_attention_is_plain_softmax_attention():
    q, k, v = _qkv(S=7)
    torch.testing.assert_close(attention(q, k, v), _explicit(q, k, v))


def test_sdpa_cross_attention_uses_each_samples_valid_tokens():
    q, k, v = _qkv()
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got = cross_attention(q, k, v, mask)
    torch.testing.assert_close(got, _explicit(q, k, v, mask))
    # sample 0 equals attention over its first two tokens only (the packed formulation)
    torch.testing.assert_close(got[:1], _explicit(q[:1], k[:1, :2], v[:1, :2]))
    torch.testing.assert_close(cross_attention(q, k, v, None), _explicit(q, k, v))


@pytest.mark.parametrize("backend", ["flash", "xformers"])
def test_missing_backend_is_a_clear_error(backend, monkeypatch):
    module = {"flash": "flash_attn", "xformers": "xformers"}[backend]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    with pytest.raises(ImportError, match=rf"pip install mugv-dit\[{backend}\]"):
        MUGDiT(tiny_config(attention_backend=backend))
    q, k, v = _qkv()
    with pytest.raises(ImportError, match=f"needs the {module} package"):
        attention(q, k, v, backend=backend)


@pytest.mark.parametrize("backend", ["flash", "xformers"])
def test_installed_backend_rejects_cpu_tensors(backend):
    module = {"flash": "flash_attn", "xformers": "xformers"}[backend]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (GPU-only extra mugv-dit[{backend}])")
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="runs only on CUDA tensors"):
        attention(q, k, v, backend=backend)


def test_unknown_backend():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="not one of"):
        attention(q, k, v, backend="cudnn")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["flash", "xformers"])
def test_backend_parity_with_sdpa_on_gpu(backend):
    module = {"flash": "flash_attn", "xformers": "xformers"}[backend]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (GPU-only extra mugv-dit[{backend}])")
    q, k, v = _qkv(B=2, L=257, S=40, N=4, K=72, dtype=torch.bfloat16, device="cuda")
    mask = torch.ones(2, 40, dtype=torch.bool, device="cuda")
    mask[0, 13:] = False
    torch.testing.assert_close(
        attention(q, k, v, backend=backend), attention(q, k, v), rtol=2e-2, atol=2e-2
    )
    torch.testing.assert_close(
        cross_attention(q, k, v, mask, backend=backend),
        cross_attention(q, k, v, mask),
        rtol=2e-2,
        atol=2e-2,
    )


def test_gpu_only_backend_on_a_cpu_model_is_rejected_at_forward(monkeypatch):
    from conftest import tiny_inputs

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: real("torch") if name == "flash_attn" else real(name, *a),
    )
    model = MUGDiT(tiny_config(attention_backend="flash"))  # "installed" according to find_spec
    with pytest.raises(ValueError, match="runs only on CUDA"):
        model(*tiny_inputs())
