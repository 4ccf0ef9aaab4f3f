"""The Megatron-Core model computes mugv-dit's function on converted weights."""

import pytest
import torch
from train_helpers import tiny_dit_config, tiny_inputs

from mugv_train.parallel import (
    MegatronMUGDiT,
    dit_to_megatron,
    full_state_dict,
    load_full_state_dict,
    megatron_to_dit,
)


def _random_dit(cfg, seed=0):
    from mugv_dit import MUGDiT

    torch.manual_seed(seed)
    dit = MUGDiT(cfg)
    with torch.no_grad():  # the PixArt init zeroes some outputs: randomise everything
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return dit.eval()


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="patch-1x2x2"),
        pytest.param({"num_heads": 4, "hidden_size": 72}, id="4-heads-odd-grid"),
    ],
)
def test_megatron_forward_equals_mugv_dit(megatron_tp1, overrides):
    from mugv_testing import assert_close

    cfg = tiny_dit_config(**overrides)
    dit = _random_dit(cfg)
    mega = MegatronMUGDiT(cfg).eval()
    load_full_state_dict(mega, dit_to_megatron(dit.state_dict(), cfg.num_heads))
    inputs = tiny_inputs(cfg, t=3, h=5, w=7)  # odd sizes exercise the patch padding and crop
    inputs["frame_indices"] = torch.tensor([[0, 2, 3, 5, 9], [0, 1, 2, 3, 4]])
    with torch.no_grad():
        expected = dit(**inputs)
        got = mega(**inputs)
    assert got.shape == expected.shape == (2, 2 * cfg.in_channels, 3, 5, 7)
    assert_close(got, expected, rtol=1e-4, atol=1e-5, name="Megatron vs mugv-dit")
    # and back: the exported weights reproduce the mugv-dit state dict exactly
    back = megatron_to_dit(full_state_dict(mega), cfg.num_heads)
    ref = dit.state_dict()
    assert back.keys() == ref.keys()
    assert all(torch.equal(back[k], ref[k]) for k in ref)


def test_incompatible_checkpoint_names_the_mismatch(megatron_tp1):
    mega = MegatronMUGDiT(tiny_dit_config())
    other = MegatronMUGDiT(tiny_dit_config(hidden_size=96, num_heads=4))
    with pytest.raises(ValueError, match="does not fit this model"):
        load_full_state_dict(mega, full_state_dict(other))


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_activation_recompute_gives_the_same_gradients(megatron_tp1, recompute):
    from mugv_train import ParallelConfig

    cfg = tiny_dit_config()
    torch.manual_seed(0)
    plain = MegatronMUGDiT(cfg).train()
    again = MegatronMUGDiT(cfg, ParallelConfig(recompute=recompute)).train()
    again.load_state_dict(plain.state_dict())
    inputs = tiny_inputs(cfg)
    grads = []
    for model in (plain, again):
        model(**inputs).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)
