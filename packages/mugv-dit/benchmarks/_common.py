"""Helpers shared by the mugv-dit benchmark scripts (loaded by path, not installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def results_module():
    """The workspace's ``benchmarks/_results.py`` (writes one section of RESULTS.md)."""
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "_results.py"
    spec = importlib.util.spec_from_file_location("_mugv_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flops_per_block(
    tokens: int, hidden: int, text_tokens: int = 300, mlp_ratio: float = 4.0
) -> float:
    """Forward FLOPs of one MUG-DiT block (matmuls only, 2 FLOPs per multiply-add).

    Linear layers on the video tokens: qkv 3D^2, proj D^2, cross q D^2, cross proj D^2,
    MLP 2 * ratio * D^2; text side: kv 2D^2 per text token; attention: 4 L^2 D (QK^T and
    AV) for self-attention and 4 L S D for cross-attention. Element-wise ops are ignored.
    """
    L, D, S = tokens, hidden, text_tokens
    linear = 2 * L * D * D * (3 + 1 + 1 + 1 + 2 * mlp_ratio) + 2 * S * 2 * D * D
    attn = 4 * L * L * D + 4 * L * S * D
    return float(linear + attn)
