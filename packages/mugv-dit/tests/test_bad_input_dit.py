"""Bad input table of mugv-dit: every case asserts the error class and its message.

API cases raise a TypeError / ValueError / FileNotFoundError (or subclass) naming the
field or argument and the value; command-line cases print exactly one
``mugv-dit: error: ...`` line and exit 2 (bad input) or 1 (a failure during the work).
Checkpoints planted with a pickle payload (an object whose ``__reduce__`` creates a marker
file) never run it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal

import pytest
import torch
from conftest import tiny_config, tiny_model

from mugv_dit import DiTConfig, MUGDiT, TextEncoder, convert_official_checkpoint
from mugv_dit.cli import main, run_command


class Payload:
    """Unpickling this creates ``marker``: the proof that a loader ran code from a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "payload-ran"
    pickle.loads(pickle.dumps(Payload(str(path))))  # the payload works when unpickled ...
    assert path.exists()
    path.unlink()  # ... so a loader that unpickles it leaves this file behind
    return path


def _plant(path, marker, state=None) -> None:
    torch.save({**(state or {}), "payload": Payload(str(marker))}, path)


def _cli(argv, capsys):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mugv-dit: error: "), err
    return lines[0]


# --------------------------------------------------------------------------- DiTConfig
CONFIG_CASES = [
    ({"depth": "2"}, TypeError, r"DiTConfig\.depth must be int, got '2' \(str\)"),
    ({"depth": 2.0}, TypeError, r"DiTConfig\.depth must be int, got 2\.0 \(float\)"),
    ({"depth": True}, TypeError, r"DiTConfig\.depth must be int, got True \(bool\)"),
    ({"depth": 0}, ValueError, r"DiTConfig\.depth must be a positive int, got 0"),
    ({"hidden_size": 25}, ValueError, r"hidden_size 25 is not divisible by num_heads 2"),
    ({"hidden_size": 16}, ValueError, r"head dim 8 .* must be a multiple of 6"),
    ({"mlp_ratio": float("nan")}, ValueError, r"DiTConfig\.mlp_ratio must be a finite number"),
    ({"mlp_ratio": -1.0}, ValueError, r"DiTConfig\.mlp_ratio must be > 0, got -1\.0"),
    ({"rope_theta": float("inf")}, ValueError, r"rope_theta must be a finite number, got inf"),
    ({"norm_eps": 0.0}, ValueError, r"DiTConfig\.norm_eps must be > 0, got 0\.0"),
    ({"default_fps": 0}, ValueError, r"DiTConfig\.default_fps must be > 0, got 0"),
    ({"patch_size": (1, 2.5, 2)}, TypeError, r"patch_size must be a list of 3 values"),
    ({"patch_size": (1, 2)}, ValueError, r"patch_size must be a list of 3 values"),
    ({"patch_size": (1, 0, 2)}, ValueError, r"patch_size must be three positive ints"),
    ({"learn_sigma": 1}, TypeError, r"DiTConfig\.learn_sigma must be bool, got 1 \(int\)"),
    ({"attention_backend": "flash2"}, ValueError, r"attention_backend must be one of 'sdpa'"),
    ({"kernel_backend": "cuda"}, ValueError, r"kernel_backend must be one of 'auto', 'torch'"),
    ({"frequency_embedding_size": 255}, ValueError, r"frequency_embedding_size must be even"),
    ({"initializer_range": -0.1}, ValueError, r"initializer_range must be >= 0, got -0\.1"),
    ({"extra": ["a"]}, TypeError, r"DiTConfig\.extra must be dict, got \['a'\] \(list\)"),
]


@pytest.mark.parametrize(("overrides", "error", "match"), CONFIG_CASES)
def test_dit_config_rejects(overrides, error, match):
    with pytest.raises(error, match=match):
        tiny_config(**overrides)


