"""Bad input table of mugv-infer: every case asserts the error class and its message.

`MUGVPipeline` checks its arguments before any work: the tiny pipeline here has a text
encoder that fails the test if it is ever called, so each refused call provably stopped
at the boundary. ``mugv generate`` checks every argument, batch row and output path before
loading a model: the command-line cases point ``--model`` at a folder with no weights,
so reaching the loader would give a different error. Files planted with a pickle payload
(an object whose ``__reduce__`` creates a marker file) never run it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import stat

import numpy as np
import pytest
import torch
from PIL import Image

import mugv_dit
import mugv_vae
from mugv_infer import CFGZeroStar, MUGVPipeline, load_null_text, read_mp4, write_mp4
from mugv_infer.cli import main, run_command

REF = Image.fromarray(np.full((16, 16, 3), 128, np.uint8))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


class _NeverCalled:
    """A text-encoder component that fails the test if any work starts."""

    dim = 16

    def __call__(self, prompts):
        raise AssertionError("the text encoder ran: the bad argument was not caught first")


def _tiny_components():
    torch.manual_seed(0)
    cfg = mugv_dit.DiTConfig(depth=1, hidden_size=24, num_heads=2, in_channels=24, text_dim=16)
    vae_cfg = mugv_vae.VAEConfig.preset(
        "debug", temporal_num_res_blocks=1, layers_per_block=1
    )  # fmt: skip
    return mugv_dit.MUGDiT(cfg), mugv_vae.VideoVAE(vae_cfg)


@pytest.fixture(scope="module")
def pipe():
    dit, vae = _tiny_components()
    return MUGVPipeline(dit, vae, _NeverCalled(), device="cpu")


def _call(pipe, **kwargs):
    args = dict(duration=9, height=16, width=16, steps=1, progress=False, output_type="latent")
    args.update(kwargs)
    prompt = args.pop("prompt", "a fox")
    return pipe(prompt, **args)


# --------------------------------------------------------------------------- MUGVPipeline
def _call_cases(tmp):
    (tmp / "folder.png").mkdir(exist_ok=True)
    (tmp / "file").write_text("x")
    (tmp / "out.mp4").mkdir(exist_ok=True)
    fifo = tmp / "pipe.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    nan = float("nan")
    return [
        ({"prompt": None}, TypeError, r"prompt must be a string or a list of strings, got None"),
        ({"prompt": 3}, TypeError, r"prompt must be a string or a list of strings, got int"),
        ({"prompt": []}, ValueError, r"prompt must be a non-empty string or a list of them"),
        ({"prompt": "   "}, ValueError, r"prompt must be a non-empty string or a list of them"),
        ({"prompt": "a \ud800 fox"}, ValueError, r"prompt holds a lone surrogate U\+D800 at"),
        ({"prompt": ["a", 3]}, TypeError, r"prompt\[1\] must be a string, got 3 \(int\)"),
        ({"negative_prompt": "\udfff"}, ValueError, r"negative_prompt holds a lone surrogate"),
        ({"negative_prompt": 5}, TypeError, r"negative_prompt must be a string or a list"),
        ({"image": str(tmp / "no.png")}, FileNotFoundError, r"image '.*no\.png' does not exist"),
        ({"image": str(tmp / "folder.png")}, ValueError, r"folder\.png' is a folder, not a file"),
        ({"image": str(fifo)}, ValueError, r"pipe\.png' is not a regular file .*never opened"),
        ({"image": np.zeros((0, 0, 3), np.uint8)}, ValueError, r"non-empty uint8 \[H, W, 3\]"),
        ({"image": Image.new("RGB", (0, 4))}, ValueError, r"image is an empty image of size"),
        ({"image": 7}, TypeError, r"image must be a file path, a PIL image or a uint8"),
        ({"images": {"0": REF}}, TypeError, r"images keys must be int frame indices, got '0'"),
        ({"images": [REF]}, TypeError, r"images must be a dict frame index -> image, got list"),
        ({"image": REF, "images": {0: REF}}, ValueError, r"give image= .* or images= .*not both"),
        ({"duration": 0}, ValueError, r"duration must be >= 1 frame, got 0"),
        ({"duration": 2.5}, TypeError, r"duration must be '5s', '3s' or an int frame count"),
        ({"duration": "7s"}, ValueError, r"unknown duration '7s'"),
        ({"height": 16.0}, TypeError, r"height must be an int, got 16\.0 \(float\)"),
        ({"width": 0}, ValueError, r"width must be >= 8, got 0"),
        ({"width": None}, ValueError, r"give both height and width, or neither"),
        ({"aspect": 1.78, "height": None, "width": None}, TypeError, r"aspect must be a string"),
        ({"steps": 0}, ValueError, r"steps must be >= 1, got 0"),
        ({"steps": "25"}, TypeError, r"steps must be an int, got '25' \(str\)"),
        ({"guidance": nan}, ValueError, r"guidance must be finite, got nan"),
        ({"guidance": float("inf")}, ValueError, r"guidance must be finite, got inf"),
        ({"guidance": "4"}, TypeError, r"guidance must be a number, a Guidance or None"),
        ({"guidance": CFGZeroStar(scale=nan)}, ValueError, r"guidance\.scale must be finite"),
        ({"seed": "42"}, TypeError, r"seed must be an int \(or None for a random one\), got '42'"),
        ({"seed": True}, TypeError, r"seed must be an int .*got True \(bool\)"),
        ({"seed": -1}, ValueError, r"seed must be in \[0, 2\*\*64\), got -1"),
        ({"seed": 2**64}, ValueError, r"seed must be in \[0, 2\*\*64\)"),
        ({"generator": "cpu"}, TypeError, r"generator must be a torch\.Generator, got str"),
        ({"fps": 0}, ValueError, r"fps must be > 0, got 0"),
        ({"fps": nan}, ValueError, r"fps must be finite, got nan"),
        ({"fps": "30"}, TypeError, r"fps must be a number, got '30' \(str\)"),
        ({"aes_score": float("inf")}, ValueError, r"aes_score must be finite, got inf"),
        ({"cond_latents": torch.zeros(1, 24, 2, 2, 2)}, ValueError, r"give both cond_latents"),
        ({"cond_latents": torch.full((1, 24, 2, 2, 2), nan), "cond_mask": torch.ones(1, 2)},
         ValueError, r"cond_latents holds NaN or infinite values"),
        ({"negative_embedding": torch.full((4, 16), nan)}, ValueError,
         r"negative_embedding holds NaN or infinite values"),
        ({"negative_embedding": torch.zeros(0, 16)}, ValueError,
         r"negative_embedding must be a non-empty 2-D tensor, got \(0, 16\)"),
        ({"output_type": "gif"}, ValueError, r"output_type must be one of .* got 'gif'"),
        ({"output_type": "mp4", "prompt": ["a", "b"], "output_path": [tmp / "x.mp4", tmp / "x"]},
         ValueError, r"output_path\[0\] and output_path\[1\] are the same file"),
        ({"output_type": "mp4", "output_path": tmp / "file" / "x.mp4"}, NotADirectoryError,
         r"'.*file' is a file, not a folder"),
        ({"output_type": "mp4", "output_path": [tmp / "out.mp4"]},
         IsADirectoryError, r"output_path\[0\] .* is a folder"),
        ({"progress": "yes"}, TypeError, r"progress must be True or False, got 'yes'"),
        ({"callback": 3}, TypeError, r"callback must be callable, got int"),
    ]  # fmt: skip


@pytest.mark.timeout(120)
def test_call_argument_table(pipe, tmp_path):
    cases = _call_cases(tmp_path)
    assert len(cases) >= 40
    for kwargs, error, pattern in cases:
        with pytest.raises(error) as err:
            _call(pipe, **kwargs)
        assert re.search(pattern, str(err.value)), (kwargs, str(err.value))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["file", "folder.png", "out.mp4", "pipe.png"]  # nothing written


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"dtype": "bf16"}, TypeError, r"dtype must be a torch\.dtype .*got 'bf16' \(str\)"),
        ({"text_encoder_dtype": "fp32"}, TypeError, r"text_encoder_dtype must be a torch\.dtype"),
        ({"device": "gpu"}, ValueError, r"device 'gpu' is not a torch device"),
        ({"offload": "disk"}, ValueError, r"offload must be None, 'model' or 'block', got 'disk'"),
        ({"repo_or_dir": None}, TypeError, r"repo_or_dir must be a Hub repo id or a folder"),
        ({"text_encoder": 3}, TypeError, r"text_encoder must be a Hub id, a folder or an encoder"),
    ],
)
def test_from_pretrained_checks_before_reading_any_file(tmp_path, kwargs, error, pattern):
    args = {"repo_or_dir": tmp_path / "no-weights-here", **kwargs}
    with pytest.raises(error, match=pattern):
        MUGVPipeline.from_pretrained(**args)


# --------------------------------------------------------------------------- media files
@pytest.mark.parametrize(
    ("frames", "fps", "error", "pattern"),
    [
        (np.zeros((0, 16, 16, 3), np.uint8), 30, ValueError, r"frames is empty \(0 frames\)"),
        (np.zeros((2, 16, 16, 3), np.uint8), 0, ValueError, r"fps must be finite and > 0, got 0"),
        (np.zeros((2, 16, 16, 3), np.uint8), float("nan"), ValueError, r"finite and > 0, got nan"),
        (np.zeros((2, 16, 16, 3), np.uint8), "30", TypeError, r"fps must be a number, got '30'"),
        (torch.full((3, 2, 16, 16), float("nan")), 30, ValueError, r"video holds NaN or inf"),
        (np.zeros((2, 15, 16, 3), np.uint8), 30, ValueError, r"even sizes, got 15x16"),
    ],
)
def test_write_mp4_rejects(tmp_path, frames, fps, error, pattern):
    with pytest.raises(error, match=pattern):
        write_mp4(frames, tmp_path / "clip.mp4", fps=fps)
    assert list(tmp_path.iterdir()) == []  # no 0-byte MP4, no temporary file


def test_write_mp4_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_mp4(np.zeros((1, 16, 16, 3), np.uint8), tmp_path / "a.mp4", fps=30)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o027)
        path = write_mp4(np.zeros((1, 16, 16, 3), np.uint8), tmp_path / "b.mp4", fps=30)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)
    assert read_mp4(path).num_frames == 1


@pytest.mark.timeout(60)
def test_read_mp4_rejects_without_opening(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"video '.*no\.mp4' does not exist"):
        read_mp4(tmp_path / "no.mp4")
    os.mkfifo(tmp_path / "pipe.mp4")
    with pytest.raises(ValueError, match=r"video '.*pipe\.mp4' is not a regular file"):
        read_mp4(tmp_path / "pipe.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"cannot decode video '.*junk\.mp4'"):
        read_mp4(tmp_path / "junk.mp4")


# --------------------------------------------------------------------------- untrusted files
def test_official_layout_with_payloads_never_runs_them(tmp_path, marker):
    dit, vae = _tiny_components()
    for name, module in (("dit.pt", dit), ("vae.pt", vae)):
        folder = tmp_path / name
        folder.mkdir()
        torch.save(dit.state_dict(), folder / "dit.pt")
        torch.save(vae.state_dict(), folder / "vae.pt")
        torch.save({**module.state_dict(), "payload": Payload(str(marker))}, folder / name)
        with pytest.raises(ValueError, match=rf"refusing to load .*{name}: it holds pickled"):
            MUGVPipeline.from_pretrained(
                folder, text_encoder=_NeverCalled(), vae_config=vae.config, device="cpu"
            )
        assert not marker.exists(), name


def test_saved_pipeline_with_payloads_never_runs_them(tmp_path, marker):
    dit, vae = _tiny_components()
    saved = MUGVPipeline(dit, vae, _NeverCalled()).save_pretrained(tmp_path / "saved")
    files = sorted(p.relative_to(saved) for p in saved.rglob("*") if p.is_file())
    assert len(files) >= 4  # dit/ and vae/ configs and weights (+ pipeline.json)
    for rel in files:
        folder = tmp_path / "planted" / str(rel).replace("/", "_")
        import shutil

        shutil.copytree(saved, folder)
        (folder / rel).write_bytes(pickle.dumps({"payload": Payload(str(marker))}))
        try:
            MUGVPipeline.from_pretrained(folder, text_encoder=_NeverCalled(), device="cpu")
        except Exception as exc:  # a format error naming JSON / the header; never unpickled
            assert not isinstance(exc, pickle.UnpicklingError), (rel, exc)
        else:  # only a file the loader does not read may pass
            assert rel.name == "pipeline.json", rel
        assert not marker.exists(), rel


def test_null_text_with_a_payload_never_runs_it(tmp_path, marker):
    (tmp_path / "null_text.safetensors").write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(Exception) as err:  # safetensors' own error type
        load_null_text(tmp_path)
    assert "header" in str(err.value) and not marker.exists()


# --------------------------------------------------------------------------- mugv generate
def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mugv: error: "), err
    return lines[0]


def _generate_cases(tmp):
    empty_model = tmp / "model"
    empty_model.mkdir()
    (tmp / "afile").write_text("x")
    (tmp / "adir.mp4").mkdir()
    os.mkfifo(tmp / "jobs-fifo.jsonl")
    REF.save(tmp / "ref.png")
    (tmp / "outside").mkdir()
    (tmp / "clips").mkdir()
    os.symlink(tmp / "outside", tmp / "clips" / "link")

    def batch(name: str, text: str | bytes) -> str:
        path = tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    common = ["--model", empty_model, "--text-encoder", "org/encoder", "--no-progress"]
    one = ["generate", "--prompt", "a fox", "--out", tmp / "one.mp4", *common]

    def many(name, text, *extra):
        return ["generate", "--batch", batch(name, text), "--out-dir", tmp / "clips", *common,
                *extra]  # fmt: skip

    return [
        ([], r"the following arguments are required: command"),
        (["generate", *common], r"one of the arguments --prompt --batch is required"),
        (["generate", "--prompt", "a fox", *common], r"--prompt needs --out clip\.mp4"),
        (["generate", "--prompt", "a \udcff fox", "--out", tmp / "o.mp4", *common],
         r"--prompt holds a lone surrogate U\+DCFF at character 2"),
        ([*one, "--cfg", "nan"], r"--cfg must be finite, got nan"),
        ([*one, "--cfg", "inf"], r"--cfg must be finite, got inf"),
        ([*one, "--fps", "0"], r"--fps must be > 0, got 0\.0"),
        ([*one, "--steps", "0"], r"--steps must be >= 1, got 0"),
        ([*one, "--steps", "2.5"], r"argument --steps: invalid int value: '2\.5'"),
        ([*one, "--seed", "-1"], r"--seed must be in \[0, 2\*\*64\), got -1"),
        ([*one, "--height", "16"], r"give both --height and --width, or neither"),
        ([*one, "--height", "4", "--width", "4"], r"--height must be >= 8, got 4"),
        ([*one, "--duration", "0"], r"frame count must be >= 1, got 0"),
        ([*one, "--duration", "7s"], r"unknown duration '7s'"),
        ([*one, "--aspect", "2:1"], r"unknown aspect ratio '2:1'"),
        ([*one, "--image", tmp / "none.png"], r"image '.*none\.png' does not exist"),
        ([*one, "--image", tmp / "afile"], r"cannot read reference image '.*afile'"),
        (["generate", "--prompt", "a", "--out", tmp / "adir.mp4", *common],
         r"output .*adir\.mp4 is a folder; give a file name"),
        (["generate", "--prompt", "a", "--out", tmp / "afile" / "x.mp4", *common],
         r"output .*x\.mp4: .*afile is a file, not a folder"),
        ([*one, "--vae-preset", "huge"], r"unknown VAE preset 'huge'"),
        (["generate", "--prompt", "a", "--out", tmp / "o.mp4", "--model", "nowhere"],
         r"--model nowhere is neither an existing folder nor a Hub repo id"),
        ([*one, "--device", "gpu"], r"--device 'gpu' is not a torch device"),
        ([*one, "--step-cache", "-1"], r"--step-cache must be >= 0, got -1\.0"),
        ([*one, "--negative-prompt", "\udcfe"], r"--negative-prompt holds a lone surrogate"),
        (["generate", "--batch", tmp / "none.csv", "--out-dir", tmp / "clips", *common],
         r"batch file .*none\.csv does not exist"),
        (["generate", "--batch", tmp / "jobs-fifo.jsonl", "--out-dir", tmp / "clips", *common],
         r"batch file .*jobs-fifo\.jsonl is not a regular file"),
        (["generate", "--batch", batch("j.csv", "prompt\na\n"), *common],
         r"--batch needs --out-dir DIR"),
        (["generate", "--batch", batch("k.csv", "prompt\na\n"), "--out-dir", tmp / "afile",
          *common], r"--out-dir .*afile exists and is not a folder"),
        (many("jobs.txt", "prompt\na\n"), r"batch file must be \.csv or \.jsonl, got jobs\.txt"),
        (many("latin.csv", b"prompt\nna\xefve\n"), r"latin\.csv line 2 is not UTF-8 text"),
        (many("cols.csv", "prompt,colour\na,red\n"), r"cols\.csv line 2 has unknown columns"),
        (many("extra.csv", "prompt\na,b\n"), r"extra\.csv line 2 has more fields than"),
        (many("bad.jsonl", '{"prompt": "a"}\n{"prompt": \n'), r"bad\.jsonl line 2 is not valid"),
        (many("list.jsonl", '["a fox"]\n'), r"list\.jsonl line 1 must be a JSON object"),
        (many("noprompt.jsonl", '{"seed": 1}\n'), r"noprompt\.jsonl line 1 has no prompt"),
        (many("num.jsonl", '{"prompt": 3}\n'), r"num\.jsonl line 1: prompt must be text, got 3"),
        (many("sur.jsonl", '{"prompt": "a \\ud800"}\n'), r"sur\.jsonl line 1: prompt holds"),
        (many("seed.csv", "prompt,seed\na,abc\n"), r"seed\.csv line 2: seed must be an int"),
        (many("seedf.jsonl", '{"prompt": "a", "seed": 1.5}\n'), r"seedf\.jsonl line 1: seed"),
        (many("up.jsonl", '{"prompt": "a", "out": "../x.mp4"}\n'),
         r"up\.jsonl line 1: out '\.\./x\.mp4' points outside --out-dir"),
        (many("abs.jsonl", json.dumps({"prompt": "a", "out": str(tmp / "x.mp4")}) + "\n"),
         r"abs\.jsonl line 1: out '.*x\.mp4' points outside --out-dir"),
        (many("sym.jsonl", '{"prompt": "a", "out": "link/x.mp4"}\n'),
         r"sym\.jsonl line 1: out 'link/x\.mp4' points outside --out-dir"),
        (many("dup.jsonl", '{"prompt": "a", "out": "x.mp4"}\n{"prompt": "b", "out": "x.mp4"}\n'),
         r"dup\.jsonl line 1 and .*dup\.jsonl line 2 both write .*x\.mp4"),
        (many("dflt.jsonl", '{"prompt": "a", "out": "0001.mp4"}\n{"prompt": "b"}\n'),
         r"dflt\.jsonl line 1 and .*dflt\.jsonl line 2 both write .*0001\.mp4"),
        (many("sfx.jsonl", '{"prompt": "a", "out": "x"}\n{"prompt": "b", "out": "x.mp4"}\n'),
         r"sfx\.jsonl line 1 and .*line 2 both write .*x\.mp4"),
        (many("img.jsonl", '{"prompt": "a", "image": "missing.png"}\n'),
         r"img\.jsonl line 1: image '.*missing\.png' does not exist"),
        (many("asp.jsonl", '{"prompt": "a", "aspect": "2:1"}\n'),
         r"asp\.jsonl line 1: unknown aspect ratio '2:1'"),
        (many("dur.jsonl", '{"prompt": "a", "duration": true}\n'), r"dur\.jsonl line 1: duration"),
        (many("both.jsonl", '{"prompt": "a"}\n', "--image", tmp / "ref.png"),
         r"--image goes with --prompt; give batch rows an image column"),
        (many("empty.jsonl", "\n\n"), r"batch file .*empty\.jsonl has no jobs"),
    ]  # fmt: skip


@pytest.mark.timeout(120)
def test_generate_command_table(tmp_path, capsys):
    cases = _generate_cases(tmp_path)
    assert len(cases) >= 40
    for argv, pattern in cases:
        rc = main([str(a) for a in argv])
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2, (argv, line)
        assert re.search(pattern, line), (argv, line)
    assert list((tmp_path / "clips").iterdir()) == [tmp_path / "clips" / "link"]
    assert not (tmp_path / "outside").exists() or list((tmp_path / "outside").iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_device_without_cuda(tmp_path, capsys):
    rc = main(["generate", "--prompt", "a", "--out", str(tmp_path / "o.mp4"), "--model", "a/b",
               "--device", "cuda"])  # fmt: skip
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "--device cuda asks for CUDA, but no CUDA device is visible" in line


def test_pickled_weights_from_the_command_line(tmp_path, marker, capsys):
    dit, vae = _tiny_components()
    torch.save({**dit.state_dict(), "payload": Payload(str(marker))}, tmp_path / "dit.pt")
    torch.save(vae.state_dict(), tmp_path / "vae.pt")
    rc = main(["generate", "--prompt", "a fox", "--out", str(tmp_path / "o.mp4"), "--model",
               str(tmp_path), "--text-encoder", "org/encoder", "--device", "cpu"])  # fmt: skip
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and re.search(r"refusing to load .*dit\.pt: it holds pickled Python", line)
    assert "(_io.open)" in line and not marker.exists()


# --------------------------------------------------------------------------- exit codes
def test_exit_codes_debug_and_signals(tmp_path, capsys, monkeypatch):
    def fail():
        raise torch.OutOfMemoryError("CUDA out of memory")

    assert run_command(fail) == 1
    assert _one_error_line(capsys.readouterr().err) == (
        "mugv: error: OutOfMemoryError: CUDA out of memory (run with --debug or MUGV_DEBUG=1 "
        "for the traceback)"
    )
    monkeypatch.setenv("MUGV_DEBUG", "1")
    rc = main(["generate", "--prompt", "a", "--out", str(tmp_path / "o.mp4"), "--cfg", "nan"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and err.rstrip().endswith("--cfg must be finite, got nan")
    monkeypatch.delenv("MUGV_DEBUG")

    def interrupted():
        raise KeyboardInterrupt

    assert run_command(interrupted) == 130
    assert capsys.readouterr().err == "mugv: interrupted; finished outputs are complete\n"


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    import av

    real = av.VideoFrame.from_ndarray

    def killed(*args, **kwargs):  # SIGTERM arrives while the temporary file is open
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", killed)
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    assert run_command(lambda: write_mp4(frames, tmp_path / "clip.mp4", fps=30)) == 143
    assert capsys.readouterr().err.startswith("mugv: terminated (SIGTERM)")
    assert list(tmp_path.iterdir()) == []  # neither the clip nor a hidden temporary file
