"""Bad layouts and backends fail before any work, naming the value and the fix; the package
holds no engine code of its own (issue 13's faults and grep checks)."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_dit_config, tiny_shards, tiny_train_config

SRC = Path(__file__).resolve().parents[1] / "src" / "mugv_train"


@pytest.mark.parametrize(
    ("layout", "model", "micro", "world", "needle"),
    [
        (dict(tensor_parallel=4), dict(num_heads=2), 1, 4, "model.num_heads=2 is not divisible by parallel.tensor_parallel=4"),
        (dict(pipeline_parallel=2, virtual_pipeline=2), dict(depth=6), 2, 2,
         "model.depth=6 is not divisible by pipeline_parallel x virtual_pipeline = 2 x 2 = 4"),
        (dict(pipeline_parallel=4), dict(depth=6), 1, 4, "model.depth=6 is not divisible"),
        (dict(pipeline_parallel=2, virtual_pipeline=2), dict(depth=4), 3, 2,
         "data.microbatches 3 is not a multiple of pipeline_parallel 2"),
        (dict(tensor_parallel=2, context_parallel=2), dict(), 1, 6,
         "6 processes are not divisible by tensor_parallel x context_parallel"),
    ],
)  # fmt: skip
def test_layout_that_does_not_divide_names_value_and_fix(layout, model, micro, world, needle):
    from mugv_train.config import ParallelConfig
    from mugv_train.parallel._checks import ParallelLayoutError, check_layout

    with pytest.raises(ParallelLayoutError, match=re.escape(needle)) as info:
        check_layout(
            tiny_dit_config(**model),
            ParallelConfig(**layout),
            world_size=world,
            microbatches=micro,
        )
    assert re.search(r"use|choose|launch", str(info.value))  # the fix
    # and layouts that divide pass
    check_layout(tiny_dit_config(depth=4), ParallelConfig(tensor_parallel=2), world_size=4)


def _te_config(**kw):
    from mugv_train.config import ParallelConfig

    return ParallelConfig(transformer_impl="transformer_engine", **kw)


def test_transformer_engine_or_fp8_without_te_is_refused(monkeypatch):
    from mugv_train.parallel._checks import ParallelLayoutError, check_backend

    monkeypatch.setitem(sys.modules, "transformer_engine", None)  # import fails
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", None)
    with pytest.raises(
        ParallelLayoutError, match=r"needs Transformer Engine.*transformer_impl='local'"
    ):
        check_backend(_te_config())
    with pytest.raises(ParallelLayoutError, match=r"parallel.fp8=true needs Transformer Engine"):
        check_backend(_te_config(fp8=True))
    check_backend(_te_config().__class__())  # the local spec needs neither


def test_transformer_engine_or_fp8_without_gpu_is_refused(monkeypatch):
    from mugv_train.parallel._checks import ParallelLayoutError, check_backend

    te = types.ModuleType("transformer_engine")  # TE "installed", no GPU visible
    te.pytorch = types.ModuleType("transformer_engine.pytorch")
    monkeypatch.setitem(sys.modules, "transformer_engine", te)
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", te.pytorch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParallelLayoutError, match=r"needs a CUDA GPU.*fp8=false"):
        check_backend(_te_config(fp8=True))
    with pytest.raises(ParallelLayoutError, match="needs a CUDA GPU"):
        check_backend(_te_config())


def test_train_refuses_a_bad_layout_before_any_work(megatron_tp1, tmp_path, monkeypatch):
    import mugv_train.loop as loop
    from mugv_train import ParallelConfig, train
    from mugv_train.parallel._checks import ParallelLayoutError

    monkeypatch.setattr(loop, "init_distributed", lambda *a: pytest.fail("groups were set up"))
    cfg = tiny_train_config(tmp_path / "none", tmp_path / "out", steps=1)
    bad = dataclasses.replace(cfg, parallel=ParallelConfig(pipeline_parallel=2))
    with pytest.raises(ParallelLayoutError, match=r"1 processes are not divisible by .* = 2"):
        train(bad)  # one process, two pipeline stages
    bad = dataclasses.replace(
        cfg,
        model=tiny_dit_config(depth=4),
        parallel=ParallelConfig(pipeline_parallel=2, virtual_pipeline=2),
        data=dataclasses.replace(cfg.data, microbatches=3),
    )
    with pytest.raises(ParallelLayoutError, match="microbatches 3 is not a multiple of"):
        train(bad)
    te = dataclasses.replace(cfg, parallel=ParallelConfig(transformer_impl="transformer_engine"))
    if not torch.cuda.is_available():
        with pytest.raises(ParallelLayoutError, match="transformer_engine"):
            train(te)
    assert not (tmp_path / "out").exists()  # nothing written


def test_resume_from_a_checkpoint_of_another_layout_fails_before_building(
    megatron_tp1, tmp_path, monkeypatch
):
    """A checkpoint written with TP = 2 (its meta says so) is refused by a TP = 1 run with
    the value and the setting to change, before the model is built."""
    import mugv_train.loop as loop
    from mugv_train import train
    from mugv_train.checkpointing import CheckpointError

    shards = tiny_shards(tmp_path / "shards")
    cfg = tiny_train_config(shards, tmp_path / "out", steps=2)
    train(cfg)
    meta_path = tmp_path / "out" / "checkpoints" / "step_00000002" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["tensor_parallel"] = 2
    meta_path.write_text(json.dumps(meta))
    monkeypatch.setattr(loop, "_build_chunks", lambda *a: pytest.fail("the model was built"))
    with pytest.raises(
        CheckpointError, match=r"tensor_parallel=2.*set parallel.tensor_parallel to 2"
    ):
        train(dataclasses.replace(cfg, train_steps=4))


# -- the package calls Megatron-Core's engine, it carries none of its own ----------------
def _source() -> dict[str, str]:
    return {str(p.relative_to(SRC)): p.read_text() for p in SRC.rglob("*.py")}


def test_engine_calls_megatrons_schedule_ddp_finalize_and_optimizer():
    engine = (SRC / "_engine.py").read_text()
    for name in (
        "get_forward_backward_func",
        "finalize_model_grads",
        "DistributedDataParallel",
        "get_megatron_optimizer",
        "Float16Module",
        "init_num_microbatches_calculator",
    ):
        assert re.search(rf"\b{name}\b", engine), name
    assert "get_forward_backward_func()(" in engine  # called, not just imported
    assert "finalize_model_grads_func = finalize_model_grads" in engine
    layers = (SRC / "parallel" / "_layers.py").read_text()
    assert "get_fp8_context" in layers  # FP8 through Megatron's context


def test_package_defines_no_schedule_collectives_or_gradient_sums_of_its_own():
    """No point-to-point schedule (send/recv of activations), no hand-written SP / CP
    collectives and no gradient reduction: the only collectives are the data broadcast,
    export's streamed gather, logging reductions and the CP reference path's Megatron
    all-gather."""
    allowed = {  # file -> collectives it may call (none of them on activations or grads)
        "parallel/_model.py": {"gather", "send_object_list", "recv_object_list"},
        "data_loading.py": {"broadcast_object_list"},
        "loop.py": {"all_reduce", "broadcast"},  # NaN flag, logged loss, last-stage loss
        "checkpointing.py": {"all_reduce", "barrier", "broadcast_object_list", "all_gather_object"},
        "parallel/_state.py": set(),
        "_engine.py": set(),
    }
    pattern = re.compile(
        r"\bdist(?:ributed)?\.(all_reduce|reduce_scatter\w*|all_gather\w*|all_to_all\w*|"
        r"isend|irecv|send|recv|batch_isend_irecv|P2POp|broadcast\w*|gather|"
        r"send_object_list|recv_object_list|barrier|reduce)\b"
    )
    for name, text in _source().items():
        used = set(pattern.findall(text))
        assert used <= allowed.get(name, set()), f"{name} calls {sorted(used)}"
        assert not re.search(
            r"def \w*(send_|recv_|p2p|gpipe|1f1b|pipelining|reduce_grad|all_reduce)\w*\(", text
        ), name
        assert "register_hook" not in text and ".grad +=" not in text, name
    loop = (SRC / "loop.py").read_text()
    # the grad reduction is Megatron's: the loop never touches .grad or main_grad
    assert not re.search(r"\.(main_)?grad\b", loop)
