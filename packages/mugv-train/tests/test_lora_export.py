"""LoRA export (`export_lora`, `mugv-train export --lora`) and adapter placement.

The exported file is checked against the merged model, an independent path: the loop
merges W += (alpha / r) B A in Megatron's layout and converts W to mugv-dit's; the export
converts A and B. ``W_dit + (alpha / r) B_dit A_dit`` must equal the merged export.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_helpers import tiny_dit_config, tiny_shards, tiny_train_config

#: mugv-dit names of the adapted block linears
ADAPTED = ("attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear",
           "cross_attn.proj", "mlp.fc1", "mlp.fc2")  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A 3-step LoRA run (rank 4, alpha 8) from a randomised "pretrained" DiT."""
    from mugv_dit import MUGDiT
    from mugv_train import LoRAConfig, train
    from mugv_train.config import ParallelConfig
    from mugv_train.parallel import init_distributed

    init_distributed(ParallelConfig())
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("lora")
    shards = tiny_shards(tmp / "shards")
    cfg = tiny_train_config(shards, tmp / "out", steps=3, lora=LoRAConfig(rank=4, alpha=8.0))
    torch.manual_seed(0)
    base = MUGDiT(cfg.model)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    cfg = dataclasses.replace(cfg, init_from=str(base.save_pretrained(tmp / "base")))
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=3e-2, min_lr=3e-2))
    result = train(cfg)
    return cfg, result