def test_dit_config_from_dict():
    good = tiny_config().to_dict()
    assert DiTConfig.from_dict(json.loads(json.dumps(good))) == tiny_config()  # lists -> tuple
    with pytest.raises(ValueError, match=r"config has unknown fields \['colour'\]"):
        DiTConfig.from_dict({**good, "colour": 1})
    with pytest.raises(ValueError, match=r"lacks the required DiTConfig fields \['num_heads'\]"):
        DiTConfig.from_dict({k: v for k, v in good.items() if k != "num_heads"})
    with pytest.raises(TypeError, match=r"a DiTConfig must be a JSON object, got list"):
        DiTConfig.from_dict([good])
    with pytest.raises(ValueError, match=r"unknown DiT preset '3b'"):
        DiTConfig.preset("3b")


# --------------------------------------------------------------------------- TextEncoder
PROMPT_CASES = [
    ("a \ud800 fox", ValueError, r"prompts\[0\] holds a lone surrogate U\+D800 at character 2"),
    (["ok", "\udfff"], ValueError, r"prompts\[1\] holds a lone surrogate U\+DFFF"),
    ([], ValueError, r"prompts must be a string or a non-empty list of strings, got \[\]"),
    (["ok", 3], TypeError, r"prompts\[1\] must be a string, got 3 \(int\)"),
    (None, TypeError, r"prompts must be a string or a list of strings, got NoneType"),
    (b"bytes", TypeError, r"prompts must be a string or a list of strings, got bytes"),
]


@pytest.mark.parametrize(("prompts", "error", "match"), PROMPT_CASES)
def test_text_encoder_rejects_prompts_before_tokenising(prompts, error, match):
    encoder = object.__new__(TextEncoder)  # no weights: the check runs before any tokeniser
    with pytest.raises(error, match=match):
        encoder.tokenize(prompts)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dtype": "bf16"}, TypeError, r"dtype must be a torch\.dtype .*got 'bf16' \(str\)"),
        ({"max_length": 0}, ValueError, r"max_length must be a positive int, got 0"),
        ({"max_length": 8.5}, ValueError, r"max_length must be a positive int, got 8\.5"),
        ({"device": "gpu"}, ValueError, r"device 'gpu' is not a torch device"),
        ({"name_or_path": 3}, TypeError, r"name_or_path must be a Hub id or a folder path"),
    ],
)
def test_text_encoder_rejects_arguments_before_loading(kwargs, error, match):
    args = {"name_or_path": "org/never-downloaded", "local_files_only": True, **kwargs}
    with pytest.raises(error, match=match):
        TextEncoder(**args)


# --------------------------------------------------------------------------- untrusted files
def test_official_dit_pt_with_a_payload_never_runs_it(tmp_path, marker):
    _plant(tmp_path / "dit.pt", marker, tiny_model().state_dict())
    with pytest.raises(
        ValueError,
        match=r"refusing to load .*dit\.pt: it holds pickled Python objects \(_io\.open\)",
    ):
        MUGDiT.from_official(tmp_path / "dit.pt")
    with pytest.raises(
        ValueError,
        match=r"refusing to load .*dit\.pt: it holds pickled Python objects \(_io\.open\)",
    ):
        convert_official_checkpoint(tmp_path / "dit.pt", tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_pretrained_folder_with_a_payload_never_runs_it(tmp_path, marker):
    saved = tmp_path / "saved"
    tiny_model().save_pretrained(saved)
    names = sorted(p.name for p in saved.iterdir())
    assert any(n.endswith(".safetensors") for n in names) and "config.json" in names
    for name in names:  # every file the loader reads, one at a time
        folder = tmp_path / name
        folder.mkdir()
        for other in names:
            (folder / other).write_bytes((saved / other).read_bytes())
        (folder / name).write_bytes(pickle.dumps({"payload": Payload(str(marker))}))
        with pytest.raises(Exception) as err:  # the class depends on the file
            MUGDiT.from_pretrained(folder)
        assert not marker.exists(), name
        # refused as a format error naming the file, never unpickled
        assert isinstance(err.value, ValueError), (name, err.value)
        assert re.search(
            rf"{re.escape(name)}.* not a valid (config\.json|safetensors)", str(err.value)
        )


def test_damaged_folders_name_the_file(tmp_path):
    saved = tmp_path / "saved"
    tiny_model().save_pretrained(saved)
    (weights,) = saved.glob("*.safetensors")
    data = weights.read_bytes()
    for size in (999, len(data) - 16):  # inside the header, inside the tensor data
        weights.write_bytes(data[:size])
        with pytest.raises(ValueError, match=rf"{weights.name}: not a valid safetensors file"):
            MUGDiT.from_pretrained(saved)
    weights.write_bytes(data)
    cfg = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**cfg, "depth": "2"}))
    with pytest.raises(TypeError, match=r"saved/config\.json: DiTConfig\.depth must be int"):
        MUGDiT.from_pretrained(saved)
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match=r"cannot read .*cut\.pt: not a complete torch checkpoint"):
        MUGDiT.from_official(tmp_path / "cut.pt")


