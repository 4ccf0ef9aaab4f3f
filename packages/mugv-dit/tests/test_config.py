"""DiTConfig presets, exact parameter counts on the meta device, validation."""

from __future__ import annotations

import pytest
import torch

from mugv_dit import PRESETS, DiTConfig, MUGDiT

# Issue 3, "What to build" 2 (text_dim 4096, 24 latent channels).
EXPECTED_PARAMS = {
    "1b": 1_208_059_968,
    "2b": 2_712_853_632,
    "4b": 4_818_161_856,
    "10b": 10_830_321_984,
    "18b": 19_244_540_352,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS), ids=str)
def test_preset_parameter_counts_on_meta(name):
    with torch.device("meta"):
        model = MUGDiT(DiTConfig.preset(name))
    assert model.num_parameters() == EXPECTED_PARAMS[name]
    assert all(p.device.type == "meta" for p in model.parameters())


def test_10b_count_matches_reference_breakdown():
    # reference §A.1: 191,175,840 per block x 56 plus 124,474,944 elsewhere
    with torch.device("meta"):
        model = MUGDiT(DiTConfig.preset("10b"))
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    assert per_block == 191_175_840
    assert model.num_parameters() - 56 * per_block == 124_474_944


@pytest.mark.parametrize(
    ("name", "hidden", "heads", "depth"),
    [("debug", 288, 4, 2), ("1b", 1152, 16, 56), ("2b", 1728, 24, 56), ("4b", 2304, 32, 56),
     ("10b", 3456, 48, 56), ("18b", 4608, 64, 56)],
)  # fmt: skip
def test_preset_sizes(name, hidden, heads, depth):
    cfg = DiTConfig.preset(name)
    assert (cfg.hidden_size, cfg.num_heads, cfg.depth, cfg.head_dim) == (hidden, heads, depth, 72)
    assert (cfg.in_channels, cfg.text_dim, cfg.patch_size, cfg.mlp_ratio) == (
        24,
        4096,
        (1, 2, 2),
        4.0,
    )


def test_preset_overrides_and_round_trip():
    cfg = DiTConfig.preset("10b", gradient_checkpointing=True, attention_backend="sdpa")
    assert cfg.gradient_checkpointing and PRESETS["10b"].gradient_checkpointing is False
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg


def test_constructible_from_required_keywords():
    cfg = DiTConfig(depth=3, hidden_size=96, num_heads=4, mlp_ratio=2.0, in_channels=8,
                    text_dim=32, patch_size=(1, 2, 2))  # fmt: skip
    assert cfg.out_channels == 16 and cfg.mlp_hidden_size == 192 and cfg.head_dim == 24


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_heads=5), "not divisible by num_heads"),
        (dict(hidden_size=32, num_heads=4), "multiple of 6"),
        (dict(attention_backend="cudnn"), "attention_backend"),
        (dict(kernel_backend="cuda"), "kernel_backend"),
        (dict(depth=0), "depth must be a positive int"),
        (dict(patch_size=(1, 2)), "patch_size"),
    ],
    ids=["heads", "rope-split", "attn-backend", "kernel-backend", "depth", "patch"],
)
def test_invalid_configs(kwargs, message):
    fields = dict(depth=2, hidden_size=24, num_heads=2) | kwargs
    with pytest.raises(ValueError, match=message):
        DiTConfig(**fields)


def test_unknown_preset_and_fields():
    with pytest.raises(ValueError, match="unknown DiT preset"):
        DiTConfig.preset("7b")
    with pytest.raises(ValueError, match="unknown fields"):
        DiTConfig.from_dict({"depth": 1, "hidden_size": 24, "num_heads": 2, "hiden": 3})