class _Payload:
    """Unpickling this creates ``marker``: the proof that a loader ran code from a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _apply(base: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], scale: float):
    """mugv-dit weights with W + scale B A for every exported pair (keys ``dit.<m>.lora_*``)."""
    out = dict(base)
    for key, a in lora.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("dit.").removesuffix(".lora_A.weight")
            b = lora[key.replace("lora_A", "lora_B")]
            out[f"{module}.weight"] = base[f"{module}.weight"] + scale * (b @ a)
    return out


def test_export_from_the_run_equals_the_merged_export(lora_run, tmp_path):
    from mugv_dit import MUGDiT
    from mugv_train import export_lora

    cfg, result = lora_run
    path = export_lora(cfg.output_dir, tmp_path / "adapter")
    assert path == tmp_path / "adapter" / "lora.safetensors"
    lora = load_file(str(path))
    depth = cfg.model.depth
    assert sorted(lora) == sorted(
        f"dit.blocks.{i}.{m}.lora_{w}.weight" for i in range(depth) for m in ADAPTED for w in "AB"
    )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert float(meta["lora_alpha"]) == 8.0 and meta["lora_rank"] == "4"
    assert json.loads(meta["lora_adapter_metadata"]) == {
        "dit.r": 4,
        "dit.lora_alpha": 8.0,
        "dit.target_modules": sorted(f"blocks.{i}.{m}" for i in range(depth) for m in ADAPTED),
    }
    assert all(v.dtype == torch.float32 for v in lora.values())
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # it trained
    base = MUGDiT.from_pretrained(cfg.init_from).state_dict()
    merged = MUGDiT.from_pretrained(str(result.export_dir)).state_dict()
    rebuilt = _apply(base, lora, 8.0 / 4)
    for key, value in merged.items():
        torch.testing.assert_close(rebuilt[key], value, atol=1e-6, rtol=1e-5, msg=key)
    # a wrong scale or row order would not match: the check has teeth
    wrong = _apply(base, lora, 8.0 / 4 * 2)
    assert not torch.allclose(wrong["blocks.0.attn.qkv.weight"], merged["blocks.0.attn.qkv.weight"])


def test_export_of_a_tensor_parallel_checkpoint_equals_tp1(lora_run, tmp_path):
    """The step folder re-written as TP = 2 parts (B of column-parallel linears split over
    rows, A of row-parallel ones over columns, as Megatron shards them) exports the same."""
    from mugv_train import export_lora
    from mugv_train.checkpointing import latest_checkpoint

    cfg, _ = lora_run
    step = latest_checkpoint(Path(cfg.output_dir) / "checkpoints")
    tp2 = tmp_path / "step_tp2"
    tp2.mkdir()
    state = torch.load(step / "model_tp0_pp0.pt", weights_only=True)
    parts: list[dict] = [{}, {}]
    for key, value in state.items():
        linear = key.split(".")[-2] if ".lora_" in key else ""
        col = linear in ("linear_qkv", "linear_q", "linear_kv", "linear_fc1")
        if key.endswith("lora_B") and col:
            halves = value.chunk(2, dim=0)
        elif key.endswith("lora_A") and linear in ("linear_proj", "linear_fc2"):
            halves = value.chunk(2, dim=1)
        else:  # replicated factors (and the base weights, which the export does not read)
            halves = (value, value)
        for r in range(2):
            parts[r][key] = halves[r].clone()
    for r in range(2):
        torch.save(parts[r], tp2 / f"model_tp{r}_pp0.pt")
    meta = json.loads((step / "meta.json").read_text())
    (tp2 / "meta.json").write_text(json.dumps({**meta, "tensor_parallel": 2}))
    one = load_file(str(export_lora(step, tmp_path / "a.safetensors")))
    two = load_file(str(export_lora(tp2, tmp_path / "b.safetensors")))
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key


def test_export_from_a_model_and_adapters_follow_the_model(megatron_tp1, tmp_path):
    """Adapters are created on the model's device and dtype, and follow later moves; the
    export of a live model equals W + s B A of its own merged weights."""
    from mugv_train import LoRAConfig, export_lora
    from mugv_train.lora import add_lora, merged_state_dict
    from mugv_train.parallel import MegatronMUGDiT, megatron_to_dit

    cfg = tiny_dit_config()
    model = MegatronMUGDiT(cfg).to(torch.bfloat16)
    add_lora(model, LoRAConfig(rank=2, alpha=3.0))
    adapters = [p for n, p in model.named_parameters() if ".lora_" in n]
    assert adapters and all(p.dtype == torch.bfloat16 for p in adapters)
    assert all(p.requires_grad for p in adapters)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)
    model.to(torch.float64)  # registered parameters: they move with the model
    assert all(p.dtype == torch.float64 for n, p in model.named_parameters() if ".lora_" in n)
    meta = MegatronMUGDiT(cfg).to("meta")
    add_lora(meta, LoRAConfig(rank=2, alpha=3.0))
    assert all(p.device.type == "meta" for n, p in meta.named_parameters() if ".lora_" in n)

    model = MegatronMUGDiT(cfg)
    add_lora(model, LoRAConfig(rank=2, alpha=3.0))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.1)
    path = export_lora(model, tmp_path / "m.safetensors")
    lora = load_file(str(path))
    base = megatron_to_dit(
        {k: v for k, v in model.state_dict().items() if ".lora_" not in k}, cfg.num_heads
    )
    merged = megatron_to_dit(merged_state_dict(model), cfg.num_heads)
    rebuilt = _apply(base, lora, 3.0 / 2)
    for key, value in merged.items():
        torch.testing.assert_close(rebuilt[key], value, atol=1e-6, rtol=1e-5, msg=key)


def test_initial_adapters_do_not_depend_on_the_parallel_layout(megatron_tp1):
    """A is drawn per linear from (seed, global name) over the full width: a pipeline stage
    holding layer 1 gets the adapters of layer 1 of the whole model, and the TP shards of a
    row-parallel A are the columns of the TP = 1 draw (a column-parallel A is replicated)."""
    from mugv_train import LoRAConfig
    from mugv_train.lora import add_lora, initial_lora_a
    from mugv_train.parallel import MegatronMUGDiT

    lora = LoRAConfig(rank=2, alpha=3.0)
    whole = MegatronMUGDiT(tiny_dit_config(depth=2))
    add_lora(whole, lora, seed=5)
    stage = MegatronMUGDiT(tiny_dit_config(depth=1))
    stage.layer_offset = 1  # the second pipeline stage of a depth-2 model, PP = 2
    add_lora(stage, lora, seed=5)
    adapters = {n: p for n, p in whole.named_parameters() if n.endswith("lora_A")}
    layer1 = {n: p for n, p in adapters.items() if n.startswith("decoder.layers.1.")}
    assert len(layer1) == 7
    for n, p in stage.named_parameters():
        if n.endswith("lora_A"):
            assert torch.equal(p, layer1[n.replace("layers.0.", "layers.1.")]), n
    a0 = adapters["decoder.layers.0.mlp.linear_fc1.lora_A"]
    assert not torch.equal(a0, adapters["decoder.layers.1.mlp.linear_fc1.lora_A"])
    fc2 = "decoder.layers.0.mlp.linear_fc2"
    full = adapters[f"{fc2}.lora_A"]  # row-parallel: [r, 192]
    assert torch.equal(full, initial_lora_a(5, fc2, 2, 192, True, 0, 1))
    shards = [initial_lora_a(5, fc2, 2, 96, True, r, 2) for r in range(2)]
    assert torch.equal(torch.cat(shards, dim=1), full)
    fc1 = "decoder.layers.0.mlp.linear_fc1"
    assert torch.equal(initial_lora_a(5, fc1, 2, 48, False, 1, 2), a0)  # replicated
    assert abs(full.std().item() * 2**0.5 - 1) < 0.2  # N(0, 1/r)


def test_export_errors_name_the_problem(lora_run, tmp_path):
    from mugv_train import export_lora
    from mugv_train.checkpointing import latest_checkpoint
    from mugv_train.lora import LoRAExportError

    cfg, _ = lora_run
    step = latest_checkpoint(Path(cfg.output_dir) / "checkpoints")
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nowhere does not exist"):
        export_lora(tmp_path / "nowhere", tmp_path / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoRAExportError, match=r"empty is not a mugv-train checkpoint"):
        export_lora(tmp_path / "empty", tmp_path / "x")

    def variant(name, **meta_changes):
        folder = tmp_path / name
        shutil.copytree(step, folder)
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, **meta_changes}))
        return folder

    with pytest.raises(LoRAExportError, match=r"was not trained with LoRA"):
        export_lora(variant("plain", lora=None), tmp_path / "x")
    with pytest.raises(LoRAExportError, match=r"torch_dist format; LoRA export reads the cpu"):
        export_lora(variant("dist", format="torch_dist"), tmp_path / "x")
    other = {**tiny_dit_config(hidden_size=96, num_heads=2).to_dict()}
    with pytest.raises(
        LoRAExportError,
        match=r"do not fit the run's DiT \(depth 2, hidden_size 96, LoRA rank 4\): "
        r"dit\.blocks\.0\.attn\.proj\.lora_A\.weight \(4, 48\) \(expected \(4, 96\)\)",
    ):
        export_lora(variant("wide", model=other), tmp_path / "x")
    shallow = tiny_dit_config(depth=1).to_dict()
    with pytest.raises(LoRAExportError, match=r"dit\.blocks\.1\.attn\.proj\.lora_A\.weight "
                                              r"\(the DiT has no linear blocks\.1\.attn\.proj\)"):  # fmt: skip
        export_lora(variant("shallow", model=shallow), tmp_path / "x")
    with pytest.raises(LoRAExportError, match=r"LoRA rank 8\): .*\(4, 48\) \(expected \(8, 48\)"):
        export_lora(variant("rank", lora={"rank": 8, "alpha": 8.0}), tmp_path / "x")
    payload = variant("pickled")
    marker = tmp_path / "payload-ran"
    torch.save({"x": torch.zeros(1), "bad": _Payload(str(marker))}, payload / "model_tp0_pp0.pt")
    from mugv_train import UnsafeCheckpointError

    with pytest.raises(UnsafeCheckpointError, match=r"model_tp0_pp0\.pt holds pickled objects"):
        export_lora(payload, tmp_path / "x")
    assert not marker.exists()  # refused unread, never executed
    # dict sources: unknown keys, half pairs, mixed ranks, missing num_heads / alpha
    pair = {"decoder.layers.0.mlp.linear_fc1.lora_A": torch.zeros(2, 48),
            "decoder.layers.0.mlp.linear_fc1.lora_B": torch.zeros(192, 2)}  # fmt: skip
    with pytest.raises(LoRAExportError, match=r"not mugv-train adapter tensors: decoder\.layers"
                                              r"\.0\.mlp\.gate\.lora_A"):  # fmt: skip
        export_lora({**pair, "decoder.layers.0.mlp.gate.lora_A": torch.zeros(1)}, tmp_path / "x",
                    num_heads=2, alpha=1.0)  # fmt: skip
    half = {k: v for k, v in pair.items() if k.endswith("A")}
    with pytest.raises(LoRAExportError, match=r"linear_fc1 has \['lora_A'\] only"):
        export_lora(half, tmp_path / "x", num_heads=2, alpha=1.0)
    mixed = {**pair, "decoder.layers.0.mlp.linear_fc2.lora_A": torch.zeros(4, 192),
             "decoder.layers.0.mlp.linear_fc2.lora_B": torch.zeros(48, 4)}  # fmt: skip
    with pytest.raises(LoRAExportError, match=r"ranks \[2, 4\] mixed"):
        export_lora(mixed, tmp_path / "x", num_heads=2, alpha=1.0)
    with pytest.raises(ValueError, match=r"alpha must be LoRAConfig\.alpha .* got None"):
        export_lora(pair, tmp_path / "x", num_heads=2)
    with pytest.raises(ValueError, match=r"alpha must be .* got nan"):
        export_lora(pair, tmp_path / "x", num_heads=2, alpha=float("nan"))
    with pytest.raises(ValueError, match=r"num_heads must be the DiT's head count .* got None"):
        export_lora(pair, tmp_path / "x", alpha=1.0)
    with pytest.raises(TypeError, match=r"source must be a checkpoint folder, .* got int"):
        export_lora(3, tmp_path / "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"out .*file exists and is not a folder"):
        export_lora(step, tmp_path / "file")
    assert not (tmp_path / "x").exists()  # no error wrote anything


def test_export_is_atomic_and_honours_the_umask(lora_run, tmp_path, monkeypatch):
    import safetensors.torch

    from mugv_train import export_lora

    cfg, _ = lora_run
    old = os.umask(0o022)
    try:
        path = export_lora(cfg.output_dir, tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    good = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_lora(cfg.output_dir, tmp_path)
    assert path.read_bytes() == good  # the earlier export is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors"]  # no temp file


def test_export_command(lora_run, tmp_path, capsys):
    from mugv_train.cli import main

    cfg, _ = lora_run
    rc = main(["export", cfg.output_dir, "--lora", "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.strip() == f"wrote LoRA adapters to {tmp_path / 'o' / 'lora.safetensors'}"
    assert load_file(str(tmp_path / "o" / "lora.safetensors"))
    rc = main(["export", str(tmp_path / "none"), "--lora", "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("mugv-train: error: checkpoint ") and err.count("\n") == 1
    assert "none does not exist" in err
