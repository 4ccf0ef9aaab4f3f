"""save_pretrained / from_pretrained / push_to_hub and the SDXL (diffusers) trunk import."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load, save_file
from vae_official_layout import DEBUG_LAYOUT_ARGS, official_vae_layout

from mugv_testing import FakeHub, assert_close, build_hf_cache, offline_hf_cache
from mugv_vae import VAEConfig, VideoVAE


def _model(seed: int = 0) -> VideoVAE:
    torch.manual_seed(seed)
    return VideoVAE(VAEConfig.preset("debug", decode_window=4)).eval()


def test_save_and_load_round_trip(tmp_path) -> None:
    model = _model()
    with torch.no_grad():
        model.logvar.fill_(1.5)
        model.shift.add_(0.25)
    model.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]  # no temporary files left behind
    loaded = VideoVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.rand(1, 3, 8, 16, 16) * 2 - 1
    with torch.no_grad():
        assert_close(loaded.encode(x), model.encode(x))


def test_from_pretrained_hub_repo_offline(tmp_path) -> None:
    model = _model(1)
    folder = model.save_pretrained(tmp_path / "src")
    build_hf_cache(
        tmp_path / "cache",
        "mugv/vae-debug",
        {n: folder / n for n in ("config.json", "diffusion_pytorch_model.safetensors")},
    )
    with offline_hf_cache(tmp_path / "cache"):
        loaded = VideoVAE.from_pretrained("mugv/vae-debug")
    assert torch.equal(
        loaded.temporal_vae.quant_conv.conv.weight, model.temporal_vae.quant_conv.conv.weight
    )


def test_from_pretrained_bad_path() -> None:
    with pytest.raises(FileNotFoundError, match="neither an existing local path"):
        VideoVAE.from_pretrained("./no/such/folder/here")


def test_push_to_hub_uploads_a_loadable_folder(tmp_path) -> None:
    model = _model(2)
    with FakeHub() as hub:
        model.push_to_hub("org/vae", token=hub.token, endpoint=hub.endpoint, private=True)
        files = hub.files("org/vae")
    assert set(files) >= {"config.json", "diffusion_pytorch_model.safetensors"}
    fields = {k: v for k, v in json.loads(files["config.json"]).items() if not k.startswith("_")}
    assert VAEConfig.from_dict(fields) == model.config
    state = load(files["diffusion_pytorch_model.safetensors"])
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k


def _diffusers_folder(tmp_path, legacy_attention: bool) -> tuple[dict[str, torch.Tensor], object]:
    """A tiny SDXL-style AutoencoderKL in diffusers format, built from the reference layout."""
    layout = official_vae_layout(**DEBUG_LAYOUT_ARGS)
    g = torch.Generator().manual_seed(3)
    state: dict[str, torch.Tensor] = {}
    for k, shape in layout.items():
        if k.startswith("spatial_vae.module."):
            state[k.removeprefix("spatial_vae.module.")] = torch.randn(shape, generator=g)
    state["quant_conv.weight"] = torch.randn(8, 8, 1, 1, generator=g)
    state["quant_conv.bias"] = torch.randn(8, generator=g)
    state["post_quant_conv.weight"] = torch.randn(4, 4, 1, 1, generator=g)
    state["post_quant_conv.bias"] = torch.randn(4, generator=g)
    expected = dict(state)
    if legacy_attention:  # old diffusers names with 1x1-conv shaped weights
        for part in ("encoder", "decoder"):
            a = f"{part}.mid_block.attentions.0"
            for old, new in (
                ("query", "to_q"),
                ("key", "to_k"),
                ("value", "to_v"),
                ("proj_attn", "to_out.0"),
            ):
                state[f"{a}.{old}.weight"] = state.pop(f"{a}.{new}.weight")[:, :, None, None]
                state[f"{a}.{old}.bias"] = state.pop(f"{a}.{new}.bias")
    folder = tmp_path / "sdxl" / "vae"
    folder.mkdir(parents=True)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    config = {
        "_class_name": "AutoencoderKL",
        "block_out_channels": [8, 16, 32, 32],
        "layers_per_block": 2,
        "norm_num_groups": 4,
        "latent_channels": 4,
        "scaling_factor": 0.13025,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return expected, folder


@pytest.mark.parametrize("legacy", [False, True], ids=["current-names", "legacy-attention"])
def test_sdxl_trunk_initialisation(tmp_path, legacy: bool) -> None:
    expected, folder = _diffusers_folder(tmp_path, legacy)
    model = _model()
    temporal_before = {k: v.clone() for k, v in model.temporal_vae.state_dict().items()}
    skipped = model.load_diffusers_trunk(folder.parent, subfolder="vae")
    assert skipped == sorted(k for k in expected if "quant_conv" in k)
    trunk = model.spatial_vae.module.state_dict()
    for k, v in expected.items():
        if "quant_conv" not in k:
            assert torch.equal(trunk[k], v), k
    for k, v in model.temporal_vae.state_dict().items():
        assert torch.equal(v, temporal_before[k]), k


def test_sdxl_trunk_from_hub_repo_and_config_mismatch(tmp_path) -> None:
    expected, folder = _diffusers_folder(tmp_path, False)
    build_hf_cache(
        tmp_path / "cache",
        "stabilityai/tiny-sdxl-vae",
        {f"vae/{p.name}": p for p in folder.iterdir()},
    )
    model = _model()
    with offline_hf_cache(tmp_path / "cache"):
        model.load_diffusers_trunk("stabilityai/tiny-sdxl-vae", subfolder="vae")
    assert torch.equal(
        model.spatial_vae.module.decoder.conv_out.weight, expected["decoder.conv_out.weight"]
    )
    cfg = json.loads((folder / "config.json").read_text())
    cfg["block_out_channels"] = [128, 256, 512, 512]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="block_out_channels"):
        model.load_diffusers_trunk(folder)


def test_pre_diffusers_folder_config_mixin_and_version_check(tmp_path) -> None:
    from safetensors.torch import save_file

    from mugv_vae._checkpoint import MIN_DIFFUSERS, check_diffusers_version

    model = _model(3)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, legacy / "model.safetensors"
    )
    (legacy / "config.json").write_text(model.config.to_json())
    loaded = VideoVAE.from_pretrained(legacy)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # diffusers' ConfigMixin round trip gives back the typed config
    model.save_pretrained(tmp_path / "new")
    rebuilt = VideoVAE.from_config(VideoVAE.load_config(tmp_path / "new"))
    assert rebuilt.config == model.config
    with pytest.raises(ImportError, match=rf"needs diffusers>={MIN_DIFFUSERS}"):
        check_diffusers_version("0.29.0", feature="VideoVAE")
