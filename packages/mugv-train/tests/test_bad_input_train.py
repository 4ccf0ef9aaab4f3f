"""Bad input table of mugv-train: every case asserts the error class and its message.

API cases raise a TypeError / ValueError (or subclass) naming the field and the value;
command-line cases print exactly one ``mugv-train: error: ...`` line and exit 2 (bad
input, before the model is built) or 1 (a failure during the work, such as a full disk
while checkpointing); Ctrl-C exits 130 and SIGTERM 143.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_dit_config, tiny_shards

from mugv_train.cli import RECIPE_NAMES, main, run_command

#: A tiny debug run: 48-wide DiT, 16-d captions, checkpoints every 2 steps.
TINY = ["model.hidden_size=48", "model.num_heads=2", "model.depth=2", "model.in_channels=4",
        "model.text_dim=16", "data.null_text_tokens=8", "log.tensorboard=false",
        "log.progress=false", "checkpoint.save_every=2"]  # fmt: skip


class Payload:
    """Unpickling this creates ``marker``: the proof that a loader ran code from a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Shard roots (good, empty manifest, a listed shard missing) and other planted files."""
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("inputs")
    shards = tiny_shards(root / "shards")
    empty = root / "empty_manifest"
    shutil.copytree(shards, empty)
    table = pq.read_table(empty / "manifest.parquet")
    pq.write_table(table.slice(0, 0), empty / "manifest.parquet")
    holed = root / "holed"
    shutil.copytree(shards, holed)
    for shard in holed.glob("*.safetensors"):
        shard.unlink()
    (root / "notes.txt").write_text("hello, not a checkpoint\n")
    (root / "empty_dir").mkdir()
    return root


def _cli(argv, capsys):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mugv-train: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- configs (API)
def _config(**changes):
    from mugv_train import TrainConfig

    return TrainConfig(**{"model": tiny_dit_config(), "output_dir": "out", "train_steps": 1,
                          **changes})  # fmt: skip


def _sections():
    from mugv_train import (
        CheckpointConfig,
        DataConfig,
        EMAConfig,
        LogConfig,
        LoRAConfig,
        ObjectiveConfig,
        OptimConfig,
        ParallelConfig,
    )  # fmt: skip

    return dict(checkpoint=CheckpointConfig, data=DataConfig, ema=EMAConfig, log=LogConfig,
                lora=LoRAConfig, objective=ObjectiveConfig, optim=OptimConfig,
                parallel=ParallelConfig)  # fmt: skip


API_CASES = [
    ("train", {"train_steps": "3"}, TypeError, r"TrainConfig\.train_steps must be an int, got '3'"),
    ("train", {"seed": 1.0}, TypeError, r"TrainConfig\.seed must be an int, got 1\.0 \(float\)"),
    ("train", {"output_dir": 3}, TypeError, r"TrainConfig\.output_dir must be a string, got 3"),
    ("train", {"output_dir": " "}, ValueError, r"TrainConfig\.output_dir is required"),
    ("train", {"lora": 3}, TypeError, r"TrainConfig\.lora must be a LoRAConfig or None, got 3"),
    ("train", {"init_from": None}, TypeError, r"TrainConfig\.init_from must be a string"),
    ("train", {"seed": -1}, ValueError, r"TrainConfig\.seed must be in \[0, 2\*\*63\), got -1"),
    ("train", {"max_nonfinite_steps": 0}, ValueError, r"max_nonfinite_steps must be >= 1"),
    ("train", {"name": ""}, ValueError, r"TrainConfig\.name must be a non-empty string"),
    ("train", {"model": {"depth": 2}}, TypeError, r"TrainConfig\.model must be a DiTConfig"),
    ("lora", {"rank": 0}, ValueError, r"LoRAConfig\.rank must be >= 1 \(the adapter rank r"),
    ("lora", {"rank": 2.0}, TypeError, r"LoRAConfig\.rank must be an int, got 2\.0 \(float\)"),
    ("lora", {"alpha": math.nan}, ValueError, r"LoRAConfig\.alpha must hold finite numbers"),
    ("lora", {"alpha": 0}, ValueError, r"LoRAConfig\.alpha must be > 0\.0 \(the scale is alpha"),
    ("lora", {"targets": ()}, ValueError, r"LoRAConfig\.targets is empty; choose from"),
    ("lora", {"targets": ("gate",)}, ValueError, r"unknown linears \['gate'\]"),
    ("lora", {"targets": "linear_qkv"}, TypeError, r"targets must be a tuple of strings, got 'linear_qkv'"),
    ("optim", {"lr": "1e-3"}, TypeError, r"OptimConfig\.lr must be a number, got '1e-3' \(str\)"),
    ("optim", {"lr": math.inf}, ValueError, r"OptimConfig\.lr must hold finite numbers, got inf"),
    ("optim", {"lr": 0.0}, ValueError, r"OptimConfig\.lr must be > 0\.0"),
    ("optim", {"min_lr": 1.0}, ValueError, r"min_lr 1\.0 is above lr 0\.0001"),
    ("optim", {"betas": (0.9, 1.0)}, ValueError, r"betas must be in \[0, 1\) .* betas\[1\]=1\.0"),
    ("optim", {"betas": (0.9,)}, TypeError, r"betas must be a tuple of 2 values"),
    ("optim", {"eps": 0}, ValueError, r"OptimConfig\.eps must be > 0\.0"),
    ("optim", {"clip_grad": -1}, ValueError, r"clip_grad must be >= 0\.0 \(0 = no clipping\)"),
    ("data", {"shards": 3}, TypeError, r"DataConfig\.shards must be a string, got 3"),
    ("data", {"batch_size": 0}, ValueError, r"DataConfig\.batch_size must be >= 1, got 0"),
    ("data", {"prefetch": -1}, ValueError, r"DataConfig\.prefetch must be >= 0"),
    ("data", {"image_share": (0.5, 2.0)}, ValueError, r"image_share values must be in \[0, 1\]"),
    ("data", {"image_share": (math.nan, 0.0)}, ValueError, r"image_share must hold finite"),
    ("parallel", {"sequence_parallel": "yes"}, TypeError, r"sequence_parallel must be a bool"),
    ("parallel", {"recompute": "some"}, ValueError,
     r"ParallelConfig\.recompute must be one of 'none', 'selective', 'full', got 'some'"),
    ("parallel", {"tensor_parallel": 0}, ValueError, r"tensor_parallel must be >= 1"),
    ("parallel", {"fp8": True}, ValueError, r"fp8 needs transformer_impl='transformer_engine'"),
    ("objective", {"kind": "ppo"}, ValueError, r"kind must be one of 'flow', 'dpo', 'kto'"),
    ("objective", {"task_weights": {"t2v": "1"}}, TypeError, r"task_weights must be a dict"),
    ("objective", {"task_weights": {"t2x": 1.0}}, ValueError, r"unknown tasks \['t2x'\]"),
    ("objective", {"caption_dropout": 1.5}, ValueError, r"caption_dropout must be in \[0\.0, 1"),
    ("objective", {"kind": "dpo", "beta": 0.0}, ValueError, r"beta must be > 0\.0 \(the dpo"),
    ("ema", {"decay": 1.0}, ValueError, r"EMAConfig\.decay must be in \(0, 1\)"),
    ("ema", {"interval": 0}, ValueError, r"EMAConfig\.interval must be >= 1"),
    ("checkpoint", {"format": "zip"}, ValueError, r"format must be one of 'auto', 'torch_dist'"),
    ("checkpoint", {"save_every": 0}, ValueError, r"save_every must be >= 1"),
    ("checkpoint", {"resume": 1}, TypeError, r"CheckpointConfig\.resume must be a bool"),
    ("log", {"log_every": 0}, ValueError, r"LogConfig\.log_every must be >= 1"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "fields", "error", "match"),
    API_CASES,
    ids=[f"{w}-{'-'.join(f)}" for w, f, *_ in API_CASES],
)
def test_config_rejects(what, fields, error, match):
    with pytest.raises(error, match=match):
        _config(**fields) if what == "train" else _sections()[what](**fields)


def test_config_converts_harmless_kinds():
    from mugv_train import DataConfig, OptimConfig

    cfg = _config(output_dir=Path("runs/a"), data=DataConfig(shards=Path("s"), image_share=[0, 1]))
    assert cfg.output_dir == "runs/a" and cfg.data.shards == "s"
    assert cfg.data.image_share == (0.0, 1.0)
    assert OptimConfig(lr=1, min_lr=0).lr == 1.0 and isinstance(OptimConfig(lr=1).lr, float)


def test_apply_overrides_typed_errors():
    from mugv_train import apply_overrides

    cfg = _config()
    with pytest.raises(TypeError, match=r"overrides must be a list of 'key=value' strings"):
        apply_overrides(cfg, "optim.lr=1")
    with pytest.raises(TypeError, match=r"an override must be a 'key=value' string, got 3"):
        apply_overrides(cfg, [3])
    with pytest.raises(TypeError, match=r"config must be a TrainConfig, got dict"):
        apply_overrides({}, [])
    # values are parsed by the field's type; optional sections switch on and off
    out = apply_overrides(cfg, ["lora.rank=8", "optim.betas=0.8,0.9", "ema.decay=0.5",
                                "log.wandb=yes", "parallel.recompute=full"])  # fmt: skip
    assert out.lora.rank == 8 and out.optim.betas == (0.8, 0.9) and out.ema.decay == 0.5
    assert out.log.wandb is True and out.parallel.recompute == "full"
    assert apply_overrides(out, ["lora=none", "ema=null"]).lora is None
    assert apply_overrides(out, {"train_steps": 7}).train_steps == 7
    # several fields of one section are applied together (no invalid intermediate)
    both = apply_overrides(cfg, ["model.hidden_size=96", "model.num_heads=4"])
    assert (both.model.hidden_size, both.model.num_heads) == (96, 4)


# --------------------------------------------------------------------------- the command
def _cases(root: Path, tmp: Path):
    shards, notes = root / "shards", root / "notes.txt"
    run = ["debug", "--shards", shards, "--out", tmp / "run"]
    quoted = str(notes)
    return [
        ([], r"the following arguments are required: .*--shards, --out"),
        (["stage9", "--shards", shards, "--out", tmp / "run"], r"invalid choice: 'stage9'"),
        (["debug", "--out", tmp / "run"], r"the following arguments are required: --shards"),
        ([*run, "optim.lr=nan"], r"override optim\.lr='nan': OptimConfig\.lr must hold finite"),
        ([*run, "optim.lr=inf"], r"OptimConfig\.lr must hold finite numbers, got inf"),
        ([*run, "optim.lr=-1"], r"OptimConfig\.lr must be > 0\.0 \(the peak learning rate\)"),
        ([*run, "optim.lr=fast"], r"override optim\.lr='fast': expected a number"),
        ([*run, "optim.min_lr=1"], r"OptimConfig\.min_lr 1\.0 is above lr 0\.001"),
        ([*run, "optim.betas=0.9,1"], r"OptimConfig\.betas must be in \[0, 1\)"),
        ([*run, "lora.rank=0"], r"override lora\.rank='0': LoRAConfig\.rank must be >= 1"),
        ([*run, "lora.alpha=0"], r"LoRAConfig\.alpha must be > 0\.0"),
        ([*run, "lora.alpha=nan"], r"LoRAConfig\.alpha must hold finite numbers, got nan"),
        ([*run, "lora.targets=linear_qkv,gate"], r"LoRAConfig\.targets has unknown linears"),
        ([*run, "lora=3"], r"'lora' is a section; set lora\.FIELD=VALUE, or lora=none"),
        ([*run, "model=debug"], r"'model' is a section; set model\.FIELD=VALUE"),
        ([*run, "parallel.recompute=some"], r"recompute must be one of 'none', 'selective'"),
        ([*run, "parallel.transformer_impl=te"], r"transformer_impl must be one of 'local'"),
        ([*run, "parallel.tensor_parallel=3"], r"model\.num_heads=4 is not divisible by "
                                               r"parallel\.tensor_parallel=3"),
        ([*run, "parallel.virtual_pipeline=2"], r"virtual_pipeline=2 needs pipeline_parallel"),
        ([*run, "parallel.fp8=true"], r"fp8 needs transformer_impl='transformer_engine'"),
        ([*run, "checkpoint.format=zip"], r"CheckpointConfig\.format must be one of"),
        ([*run, "checkpoint.save_every=0"], r"CheckpointConfig\.save_every must be >= 1"),
        ([*run, "objective.kind=ppo"], r"ObjectiveConfig\.kind must be one of 'flow'"),
        ([*run, "objective.caption_dropout=1.5"], r"caption_dropout must be in \[0\.0, 1\.0\]"),
        ([*run, 'objective.task_mix={"t2v": 0.5}'], r"TaskMix probabilities must be >= 0 and "
                                                    r"sum to 1"),
        ([*run, "objective.task_mix=t2v"], r"task_mix='t2v': expected a JSON object"),
        ([*run, 'objective.task_weights={"t2x": 1}'], r"task_weights has unknown tasks"),
        ([*run, "model.attention_backend=fast"], r"DiTConfig\.attention_backend must be one"),
        ([*run, "model.depth=two"], r"override model\.depth='two': expected an int"),
        ([*run, "model.num_heads=5"], r"hidden_size 288 is not divisible by num_heads 5"),
        ([*run, "model.colour=red"], r"unknown setting 'model\.colour'; model has \["),
        ([*run, "colour=red"], r"unknown setting 'colour'; top-level settings: \["),
        ([*run, "optim.lr"], r"override 'optim\.lr' is not of the form key=value"),
        ([*run, "a.b.c=1"], r"override key 'a\.b\.c' must be 'field' or 'section\.field'"),
        ([*run, "nosection.x=1"], r"unknown section 'nosection' in override 'nosection\.x'"),
        ([*run, "log.tensorboard=maybe"], r"log\.tensorboard='maybe': expected true or false"),
        ([*run, "train_steps=0"], r"TrainConfig\.train_steps must be >= 1, got 0"),
        ([*run, "train_steps=1.5"], r"override train_steps='1\.5': expected an int"),
        ([*run, "seed=-1"], r"TrainConfig\.seed must be in \[0, 2\*\*63\), got -1"),
        ([*run, "name="], r"TrainConfig\.name must be a non-empty string"),
        ([*run, "data.batch_size=0"], r"DataConfig\.batch_size must be >= 1, got 0"),
        ([*run, "data.image_share=0.5"], r"image_share='0\.5': expected 2 comma-separated"),
        ([*run, "data.image_share=0.5,2"], r"image_share values must be in \[0, 1\]"),
        ([*run, "data.max_tokens=-1"], r"DataConfig\.max_tokens must be >= 0"),
        ([*run, "ema.decay=1"], r"EMAConfig\.decay must be in \(0, 1\)"),
        ([*run, "max_nonfinite_steps=0"], r"max_nonfinite_steps must be >= 1"),
        # data paths
        (["debug", "--shards", tmp / "nowhere", "--out", tmp / "run"],
         r"no manifest\.parquet at .*nowhere: not a shard root"),
        (["debug", "--shards", root / "empty_dir", "--out", tmp / "run"],
         r"no manifest\.parquet at .*empty_dir"),
        (["debug", "--shards", notes, "--out", tmp / "run"], r"no manifest\.parquet at .*notes"),
        (["debug", "--shards", "", "--out", tmp / "run"], r"DataConfig\.shards is empty"),
        (["debug", "--shards", ",,", "--out", tmp / "run"], r"DataConfig\.shards is empty"),
        (["debug", "--shards", root / "empty_manifest", "--out", tmp / "run"],
         r"--shards .*empty_manifest holds no samples \(empty manifest\)"),
        (["debug", "--shards", root / "holed", "--out", tmp / "run"],
         r"1 shard file\(s\) listed in .*holed/manifest\.parquet are missing"),
        # weights to start from
        ([*run, f"init_from={quoted}"], r"init_from .*notes\.txt is not a weights file"),
        ([*run, f"reference_from={quoted}"], r"reference_from .*notes\.txt is not a weights"),
        ([*run, f"init_from={tmp / 'no' / 'where'}"], r"init_from .*where is neither an "
                                                       r"existing folder or file nor a Hub"),
        ([*run, f"init_from={root / 'empty_dir'}"], r"init_from .*empty_dir holds neither "
                                                     r"config\.json"),
        # output folders
        (["debug", "--shards", shards, "--out", notes], r"--out .*notes\.txt exists and is not "
                                                        r"a folder"),
        (["debug", "--shards", shards, "--out", notes / "sub"], r"notes\.txt is a file, not a"),
        # export and post-ema
        (["export", tmp / "run", "--out", tmp / "x"], r"export writes LoRA adapters: pass --lora"),
        (["export", tmp / "nowhere", "--lora", "--out", tmp / "x"], r"checkpoint .*nowhere does "
                                                                    r"not exist"),
        (["export", root / "empty_dir", "--lora", "--out", tmp / "x"],
         r"empty_dir is not a mugv-train checkpoint: no meta\.json"),
        (["export", root / "empty_dir", "--lora", "--out", notes], r"--out .*notes\.txt exists "
                                                                  r"and is not a folder"),
        (["export", root / "empty_dir", "--out"], r"argument --out: expected one argument"),
        (["post-ema", tmp / "e1", "--gamma", "0", "--out", tmp / "x"], r"--gamma must be in "
                                                                       r"\(0, 1\], got 0\.0"),
        (["post-ema", tmp / "e1", "--gamma", "nan", "--out", tmp / "x"], r"--gamma must be in"),
        (["post-ema", tmp / "e1", "--gamma", "0.5", "--out", tmp / "x"],
         r"export folder .*e1 does not exist"),
        (["post-ema", tmp / "e1", "--gamma", "x", "--out", tmp / "x"], r"invalid float value"),
    ]  # fmt: skip


def test_command_line_table(files, tmp_path, capsys):
    cases = _cases(files, tmp_path)
    assert len(cases) >= 60
    for argv, pattern in cases:
        rc, err = _cli(argv, capsys)
        line = _one_error_line(err)
        assert rc == 2, (argv, err)
        assert re.search(pattern, line), (argv, line)
    assert not (tmp_path / "run").exists() and not (tmp_path / "x").exists()  # no work done


def test_read_only_output_folder(files, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: report the folder as not writable
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == ro else real(p, m))
    try:
        rc, err = _cli(["debug", "--shards", files / "shards", "--out", ro / "run"], capsys)
    finally:
        ro.chmod(0o755)
    line = _one_error_line(err)
    assert rc == 2 and re.search(r"--out .*ro/run: .*ro is not writable; choose a writable", line)
    assert not (ro / "run").exists()


def test_help_is_quick_and_quiet():
    from mugv_train.recipes import RECIPES

    assert tuple(sorted(RECIPES)) == RECIPE_NAMES
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    for argv in ([], ["export"], ["post-ema"]):
        proc = subprocess.run(
            [sys.executable, "-m", "mugv_train.cli", *argv, "--help"],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert proc.stdout.startswith(f"usage: mugv-train{' ' if argv else ''}{' '.join(argv)}")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, mugv_train.cli; print(sorted(m for m in "
         "('torch', 'megatron', 'diffusers') if m in sys.modules))"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.stdout.strip() == "[]", proc.stdout  # the command imports no heavy module
    # the package's names import on first use; every one of __all__ resolves
    import mugv_train

    assert set(mugv_train._EXPORTS) | {"__version__"} == set(mugv_train.__all__)
    for name in mugv_train.__all__:
        assert getattr(mugv_train, name) is not None, name
    with pytest.raises(AttributeError, match=r"module 'mugv_train' has no attribute 'nope'"):
        mugv_train.nope  # noqa: B018


# --------------------------------------------------------------------------- runs
@pytest.mark.timeout(300)
def test_full_disk_and_unreadable_checkpoints(files, tmp_path, capsys, monkeypatch):
    """A full disk at the step-4 checkpoint: exit 1, one line, no .partial folder, the
    step-2 checkpoint intact and resumable. Then a text file or a pickle payload as a
    checkpoint file: exit 2 naming the file, the payload never runs."""
    import mugv_train.checkpointing as ckpt

    torch.set_num_threads(1)
    run = tmp_path / "run"
    argv = ["debug", "--shards", files / "shards", "--out", run, *TINY, "train_steps=4"]
    real = ckpt.atomic_torch_save
    calls = {"n": 0}

    def full_disk(obj, path):
        if Path(path).parent.name.startswith("step_00000004"):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(obj, path)

    monkeypatch.setattr(ckpt, "atomic_torch_save", full_disk)
    rc, err = _cli(argv, capsys)
    line = _one_error_line(err)
    assert rc == 1 and calls["n"] == 1, err
    assert re.search(r"CheckpointError: saving the step-4 checkpoint failed .*No space left on "
                     r"device.*the last complete checkpoint in .* is intact", line), line  # fmt: skip
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest", "step_00000002"], names  # no .partial left behind
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    good = run / "checkpoints" / "step_00000002"
    assert torch.load(good / "model_tp0_pp0.pt", weights_only=True)
    monkeypatch.setattr(ckpt, "atomic_torch_save", real)

    # a text file in place of the model file
    model_file = good / "model_tp0_pp0.pt"
    saved = model_file.read_bytes()
    model_file.write_text("hello, not a checkpoint\n")
    rc, err = _cli(argv, capsys)
    line = _one_error_line(err)
    assert rc == 2 and re.search(
        r"step_00000002/model_tp0_pp0\.pt is not a torch checkpoint file .* delete .*step_00000002",
        line,
    ), line
    # a pickle payload in the trainer state
    marker = tmp_path / "payload-ran"
    pickle.loads(pickle.dumps(Payload(str(marker))))
    assert marker.exists()
    marker.unlink()
    model_file.write_bytes(saved)
    torch.save({"step": 2, "payload": Payload(str(marker))}, good / "trainer_dp0.pt")
    rc, err = _cli(argv, capsys)
    line = _one_error_line(err)
    assert rc == 2 and re.search(r"trainer_dp0\.pt holds pickled objects .* refused unread", line)
    assert not marker.exists()
    meta = json.loads((good / "meta.json").read_text())
    assert meta["step"] == 2


@pytest.mark.timeout(300)
def test_sigterm_during_a_checkpoint_leaves_the_last_one_and_no_partial(
    files, tmp_path, capsys, monkeypatch
):
    import mugv_train.checkpointing as ckpt

    torch.set_num_threads(1)
    run = tmp_path / "run"
    real = ckpt.atomic_torch_save

    def killed(obj, path):
        if Path(path).parent.name.startswith("step_00000004"):
            real(obj, path)  # one file of the step-4 checkpoint is written, then SIGTERM
            os.kill(os.getpid(), signal.SIGTERM)
        return real(obj, path)

    monkeypatch.setattr(ckpt, "atomic_torch_save", killed)
    rc, err = _cli(["debug", "--shards", files / "shards", "--out", run, *TINY, "train_steps=4"],
                   capsys)  # fmt: skip
    assert rc == 143, err
    assert err.strip().splitlines()[-1].startswith("mugv-train: terminated (SIGTERM)")
    left = sorted(str(p.relative_to(run)) for p in (run / "checkpoints").rglob("*"))
    assert not [p for p in left if ".partial" in p or p.endswith(".tmp")], left
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert torch.load(run / "checkpoints" / "step_00000002" / "model_tp0_pp0.pt",
                      weights_only=True)  # fmt: skip


# --------------------------------------------------------------------------- exit codes
def test_exit_codes_debug_and_signals(capsys, monkeypatch):
    from mugv_train import NonFiniteLossError

    def fail():
        raise NonFiniteLossError("5 consecutive steps had a NaN/inf loss")

    assert run_command(fail) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == (
        "mugv-train: error: NonFiniteLossError: 5 consecutive steps had a NaN/inf loss (run "
        "with --debug or MUGV_DEBUG=1 for the traceback)"
    )

    def disk():
        raise OSError(errno.EIO, "Input/output error")

    assert run_command(disk) == 1
    assert "OSError: [Errno 5] Input/output error" in _one_error_line(capsys.readouterr().err)

    def wrapped_disk():  # a torch_dist save: Megatron wraps the OSError in its own exception
        from mugv_train import CheckpointError

        try:
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as exc:
                raise RuntimeError("CheckpointingException: write failed") from exc
        except RuntimeError as exc:
            raise CheckpointError("saving the step-8 checkpoint failed") from exc

    assert run_command(wrapped_disk) == 1
    assert "CheckpointError: saving the step-8" in _one_error_line(capsys.readouterr().err)

    def unreadable():
        from mugv_train import CheckpointError

        raise CheckpointError("model_tp0_pp0.pt cannot be read as a checkpoint file")

    assert run_command(unreadable) == 2
    assert _one_error_line(capsys.readouterr().err).endswith("as a checkpoint file")
    monkeypatch.setenv("MUGV_DEBUG", "1")
    assert run_command(fail) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "NonFiniteLossError: 5 consecutive" in err
    monkeypatch.delenv("MUGV_DEBUG")
    rc = main(["--debug", "debug", "--shards", "x", "--out", "y", "optim.lr=nan"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and err.rstrip().endswith("got nan")

    def interrupted():
        raise KeyboardInterrupt

    assert run_command(interrupted) == 130
    assert capsys.readouterr().err == (
        "mugv-train: interrupted; completed checkpoints are intact (re-run to resume)\n"
    )
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []

    def terminated():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            cleaned.append(True)  # `finally` blocks (atomic writers' clean-up) run
        return 0

    assert run_command(terminated) == 143 and cleaned == [True]
    assert capsys.readouterr().err.startswith("mugv-train: terminated (SIGTERM)")
    assert signal.getsignal(signal.SIGTERM) is before
