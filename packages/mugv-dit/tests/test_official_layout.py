"""State-dict compatibility with the official ``dit.pt`` (reference §A.2) and conversion."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, tiny_inputs, tiny_model

from mugv_dit import DiTConfig, MUGDiT, convert_official_checkpoint
from mugv_dit.cli import main as cli_main


def official_keys(D: int, K: int, depth: int, C: int, E: int, P: int, mlp: int) -> dict[str, tuple]:
    """The official key -> shape table, transcribed from reference §A.2."""
    keys = {
        "x_embedder.proj.weight": (D, C, 1, 2, 2),
        "x_embedder.proj.bias": (D,),
        "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
        "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
        "fps_embedder.mlp.0.weight": (D, 256), "fps_embedder.mlp.0.bias": (D,),
        "fps_embedder.mlp.2.weight": (D, D), "fps_embedder.mlp.2.bias": (D,),
        "t_block.1.weight": (6 * D, D), "t_block.1.bias": (6 * D,),
        "y_embedder.y_proj.fc1.weight": (D, E), "y_embedder.y_proj.fc1.bias": (D,),
        "y_embedder.y_proj.fc2.weight": (D, D), "y_embedder.y_proj.fc2.bias": (D,),
        "start_token": (D,), "end_token": (D,),
        "final_layer.scale_shift_table": (2, D),
        "final_layer.linear.weight": (P * 2 * C, D), "final_layer.linear.bias": (P * 2 * C,),
    }  # fmt: skip
    for i in range(depth):
        p = f"blocks.{i}."
        keys |= {
            p + "attn.qkv.weight": (3 * D, D), p + "attn.qkv.bias": (3 * D,),
            p + "attn.q_norm.weight": (K,), p + "attn.k_norm.weight": (K,),
            p + "attn.proj.weight": (D, D), p + "attn.proj.bias": (D,),
            p + "cross_attn_norm.weight": (D,), p + "cross_attn_norm.bias": (D,),
            p + "cross_attn.q_linear.weight": (D, D), p + "cross_attn.q_linear.bias": (D,),
            p + "cross_attn.kv_linear.weight": (2 * D, D), p + "cross_attn.kv_linear.bias": (2 * D,),
            p + "cross_attn.q_norm.weight": (K,), p + "cross_attn.k_norm.weight": (K,),
            p + "cross_attn.proj.weight": (D, D), p + "cross_attn.proj.bias": (D,),
            p + "mlp.fc1.weight": (mlp, D), p + "mlp.fc1.bias": (mlp,),
            p + "mlp.fc2.weight": (D, mlp), p + "mlp.fc2.bias": (D,),
            p + "scale_shift_table": (6, D),
        }  # fmt: skip
    return keys


def test_10b_state_dict_equals_the_official_table():
    with torch.device("meta"):
        model = MUGDiT(DiTConfig.preset("10b"))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = official_keys(D=3456, K=72, depth=56, C=24, E=4096, P=4, mlp=13824)
    assert len(want) == 1197  # reference §A.2: 1197 tensors
    assert got == want


def _official_state(seed=0):
    cfg = tiny_config()
    gen = torch.Generator().manual_seed(seed)
    shapes = official_keys(D=24, K=12, depth=cfg.depth, C=4, E=16, P=4, mlp=96)
    return cfg, {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def test_strict_load_of_an_official_layout_state_dict(tmp_path):
    cfg, state = _official_state()
    model = MUGDiT(cfg)
    model.load_state_dict(state, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    # the same through from_official (a dit.pt written like the official one)
    torch.save(state, tmp_path / "dit.pt")
    loaded = MUGDiT.from_official(tmp_path / "dit.pt")
    assert loaded.config.depth == cfg.depth and loaded.config.hidden_size == 24
    assert loaded.config.num_heads == 2 and loaded.config.text_dim == 16
    x, t, text, mask = tiny_inputs()
    torch.testing.assert_close(loaded(x, t, text, mask), model(x, t, text, mask), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("blocks.1.attn.q_norm.weight"), r"missing keys: blocks\.1\.attn\.q_norm\.weight"),
        (lambda s: s.__setitem__("y_embedder.y_embedding", torch.zeros(300, 16)),
         r"unexpected keys: y_embedder\.y_embedding"),
        (lambda s: s.__setitem__("blocks.0.mlp.fc1.weight", torch.zeros(95, 24)),
         r"shape mismatches: blocks\.0\.mlp\.fc1\.weight: checkpoint \(95, 24\) vs model \(96, 24\)"),
    ],
    ids=["missing", "unexpected", "shape"],
)  # fmt: skip
def test_bad_checkpoints_name_the_keys(tmp_path, edit, message):
    cfg, state = _official_state()
    edit(state)
    torch.save(state, tmp_path / "dit.pt")
    with pytest.raises(ValueError, match=message):
        MUGDiT.from_official(tmp_path / "dit.pt", config=cfg)


def test_checkpoint_for_another_preset_is_rejected(tmp_path):
    _, state = _official_state()
    torch.save(state, tmp_path / "dit.pt")
    other = tiny_config(hidden_size=36, num_heads=3)
    with pytest.raises(ValueError, match="another preset"):
        MUGDiT.from_official(tmp_path / "dit.pt", config=other)


def test_not_a_state_dict(tmp_path):
    torch.save({"model": {"a": torch.zeros(1)}}, tmp_path / "dit.pt")
    with pytest.raises(ValueError, match="not a plain state dict"):
        MUGDiT.from_official(tmp_path / "dit.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MUGDiT.from_official(tmp_path / "nothing.pt")


def test_convert_official_checkpoint_and_cli(tmp_path):
    model = tiny_model(seed=1)
    torch.save(model.state_dict(), tmp_path / "dit.pt")
    out = convert_official_checkpoint(tmp_path / "dit.pt", tmp_path / "ours")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 24
    loaded = MUGDiT.from_pretrained(out)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # the command line, with a dtype cast
    assert (
        cli_main(["convert", str(tmp_path / "dit.pt"), str(tmp_path / "bf16"), "--dtype", "bf16"])
        == 0
    )
    assert MUGDiT.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16
    assert cli_main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "x")]) == 2


def test_cli_params(capsys):
    assert cli_main(["params", "1b", "10b"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["1b\t1,208,059,968", "10b\t10,830,321,984"]