def test_strict_load_names_missing_and_unexpected_tensors(tmp_path):
    state = tiny_model().state_dict()
    state.pop("final_layer.linear.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "dit.pt")
    with pytest.raises(ValueError) as err:
        MUGDiT.from_official(tmp_path / "dit.pt", config=tiny_config())
    assert "final_layer.linear.bias" in str(err.value) and "extra.weight" in str(err.value)


# --------------------------------------------------------------------------- the command
def test_command_line_table(tmp_path, capsys, marker):
    torch.save(tiny_model().state_dict(), tmp_path / "dit.pt")
    good = (tmp_path / "dit.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "notes.txt").write_text("hello")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    _plant(tmp_path / "evil.pt", marker, tiny_model().state_dict())
    cases = [
        ([], r"the following arguments are required: command"),
        (["convert"], r"the following arguments are required: src, out_dir"),
        (["convert", tmp_path / "dit.pt", tmp_path / "o", "--dtype", "int8"],
         r"argument --dtype: invalid choice: 'int8'"),
        (["convert", tmp_path / "none.pt", tmp_path / "o"], r"official checkpoint .*none\.pt"),
        (["convert", tmp_path, tmp_path / "o"], r"is not a regular file; give the official"),
        (["convert", tmp_path / "dit.pt", tmp_path / "notes.txt"],
         r"output folder .*notes\.txt exists and is not a folder"),
        (["convert", tmp_path / "cut.pt", tmp_path / "o"],
         r"cannot read .*cut\.pt: not a (\(complete\) |complete )torch checkpoint"),
        (["convert", tmp_path / "notes.txt", tmp_path / "o"],
         r"cannot read .*notes\.txt: not a (complete )?torch checkpoint"),
        (["convert", tmp_path / "list.pt", tmp_path / "o"], r"list\.pt is not a plain state"),
        (["convert", tmp_path / "evil.pt", tmp_path / "o"],
         r"refusing to load .*evil\.pt: it holds pickled Python objects \(_io\.open\)"),
        (["params", "3b"], r"unknown presets \['3b'\]; choose from \['debug'"),
    ]  # fmt: skip
    for argv, pattern in cases:
        rc, err = _cli(argv, capsys)
        line = _one_error_line(err)
        assert rc == 2, (argv, err)
        assert re.search(pattern, line), (argv, line)
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_exit_codes_debug_and_signals(tmp_path, capsys, monkeypatch):
    def fail():
        raise RuntimeError("kernel crashed")

    assert run_command(fail) == 1
    assert _one_error_line(capsys.readouterr().err) == (
        "mugv-dit: error: RuntimeError: kernel crashed (run with --debug or MUGV_DEBUG=1 for "
        "the traceback)"
    )
    monkeypatch.setenv("MUGV_DEBUG", "1")
    assert run_command(fail) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("MUGV_DEBUG")
    rc, err = _cli(["--debug", "params", "3b"], capsys)
    assert rc == 2 and "Traceback" in err and err.rstrip().endswith("'18b']")

    def interrupted():
        raise KeyboardInterrupt

    assert run_command(interrupted) == 130
    assert capsys.readouterr().err == "mugv-dit: interrupted; finished outputs are complete\n"

    def terminated():
        os.kill(os.getpid(), signal.SIGTERM)
        return 0

    before = signal.getsignal(signal.SIGTERM)
    assert run_command(terminated) == 143
    assert capsys.readouterr().err.startswith("mugv-dit: terminated (SIGTERM)")
    assert signal.getsignal(signal.SIGTERM) is before
