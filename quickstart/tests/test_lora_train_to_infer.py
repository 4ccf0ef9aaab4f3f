"""Across the stack (the quickstart's tests drive every package): a LoRA trained by
mugv-train, exported with ``export_lora`` (what ``mugv-train export --lora`` runs), loaded
by mugv-infer's ``load_lora_weights``: the DiT and the whole pipeline equal the merged
model that mugv-train's own export writes (issue 18, item 3).

The two sides share no code: mugv-train merges W += (alpha / r) B A in Megatron's layout and
converts W; the export converts A and B; diffusers/peft applies them unfused as
W x + (alpha / r) B (A x). A wrong row order, scale or name would differ by 1e-2 or more.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mugv_testing import assert_close

CHANNELS, TEXT_DIM = 24, 16  # the debug VAE's latent channels; small captions


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step LoRA run (rank 4, alpha 8) on a randomised 'pretrained' DiT, exported."""
    from mugv_dit import DiTConfig, MUGDiT
    from mugv_train import (
        CheckpointConfig,
        DataConfig,
        LogConfig,
        LoRAConfig,
        OptimConfig,
        TrainConfig,
        export_lora,
        train,
        write_synthetic_shards,
    )

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("lora")
    shards = write_synthetic_shards(tmp / "shards", num_samples=8, channels=CHANNELS, frames=2,
                                    height=4, width=4, text_dim=TEXT_DIM, text_tokens=3)  # fmt: skip
    model = DiTConfig(depth=2, hidden_size=48, num_heads=2, in_channels=CHANNELS,
                      text_dim=TEXT_DIM)  # fmt: skip
    torch.manual_seed(0)
    base = MUGDiT(model)
    with torch.no_grad():  # a fresh DiT has a zero final layer: make every weight count
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    cfg = TrainConfig(
        model=model,
        output_dir=str(tmp / "run"),
        train_steps=3,
        data=DataConfig(shards=str(shards), batch_size=2, prefetch=0, null_text_tokens=8),
        optim=OptimConfig(lr=3e-2, min_lr=3e-2, warmup_steps=0, schedule="constant", eps=1e-8),
        checkpoint=CheckpointConfig(save_every=3, keep_last=1),
        log=LogConfig(tensorboard=False, progress=False),
        lora=LoRAConfig(rank=4, alpha=8.0),
        init_from=str(base.save_pretrained(tmp / "base")),
        seed=1,
    )
    result = train(cfg)
    path = export_lora(cfg.output_dir, tmp / "adapter")  # reads the last checkpoint
    assert path == tmp / "adapter" / "lora.safetensors"
    return cfg, result, path


def _pipeline(dit):
    import mugv_vae
    from mugv_infer import MUGVPipeline

    torch.manual_seed(0)
    vae = mugv_vae.VideoVAE(mugv_vae.VAEConfig.preset("debug"))

    def text(prompts):  # precomputed caption embeddings [B, S, E] and mask [B, S]
        g = torch.Generator().manual_seed(len(prompts))
        return torch.randn(len(prompts), 5, TEXT_DIM, generator=g), torch.ones(
            len(prompts), 5, dtype=torch.bool
        )

    text.dim = TEXT_DIM
    return MUGVPipeline(dit=dit.eval(), vae=vae, text_encoder=text)


def _inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, CHANNELS, 3, 6, 6, generator=g)
    return x, torch.tensor([700.0, 90.0]), torch.randn(2, 7, TEXT_DIM, generator=g)


@pytest.mark.parametrize("source", ["file", "folder"])
def test_exported_lora_loads_and_equals_the_merged_model(trained, source):
    from mugv_dit import MUGDiT

    cfg, result, path = trained
    merged = MUGDiT.from_pretrained(str(result.export_dir)).eval()
    base = MUGDiT.from_pretrained(cfg.init_from)
    pipe = _pipeline(base)
    pipe.load_lora_weights(str(path if source == "file" else path.parent), adapter_name="run")
    x, t, text = _inputs()
    with torch.no_grad():
        expected = merged(x, t, text)
        assert_close(pipe.dit(x, t, text), expected, atol=1e-5, rtol=1e-4, name="LoRA vs merged")
        # the adapter changes the output (it trained): the comparison has teeth
        pipe.set_adapters(["run"], [0.0])
        assert (pipe.dit(x, t, text) - expected).abs().max() > 1e-3
        pipe.set_adapters(["run"], [1.0])


def test_pipeline_with_the_lora_equals_the_merged_pipeline(trained):
    from mugv_dit import MUGDiT

    cfg, result, path = trained
    lora_pipe = _pipeline(MUGDiT.from_pretrained(cfg.init_from))
    lora_pipe.load_lora_weights(str(path))
    merged_pipe = _pipeline(MUGDiT.from_pretrained(str(result.export_dir)))
    args = dict(duration=9, height=48, width=48, steps=3, progress=False, seed=7,
                output_type="latent")  # fmt: skip
    a = lora_pipe("a red fox", **args).latents
    b = merged_pipe("a red fox", **args).latents
    assert_close(a, b, atol=1e-4, rtol=1e-4, name="pipeline latents")
    lora_pipe.fuse_lora()  # fused weights equal the merged export
    merged = dict(merged_pipe.dit.named_parameters())
    for name, p in lora_pipe.dit.named_parameters():
        if ".lora_" in name:
            continue
        key = name.replace(".base_layer.", ".")
        assert_close(p, merged[key], atol=1e-6, rtol=1e-5, name=key)


def test_lora_for_another_model_names_the_keys(trained):
    from mugv_dit import DiTConfig, MUGDiT

    cfg, _, path = trained
    wide = dataclasses.replace(cfg.model, hidden_size=96, num_heads=4)
    pipe = _pipeline(MUGDiT(DiTConfig.from_dict(wide.to_dict())))
    with pytest.raises(ValueError, match=r"does not fit this DiT .*dit\.blocks\.0\.attn\.qkv"):
        pipe.load_lora_weights(str(path))
