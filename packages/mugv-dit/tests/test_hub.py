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
        "model.safetensors",
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
        {name: tmp_path / "src" / name for name in ("config.json", "model.safetensors")},
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
    assert set(files) >= {"config.json", "model.safetensors"}
    assert json.loads(files["config.json"])["hidden_size"] == 24
    # what arrived on the hub loads back to the same model (through an offline cache)
    build_hf_cache(tmp_path / "cache", "mug-test/pushed", files)
    with offline_hf_cache(tmp_path / "cache"):
        _assert_same_weights(MUGDiT.from_pretrained("mug-test/pushed"), model)
