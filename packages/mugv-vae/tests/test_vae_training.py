"""Trainer (PSNR rises, exact resume, GAN/adaptive stages), evaluator and the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mugv_testing import assert_close
from mugv_vae import (
    LPIPS,
    LossWeights,
    TrainConfig,
    VAEConfig,
    VAETrainer,
    VideoVAE,
    evaluate_folder,
    psnr_video,
    read_video,
    ssim_video,
    write_video,
)
from mugv_vae._video_io import synthetic_clip
from mugv_vae.cli import main as cli_main


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convs: one intra-op thread avoids OpenMP oversubscription on a loaded 2-core box
    (several times faster there); the numbers checked do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# the debug widths with one block per stage: same stages, fast enough for CPU tests
FAST = VAEConfig.preset("debug", temporal_num_res_blocks=1, layers_per_block=1)


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / "run"),
        vae=FAST,
        num_frames=8,
        height=16,
        width=16,
        batch_size=2,
        lr=2e-3,
        checkpoint_every=1000,
    )
    base.update(kw)
    return TrainConfig(**base)


def _val_psnr(model: VideoVAE, val: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        r = model.decode(model.encode(val), 8)
    model.train()
    return float(
        torch.stack([torch.tensor(psnr_video(r[i], val[i])) for i in range(len(val))]).mean()
    )


def test_reconstruction_psnr_rises_on_synthetic_clips(tmp_path) -> None:
    trainer = VAETrainer(_config(tmp_path, steps=12))
    val = torch.stack([synthetic_clip(10**6 + i, 8, 16, 16) for i in range(2)])
    before = _val_psnr(trainer.model, val)
    history = trainer.train()
    after = _val_psnr(trainer.model, val)
    assert len(history) == 12 and all(m["window"] == 1 for m in history)  # 8 frames: R capped at 1
    assert after > before + 2.0, (before, after)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 13))
    final = VideoVAE.from_pretrained(tmp_path / "run" / "final")
    assert_close(
        final.temporal_vae.quant_conv.conv.weight, trainer.model.temporal_vae.quant_conv.conv.weight
    )


def test_resume_is_exact_with_gan_and_adaptive_stages(tmp_path) -> None:
    torch.manual_seed(0)
    net = LPIPS((4, 4, 8, 8, 8))
    torch.save(net.state_dict(), tmp_path / "lpips.pt")
    kw = dict(
        num_frames=16,
        batch_size=1,
        decode_windows=(1, 4, 8),
        adaptive_start=1,
        gan_start=2,
        disc_channels=4,
        lpips_path=str(tmp_path / "lpips.pt"),
        lpips_widths=(4, 4, 8, 8, 8),
        checkpoint_every=2,
    )
    straight = VAETrainer(_config(tmp_path / "a", steps=4, **kw))
    hist = straight.train()
    assert {m["window"] for m in hist} <= {1, 2}  # 16 frames = 2 latents: R capped at 2
    assert "disc" in hist[-1] and "perceptual" in hist[-1] and hist[-1]["adaptive"] == 1.0
    first = VAETrainer(_config(tmp_path / "b", steps=2, **kw))
    first.train()
    resumed = VAETrainer(_config(tmp_path / "b", steps=4, **kw))
    assert resumed.step == 2
    hist_b = resumed.train()
    assert [m["total"] for m in hist_b] == [m["total"] for m in hist[2:]]
    for (k, v), w in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k
    assert straight.disc is not None and resumed.disc is not None
    for v, w in zip(straight.disc.state_dict().values(), resumed.disc.state_dict().values()):
        assert torch.equal(v, w)
    assert [p.name for p in resumed.checkpoints()] == ["step_0000002", "step_0000004"]


def test_posterior_logvar_init_sets_the_initial_posterior_noise(tmp_path) -> None:
    clip = synthetic_clip(7, 8, 16, 16)[None]
    default = VAETrainer(_config(tmp_path / "d", steps=0)).model
    low = VAETrainer(_config(tmp_path / "l", steps=0, posterior_logvar_init=-6.0)).model
    with torch.no_grad():
        mean_d, logvar_d = default.encode_moments(clip)
        mean_l, logvar_l = low.encode_moments(clip)
    assert abs(float(logvar_d.mean())) < 1.0  # a fresh encoder: posterior std ~1
    assert abs(float(logvar_l.mean()) + 6.0) < 1.0 and float(logvar_l.max()) < -4.0
    assert torch.equal(mean_d, mean_l)  # same seed, only the log-variance bias differs
    with pytest.raises(ValueError, match=r"posterior_logvar_init.*init_from"):
        TrainConfig(output_dir="x", init_from="somewhere", posterior_logvar_init=-6.0)


def test_warmup_ramps_the_learning_rate_linearly(tmp_path) -> None:
    trainer = VAETrainer(_config(tmp_path, steps=5, warmup_steps=4, lr=1e-3))
    history = trainer.train()
    assert [m["lr"] for m in history] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(output_dir="x", warmup_steps=-1)


def test_train_config_checks() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        TrainConfig(output_dir="x", num_frames=12)
    cfg = TrainConfig(output_dir="x", decode_windows=(1, 4))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"output_dir": "x", "lr_max": 1})


def test_metrics_known_values() -> None:
    a = torch.zeros(3, 2, 8, 8)
    # [-1, 1] offset 0.1 -> 0.05 on [0, 1]: PSNR = 10 log10(1 / 0.0025)
    assert abs(psnr_video(a + 0.1, a) - 26.0206) < 1e-3
    assert abs(ssim_video(a, a) - 1.0) < 1e-6
    g = torch.Generator().manual_seed(0)
    b = torch.rand(3, 2, 16, 16, generator=g) * 2 - 1
    assert ssim_video(b, torch.rand(3, 2, 16, 16, generator=g) * 2 - 1) < 0.2


def test_evaluate_folder_reports_metrics_frames_and_bad_files(tmp_path) -> None:
    videos = tmp_path / "videos"
    write_video(videos / "a.mp4", synthetic_clip(1, 9, 32, 32), fps=8)
    write_video(videos / "b.mp4", synthetic_clip(2, 8, 24, 40), fps=8)
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    torch.manual_seed(0)
    model = VideoVAE(FAST)
    torch.manual_seed(1)
    net = LPIPS((4, 4, 8, 8, 8))
    torch.save(net.state_dict(), tmp_path / "lpips.pt")
    result = evaluate_folder(
        model,
        videos,
        tmp_path / "eval",
        lpips_path=tmp_path / "lpips.pt",
        lpips_widths=(4, 4, 8, 8, 8),
    )
    assert [c["name"] for c in result["clips"]] == ["a.mp4", "b.mp4"]
    assert [f["name"] for f in result["failed"]] == ["broken.mp4"]
    # independent recomputation of clip a's PSNR
    video, _ = read_video(videos / "a.mp4")
    with torch.no_grad():
        recon = model.decode(model.encode(video[None]), num_frames=9)[0]
    assert abs(result["clips"][0]["psnr"] - psnr_video(recon, video)) < 1e-4
    assert result["clips"][0]["frames"] == 9 and result["clips"][1]["width"] == 40
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk["mean"]["psnr"] == pytest.approx(result["mean"]["psnr"])
    summary = (tmp_path / "eval" / "summary.md").read_text()
    assert "| a.mp4 | 9 | 32x32 |" in summary and "broken.mp4" in summary and "LPIPS" in summary
    from PIL import Image

    pngs = sorted((tmp_path / "eval" / "frames").glob("*.png"))
    assert [p.name for p in pngs] == ["a_f0000.png", "a_f0008.png", "b_f0000.png", "b_f0007.png"]
    assert Image.open(pngs[-1]).size == (80, 24)  # original | reconstruction


def test_cli_train_then_eval(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    rc = cli_main(
        ["train", "--out", str(out), "--preset", "debug", "--steps", "1",
         "--set", "height=16", "--set", "width=16", "--set", "num_frames=8",
         "--set", "batch_size=1"]
    )  # fmt: skip
    assert rc == 0 and (out / "final" / "diffusion_pytorch_model.safetensors").is_file()
    assert VideoVAE.from_pretrained(out / "final").config == VAEConfig.preset("debug")
    write_video(tmp_path / "v" / "c.mp4", synthetic_clip(3, 8, 16, 16), fps=8)
    rc = cli_main(["eval", "--model", str(out / "final"), "--videos", str(tmp_path / "v"),
                   "--out", str(tmp_path / "e")])  # fmt: skip
    assert rc == 0 and "| c.mp4 | 8 | 16x16 |" in capsys.readouterr().out


def _ddp_worker(rank: int, world_size: int, out: str) -> dict:
    torch.set_num_threads(1)  # two ranks on a shared 2-core box: no oversubscription
    cfg = TrainConfig(
        output_dir=out, vae=FAST, num_frames=8, height=16, width=16, batch_size=1, steps=2,
        lr=2e-3, checkpoint_every=1000, device="cpu",
    )  # fmt: skip
    trainer = VAETrainer(cfg)
    assert trainer.world == world_size and trainer.rank == rank
    hist = trainer.train()
    weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    # plain bytes: tensors sent through the result queue need the sender alive until read
    return {"weights": weights.numpy().tobytes(), "loss": hist[0]["total"]}


@pytest.mark.distributed
def test_ddp_two_gloo_ranks_stay_in_sync(tmp_path) -> None:
    from mugv_testing import run_distributed

    res = run_distributed(_ddp_worker, world_size=2, args=(str(tmp_path / "ddp"),), timeout=600)
    # ranks see different clips (different losses) but all-reduced gradients keep the
    # weights identical
    assert res[0]["loss"] != res[1]["loss"]
    assert res[0]["weights"] == res[1]["weights"]
    assert (tmp_path / "ddp" / "final" / "diffusion_pytorch_model.safetensors").is_file()


def _changed(before: dict, after: dict, prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_trunk_steps_train_the_trunk_alone_then_freeze_trunk_the_temporal_stage(tmp_path):
    cfg = _config(tmp_path, steps=5, trunk_steps=3, trunk_frames=4, freeze_trunk=True,
                  checkpoint_every=3, posterior_logvar_init=-6.0)  # fmt: skip
    trainer = VAETrainer(cfg)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    hist = trainer.train(steps=3)
    mid = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert [m.get("trunk") for m in hist] == [1.0, 1.0, 1.0]
    assert _changed(start, mid, "spatial_vae.") and not _changed(start, mid, "temporal_vae.")
    # the trunk steps are the image autoencoder: loss = l1 + mse of frames through the trunk
    frames = trainer._frames.batch(2, 0, 4)  # the frames of the third step
    assert frames.shape == (4, 3, 1, 16, 16)
    hist = trainer.train()
    end = trainer.model.state_dict()
    assert [m.get("trunk") for m in hist] == [None, None]
    assert _changed(mid, end, "temporal_vae.") and not _changed(mid, end, "spatial_vae.")
    # resuming inside the video phase from the step-3 checkpoint repeats the same steps
    other = dataclasses.replace(cfg, output_dir=str(tmp_path / "b"))
    VAETrainer(other).train(steps=3)
    resumed = VAETrainer(other)
    assert resumed.step == 3
    hist_b = resumed.train()
    assert [m["total"] for m in hist_b] == [m["total"] for m in hist]
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, end[k]), k


def test_trunk_step_loss_is_the_image_autoencoder_loss(tmp_path):
    trainer = VAETrainer(_config(tmp_path, steps=1, trunk_steps=1, trunk_frames=3))
    model = VideoVAE(FAST)
    model.load_state_dict(trainer.model.state_dict())
    from mugv_vae._video_io import ClipSource

    frames = ClipSource(1, 16, 16, seed=1).batch(0, 0, 3)  # seed + 1, as the trainer draws
    with torch.no_grad():
        recon = model._spatial_decode(model._spatial_encode(frames))
    expected = (recon - frames).abs().mean() + ((recon - frames) ** 2).mean()
    (m,) = trainer.train()
    assert m["total"] == pytest.approx(float(expected), rel=1e-5)


def test_feature_loss_matches_trunk_features_and_decoded_latents(tmp_path):
    trainer = VAETrainer(_config(tmp_path, steps=1, loss=LossWeights(feature=2.0)))
    model = VideoVAE(FAST)
    model.load_state_dict(trainer.model.state_dict())
    video = trainer.data.batch(0, 0, 2)
    with torch.no_grad():
        mean, _ = model.encode_moments(video)
        target = model.trunk_features(video)
        feature = ((model.decode_features(mean) - target) ** 2).mean()
    (m,) = trainer.train()
    assert m["feature"] == pytest.approx(float(feature), rel=1e-5)
    assert m["total"] == pytest.approx(m["l1"] + m["mse"] + 1e-6 * m["kl"] + 2.0 * m["feature"],
                                       rel=1e-5)  # fmt: skip


def test_trunk_features_and_decode_features_agree_with_the_whole_model():
    torch.manual_seed(0)
    model = VideoVAE(FAST).eval()
    video = torch.rand(1, 3, 17, 16, 16) * 2 - 1  # 1 (mod 8): frame 0 replicated
    with torch.no_grad():
        mean, logvar = model.encode_moments(video)
        feats = model.trunk_features(video)
        assert feats.shape[2] == 24
        moments = model._temporal_encode(feats)
        m, lv = moments.chunk(2, 1)
        assert_close(m, mean)
        assert_close(lv.clamp(*model.config.logvar_clamp), logvar)
        # the features each latent decodes to, through the 2D decoder = decode with window 1
        pix = model._spatial_decode(model.decode_features(mean))
        assert_close(pix, model.decode(model.normalize(mean), window=1), atol=1e-5, rtol=1e-5)
        assert_close(model.trunk_roundtrip(video[:, :, :2]),
                     model._spatial_decode(model._spatial_encode(video[:, :, :2])))  # fmt: skip


def test_trunk_and_feature_options_are_checked():
    with pytest.raises(ValueError, match="trunk_steps must be in"):
        TrainConfig(output_dir="x", steps=3, trunk_steps=4)
    with pytest.raises(ValueError, match="trunk_frames"):
        TrainConfig(output_dir="x", trunk_frames=0)
    with pytest.raises(ValueError, match=r"loss\.feature"):
        TrainConfig(output_dir="x", loss=LossWeights(feature=-1.0))
