"""save/load round trip, offline ``from_pretrained`` from a local HF cache, push_to_hub."""

from __future__ import annotations

import json

import huggingface_hub
import pytest
import torch
from conftest import tiny_inputs, tiny_model

from mugv_dit import MUGDiT
from mugv_testing import FakeHub, build_hf_cache, offline_hf_cache


def _assert_same_weights(a: MUGDiT, b: MUGDiT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_save_load_round_trip(tmp_path):
    model = tiny_model(seed=4)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    loaded = MUGDiT.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    _assert_same_weights(loaded, model)
    x, t, text, mask = tiny_inputs()
    torch.testing.assert_close(loaded(x, t, text, mask), model(x, t, text, mask), rtol=0, atol=0)


def test_round_trip_in_bf16_and_runtime_overrides(tmp_path):
    model = tiny_model(seed=4)
    model.save_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    loaded = MUGDiT.from_pretrained(tmp_path / "m", gradient_checkpointing=True)
    assert loaded.dtype == torch.bfloat16 and loaded.config.gradient_checkpointing
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.bfloat16()), k
    fp32 = MUGDiT.from_pretrained(tmp_path / "m", dtype=torch.float32)
    assert fp32.dtype == torch.float32


def test_offline_from_pretrained_our_format(tmp_path):
    model = tiny_model(seed=2)
    model.save_pretrained(tmp_path / "src")
    build_hf_cache(
        tmp_path / "cache",
        "mug-test/tiny-dit",
        {
            name: tmp_path / "src" / name
            for name in ("config.json", "diffusion_pytorch_model.safetensors")
        },
    )
    with offline_hf_cache(tmp_path / "cache"):
        loaded = MUGDiT.from_pretrained("mug-test/tiny-dit")
    _assert_same_weights(loaded, model)


def test_offline_official_repo_downloads_only_dit_pt(tmp_path, monkeypatch):
    model = tiny_model(seed=3)
    torch.save(model.state_dict(), tmp_path / "dit.pt")
    build_hf_cache(
        tmp_path / "cache",
        "MUG-V/MUG-V-inference",
        {"dit.pt": tmp_path / "dit.pt", "vae.pt": b"not needed by the DiT"},
    )
    requested = []
    real = huggingface_hub.hf_hub_download

    def spy(repo_id, filename, **kwargs):
        requested.append(filename)
        return real(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    with offline_hf_cache(tmp_path / "cache"):
        loaded = MUGDiT.from_pretrained("MUG-V/MUG-V-inference")
    _assert_same_weights(loaded, model)
    assert "vae.pt" not in requested and requested[-1] == "dit.pt"


def test_missing_weights_are_reported(tmp_path):
    build_hf_cache(tmp_path / "cache", "mug-test/empty", {"README.md": b"# nothing"})
    with (
        offline_hf_cache(tmp_path / "cache"),
        pytest.raises(FileNotFoundError, match="no MUG-DiT weights"),
    ):
        MUGDiT.from_pretrained("mug-test/empty")
    build_hf_cache(tmp_path / "cache", "mug-test/half", {"config.json": b"{}"})
    with (
        offline_hf_cache(tmp_path / "cache"),
        pytest.raises(FileNotFoundError, match="weights are missing"),
    ):
        MUGDiT.from_pretrained("mug-test/half")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither"):
        MUGDiT.from_pretrained(tmp_path / "folder")
    with pytest.raises(FileNotFoundError, match="neither an existing local path nor a Hub repo"):
        MUGDiT.from_pretrained(str(tmp_path / "no" / "such" / "dir"))


def test_push_to_hub_uploads_a_loadable_model(tmp_path):
    model = tiny_model(seed=6)
    with FakeHub() as hub:
        model.push_to_hub("mug-test/pushed", token=hub.token, endpoint=hub.endpoint, private=True)
        files = hub.files("mug-test/pushed")
    assert set(files) >= {"config.json", "diffusion_pytorch_model.safetensors"}
    assert json.loads(files["config.json"])["hidden_size"] == 24
    # what arrived on the hub loads back to the same model (through an offline cache)
    build_hf_cache(tmp_path / "cache", "mug-test/pushed", files)
    with offline_hf_cache(tmp_path / "cache"):
        _assert_same_weights(MUGDiT.from_pretrained("mug-test/pushed"), model)


# -- diffusers integration ------------------------------------------------------------


def test_config_mixin_round_trip_keeps_the_typed_config(tmp_path):
    """config.json <-> DiTConfig through diffusers' load_config / from_config."""
    model = tiny_model(seed=1, patch_size=(1, 2, 2), caption_norm_eps=1e-5)
    model.save_pretrained(tmp_path / "m")
    raw = MUGDiT.load_config(tmp_path / "m")
    assert raw["_class_name"] == "MUGDiT" and raw["caption_norm_eps"] == 1e-5
    rebuilt = MUGDiT.from_config(raw)
    assert isinstance(rebuilt.config, type(model.config)) and rebuilt.config == model.config
    assert MUGDiT(model.config).config == MUGDiT(**model.config.to_dict()).config == model.config
    # a runtime field set on the model reaches config.json
    model.config = model.config.replace(kernel_backend="torch")
    model.save_pretrained(tmp_path / "m2")
    assert MUGDiT.load_config(tmp_path / "m2")["kernel_backend"] == "torch"


def test_pre_diffusers_folder_and_single_file_load(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model(seed=8)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, legacy / "model.safetensors"
    )
    (legacy / "config.json").write_text(json.dumps(model.config.to_dict()))
    _assert_same_weights(MUGDiT.from_pretrained(legacy), model)
    torch.save(model.state_dict(), tmp_path / "dit.pt")
    single = MUGDiT.from_single_file(tmp_path / "dit.pt", torch_dtype=torch.bfloat16)
    assert single.dtype == torch.bfloat16
    for k, v in model.state_dict().items():
        assert torch.equal(single.state_dict()[k], v.bfloat16()), k


def test_diffusers_folder_with_extra_tensor_is_refused(tmp_path):
    """diffusers only warns about unexpected keys; the official-layout contract is strict."""
    from safetensors.torch import load_file, save_file

    tiny_model(seed=1).save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["blocks.9.attn.qkv.weight"] = torch.zeros(1)
    save_file(state, path)
    with pytest.raises(ValueError, match=r"unexpected keys: blocks\.9\.attn\.qkv\.weight"):
        MUGDiT.from_pretrained(tmp_path / "m")


def test_too_old_diffusers_names_the_minimum():
    from mugv_dit._checkpoint import MIN_DIFFUSERS, check_diffusers_version

    check_diffusers_version(MIN_DIFFUSERS, feature="MUGDiT")
    check_diffusers_version("0.42.1.dev0", feature="MUGDiT")
    with pytest.raises(ImportError, match=rf"MUGDiT needs diffusers>={MIN_DIFFUSERS}.*0\.30\.2"):
        check_diffusers_version("0.30.2", feature="MUGDiT")
