"""Width growth, post-hoc EMA, LR schedule and the shard stream."""

import pytest
import torch
from train_helpers import tiny_dit_config, tiny_inputs, tiny_shards


def _random_dit(cfg):
    from mugv_dit import MUGDiT

    torch.manual_seed(0)
    dit = MUGDiT(cfg).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return dit


@pytest.mark.parametrize("factor", [2, 3])
def test_growth_with_zero_noise_preserves_output(factor):
    from mugv_dit import MUGDiT
    from mugv_testing import assert_close
    from mugv_train import grow_width

    cfg = tiny_dit_config()
    small = _random_dit(cfg)
    state, wide_cfg = grow_width(small.state_dict(), cfg, factor)
    assert wide_cfg.hidden_size == factor * cfg.hidden_size and wide_cfg.head_dim == cfg.head_dim
    wide = MUGDiT(wide_cfg).eval()
    wide.load_state_dict(state)
    inputs = tiny_inputs(cfg)
    with torch.no_grad():
        assert_close(wide(**inputs), small(**inputs), rtol=1e-4, atol=1e-4, name="grown output")
    noisy, _ = grow_width(small.state_dict(), cfg, factor, noise=1e-2)
    wide.load_state_dict(noisy)
    with torch.no_grad():
        assert not torch.allclose(wide(**inputs), small(**inputs), atol=1e-4)  # symmetry broken


def test_post_hoc_ema_weights():
    from mugv_train import post_hoc_ema

    states = [{"w": torch.tensor([float(i)])} for i in range(3)]  # oldest 0 .. newest 2
    got = post_hoc_ema(states, gamma=0.5)["w"].item()
    assert got == pytest.approx((0 * 0.25 + 1 * 0.5 + 2 * 1.0) / 1.75)
    assert post_hoc_ema(states, gamma=1.0)["w"].item() == pytest.approx(1.0)


def test_lr_schedule_values():
    from mugv_train import OptimConfig, lr_at

    o = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=4, schedule="cosine")
    assert [lr_at(s, 14, o) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_at(4, 14, o) == pytest.approx(1.0)
    assert lr_at(13, 14, o) == pytest.approx(0.1)
    lin = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="linear")
    assert lr_at(5, 11, lin) == pytest.approx(0.5)


def test_stream_resumes_exactly_and_balances_ranks(tmp_path):
    from mugv_data import open_shards
    from mugv_train import DataConfig
    from mugv_train.data_loading import ShardStream

    root = tiny_shards(tmp_path / "s", num_samples=10, image_every=3)
    sets = [open_shards(root)]
    cfg = DataConfig(shards=str(root), batch_size=2)
    a = ShardStream(sets, cfg, seed=5)
    it = iter(a)
    first = [next(it) for _ in range(4)]
    state = first[1].state
    rest = [next(it).ids for _ in range(5)]
    b = ShardStream(sets, cfg, seed=5)
    b.load_state_dict(state)
    it_b = iter(b)
    assert [next(it_b).ids for _ in range(7)] == [f.ids for f in first[2:]] + rest
    for batch in first:  # one latent shape per micro-batch
        assert batch.latent.shape[0] <= 2 and batch.text_mask.any(1).all()
    # two DP ranks: the batches of one step have the same token count (same bucket sizes)
    r0, r1 = (iter(ShardStream(sets, cfg, seed=5, dp_rank=r, dp_size=2)) for r in range(2))
    for _ in range(4):
        b0, b1 = next(r0), next(r1)
        assert abs(b0.num_tokens - b1.num_tokens) <= max(b0.num_tokens, b1.num_tokens) // 2
        assert set(b0.ids) != set(b1.ids) or len(sets[0]) < 4


def test_corrupt_sample_is_skipped_and_counted(tmp_path):
    from mugv_data import ShardError, open_shards
    from mugv_train import DataConfig
    from mugv_train.data_loading import ShardStream, open_shard_roots

    root = tiny_shards(tmp_path / "s", num_samples=8)
    sets = [open_shards(root)]
    sets[0].rows[0]["latent_crc32"] ^= 1  # checksum mismatch = corrupt sample
    stream = ShardStream(sets, DataConfig(shards=str(root), batch_size=2), seed=0)
    it = iter(stream)
    batches = [next(it) for _ in range(4)]  # one epoch
    assert sum(b.skipped for b in batches) == 1
    assert "s00000" not in {i for b in batches for i in b.ids}
    next(root.glob("shard-*.safetensors")).unlink()
    with pytest.raises(ShardError, match="missing"):
        open_shard_roots(str(root))
