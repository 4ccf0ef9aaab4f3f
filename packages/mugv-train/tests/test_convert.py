"""Converter between the mugv-dit / official layout and Megatron's (reference §G.6)."""

import torch
from train_helpers import tiny_dit_config

from mugv_train.parallel import (
    MegatronMUGDiT,
    dit_to_megatron,
    megatron_to_dit,
    merge_tensor_parallel,
    shard_for_tensor_parallel,
    stack_layers,
    unstack_layers,
)


def _megatron_state(cfg):
    torch.manual_seed(0)
    sd = MegatronMUGDiT(cfg).state_dict()
    return {k: v for k, v in sd.items() if not k.endswith("_extra_state")}


def test_round_trip_is_exact(megatron_tp1):
    cfg = tiny_dit_config()
    mega = _megatron_state(cfg)
    dit = megatron_to_dit(mega, cfg.num_heads)
    assert "blocks.1.attn.qkv.weight" in dit and "y_embedder.y_proj.fc1.weight" in dit
    assert not any(k.startswith("decoder.") for k in dit)
    back = dit_to_megatron(dit, cfg.num_heads)
    assert back.keys() == mega.keys()
    for k in mega:
        assert torch.equal(back[k], mega[k]), k
    again = megatron_to_dit(back, cfg.num_heads)
    assert all(torch.equal(again[k], dit[k]) for k in dit)


def test_qkv_rows_become_per_head_interleaved():
    heads, k = 2, 3
    # official rows: q(h0) q(h1) k(h0) k(h1) v(h0) v(h1), each block of k rows labelled
    rows = torch.arange(3 * heads * k, dtype=torch.float32)[:, None].repeat(1, 4)
    state = {
        "blocks.0.attn.qkv.weight": rows,
        "blocks.0.cross_attn.kv_linear.bias": torch.arange(2 * heads * k).float(),
    }
    mega = dit_to_megatron(state, heads)
    got = mega["decoder.layers.0.self_attention.linear_qkv.weight"][:, 0].long().tolist()
    q0, q1, k0, k1, v0, v1 = (list(range(i * k, (i + 1) * k)) for i in range(6))
    assert got == q0 + k0 + v0 + q1 + k1 + v1
    kv = mega["decoder.layers.0.cross_attention.linear_kv.bias"].long().tolist()
    assert kv == q0 + q1[:0] + k0[:0] + list(range(6, 9)) + list(range(3, 6)) + list(range(9, 12))


def test_tensor_parallel_shards_and_layer_stacking_round_trip(megatron_tp1):
    cfg = tiny_dit_config()
    mega = _megatron_state(cfg)
    shards = [shard_for_tensor_parallel(mega, r, 2) for r in range(2)]
    w = "decoder.layers.0.self_attention.linear_qkv.weight"
    assert shards[0][w].shape[0] == mega[w].shape[0] // 2
    p = "decoder.layers.0.mlp.linear_fc2.weight"
    assert shards[1][p].shape[1] == mega[p].shape[1] // 2
    assert torch.equal(
        shards[0]["decoder.layers.0.mlp.linear_fc2.bias"],
        mega["decoder.layers.0.mlp.linear_fc2.bias"],
    )
    merged = merge_tensor_parallel(shards)
    assert all(torch.equal(merged[k], mega[k]) for k in mega)
    stacked = stack_layers(mega)
    assert stacked["decoder.layers.mlp.linear_fc1.weight"].shape[0] == cfg.depth
    un = unstack_layers(stacked, cfg.depth)
    assert un.keys() == mega.keys() and all(torch.equal(un[k], mega[k]) for k in mega)
