"""Bad input table of mugv-vae: every case asserts the error class and its message.

API cases raise a TypeError / ValueError / FileNotFoundError (or subclass) naming the
argument and the value; command-line cases print exactly one ``mugv-vae: error: ...`` line
and exit 2 (bad input) or 1 (a failure during the work). Files planted with a pickle
payload (an object whose ``__reduce__`` creates a marker file) never run it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import stat

import pytest
import torch

from mugv_vae import TrainConfig, VAEConfig, VideoVAE, evaluate_folder, read_video, write_video
from mugv_vae._video_io import synthetic_clip
from mugv_vae.cli import main, run_command

FAST = VAEConfig.preset("debug", temporal_num_res_blocks=1, layers_per_block=1)


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


def _plant_torch(path, marker) -> None:
    torch.save({"weight": torch.zeros(2), "payload": Payload(str(marker))}, path)


def _plant_raw(path, marker) -> None:
    path.write_bytes(pickle.dumps({"payload": Payload(str(marker))}))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    VideoVAE(FAST).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "a.mp4", synthetic_clip(1, 8, 16, 16), fps=8)
    return folder


def _cli(argv, capsys, env=None):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mugv-vae: error: "), err
    return lines[0]


# --------------------------------------------------------------------------- configs
CONFIG_CASES = [
    ({"norm_num_groups": "4"}, TypeError, r"VAEConfig\.norm_num_groups must be int, got '4'"),
    ({"scaling_factor": float("nan")}, ValueError, r"scaling_factor must be a finite number"),
    ({"scaling_factor": float("inf")}, ValueError, r"scaling_factor must be a finite number"),
    ({"channels_last": 1}, TypeError, r"channels_last must be bool, got 1 \(int\)"),
    ({"tile_latent_size": True}, TypeError, r"tile_latent_size must be int or None"),
    ({"tile_mode": "fast"}, ValueError, r"tile_mode must be 'exact' or 'blend', got 'fast'"),
    ({"layers_per_block": 0}, ValueError, r"layers_per_block must be >= 1, got 0"),
    ({"logvar_clamp": (3.0, 1.0)}, ValueError, r"logvar_clamp must be \(low, high\)"),
    ({"block_out_channels": (8, 16, 32)}, ValueError, r"block_out_channels must have 4"),
    ({"norm_num_groups": 3}, ValueError, r"divisible by norm_num_groups=3"),
    ({"micro_frame_size": 12}, ValueError, r"micro_frame_size must be a positive multiple of 8"),
    ({"latent_channels": 4}, ValueError, r"latent_shift has 24 values, need latent_channels=4"),
    ({"latent_scale": (0.0,) * 24}, ValueError, r"latent_scale must be > 0"),
]


@pytest.mark.parametrize(("overrides", "error", "match"), CONFIG_CASES)
def test_vae_config_rejects(overrides, error, match):
    with pytest.raises(error, match=match):
        VAEConfig.preset("debug", **overrides)


def test_vae_config_from_dict_rejects_unknown_and_non_objects():
    with pytest.raises(ValueError, match=r"unknown VAEConfig fields \['colour'\]"):
        VAEConfig.from_dict({"colour": 1})
    with pytest.raises(TypeError, match=r"must be a JSON object, got list"):
        VAEConfig.from_dict([1, 2])
    with pytest.raises(ValueError, match=r"unknown VAE preset 'huge'"):
        VAEConfig.preset("huge")
    # lists from JSON become tuples: the round trip is exact
    assert VAEConfig.from_dict(json.loads(FAST.to_json())) == FAST


TRAIN_CASES = [
    ({"lr": float("nan")}, ValueError, r"TrainConfig\.lr must be a finite number, got nan"),
    ({"lr": 0.0}, ValueError, r"TrainConfig\.lr must be > 0, got 0\.0"),
    ({"steps": "10"}, TypeError, r"TrainConfig\.steps must be int, got '10' \(str\)"),
    ({"device": "gpu"}, ValueError, r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ({"betas": (1.0, 0.9)}, ValueError, r"betas must be in \[0, 1\)"),
    ({"num_frames": 12}, ValueError, r"num_frames must be a positive multiple of 8, got 12"),
    ({"height": 20}, ValueError, r"height/width must be multiples of 8"),
    ({"keep_checkpoints": 0}, ValueError, r"keep_checkpoints must be >= 1, got 0"),
    ({"seed": -1}, ValueError, r"TrainConfig\.seed must be >= 0, got -1"),
    ({"bf16": "yes"}, TypeError, r"TrainConfig\.bf16 must be bool"),
    ({"output_dir": ""}, ValueError, r"output_dir must name a folder"),
]


@pytest.mark.parametrize(("overrides", "error", "match"), TRAIN_CASES)
def test_train_config_rejects(tmp_path, overrides, error, match):
    args = {"output_dir": str(tmp_path), "vae": FAST, **overrides}
    with pytest.raises(error, match=match):
        TrainConfig(**args)


def test_train_config_from_dict_rejects_bad_loss_and_types(tmp_path):
    base = {"output_dir": str(tmp_path)}
    with pytest.raises(ValueError, match=r"unknown TrainConfig\.loss fields \['lpips'\]"):
        TrainConfig.from_dict({**base, "loss": {"lpips": 1.0}})
    with pytest.raises(ValueError, match=r"TrainConfig\.loss\.kl must be >= 0, got -1"):
        TrainConfig.from_dict({**base, "loss": {"kl": -1.0}})
    with pytest.raises(TypeError, match=r"TrainConfig must be a JSON object, got str"):
        TrainConfig.from_dict("steps=3")
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['step'\]"):
        TrainConfig.from_dict({**base, "step": 3})


# --------------------------------------------------------------------------- video files
@pytest.mark.timeout(60)
def test_read_video_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"video file .*missing\.mp4 does not exist"):
        read_video(tmp_path / "missing.mp4")
    os.mkfifo(tmp_path / "pipe.mp4")  # opening it would block forever
    with pytest.raises(ValueError, match=r"pipe\.mp4 is a FIFO \(named pipe\), not a regular"):
        read_video(tmp_path / "pipe.mp4")
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(ValueError, match=r"dir\.mp4 is a folder, not a regular file"):
        read_video(tmp_path / "dir.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match=r"could not decode .*junk\.mp4"):
        read_video(tmp_path / "junk.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.mp4"):
        read_video(tmp_path / "empty.mp4")
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike, got int"):
        read_video(3)


def test_read_video_max_frames_zero_is_refused_not_one(video_dir):
    with pytest.raises(ValueError, match=r"max_frames must be a positive int or None, got 0"):
        read_video(video_dir / "a.mp4", max_frames=0)
    assert read_video(video_dir / "a.mp4", max_frames=3)[0].shape[1] == 3


WRITE_CASES = [
    (torch.zeros(3, 0, 16, 16), 8, ValueError, r">= 1 frame .* got 0 frames of 16x16"),
    (torch.full((3, 2, 16, 16), float("nan")), 8, ValueError, r"finite values .*NaN/inf"),
    (torch.zeros(3, 2, 15, 16), 8, ValueError, r"even height/width .* got 2 frames of 15x16"),
    (torch.zeros(2, 16, 16), 8, ValueError, r"video must be \[3, N, H, W\], got shape \(2, 16"),
    (torch.zeros(3, 2, 16, 16), 0, ValueError, r"fps must be a finite number > 0, got 0"),
    (torch.zeros(3, 2, 16, 16), float("nan"), ValueError, r"fps must be a finite number > 0"),
    (torch.zeros(3, 2, 16, 16), "24", ValueError, r"fps must be a finite number > 0, got '24'"),
    ([[0.0]], 8, TypeError, r"video must be a torch\.Tensor \[3, N, H, W\], got list"),
]


@pytest.mark.parametrize(("video", "fps", "error", "match"), WRITE_CASES)
def test_write_video_rejects(tmp_path, video, fps, error, match):
    with pytest.raises(error, match=match):
        write_video(tmp_path / "out.mp4", video, fps=fps)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file


def test_write_video_to_a_folder_and_umask(tmp_path):
    (tmp_path / "clip.mp4").mkdir()
    with pytest.raises(IsADirectoryError, match=r"clip\.mp4 is a folder; give a file name"):
        write_video(tmp_path / "clip.mp4", torch.zeros(3, 1, 16, 16))
    old = os.umask(0o022)
    try:
        path = write_video(tmp_path / "a" / "ok.mp4", torch.zeros(3, 1, 16, 16), fps=8)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        path = write_video(tmp_path / "a" / "private.mp4", torch.zeros(3, 1, 16, 16), fps=8)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["ok.mp4", "private.mp4"]


# --------------------------------------------------------------------------- evaluation
def test_evaluate_folder_rejects_bad_arguments(tmp_path, video_dir):
    model = VideoVAE(FAST)
    with pytest.raises(FileNotFoundError, match=r"video folder not found: .*nowhere"):
        evaluate_folder(model, tmp_path / "nowhere", tmp_path / "e")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no video files \(\.mp4.*\) in .*empty"):
        evaluate_folder(model, tmp_path / "empty", tmp_path / "e")
    with pytest.raises(ValueError, match=r"max_frames must be a positive int, got 0"):
        evaluate_folder(model, video_dir, tmp_path / "e", max_frames=0)
    with pytest.raises(ValueError, match=r"frames_per_clip must be a positive int, got -1"):
        evaluate_folder(model, video_dir, tmp_path / "e", frames_per_clip=-1)
    with pytest.raises(TypeError, match=r"model must be a VideoVAE, got str"):
        evaluate_folder("runs/vae", video_dir, tmp_path / "e")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"out_dir .*file exists and is not a folder"):
        evaluate_folder(model, video_dir, tmp_path / "file")
    with pytest.raises(FileNotFoundError, match=r"LPIPS weights file .*lp\.pt does not exist"):
        evaluate_folder(model, video_dir, tmp_path / "e", lpips_path=tmp_path / "lp.pt")
    assert not (tmp_path / "e").exists()  # every check ran before any output


@pytest.mark.timeout(120)
def test_evaluate_folder_skips_a_fifo_without_opening_it(tmp_path):
    folder = tmp_path / "v"
    write_video(folder / "a.mp4", synthetic_clip(1, 8, 16, 16), fps=8)
    os.mkfifo(folder / "b.mp4")
    result = evaluate_folder(VideoVAE(FAST), folder, tmp_path / "e")
    assert [c["name"] for c in result["clips"]] == ["a.mp4"]
    assert result["failed"] == [
        {"name": "b.mp4", "error": "skipped: is a FIFO (named pipe), not a regular file"}
    ]
    assert "b.mp4: skipped: is a FIFO" in (tmp_path / "e" / "summary.md").read_text()


# --------------------------------------------------------------------------- untrusted files
def test_official_vae_pt_with_a_payload_never_runs_it(tmp_path, marker):
    _plant_torch(tmp_path / "vae.pt", marker)
    with pytest.raises(
        ValueError,
        match=r"refusing to load .*vae\.pt: it holds pickled Python objects \(_io\.open\)",
    ):
        VideoVAE.from_pretrained(tmp_path / "vae.pt", config=FAST)
    assert not marker.exists()


def test_pretrained_folder_with_a_payload_never_runs_it(tmp_path, model_dir, marker):
    names = sorted(p.name for p in model_dir.iterdir())
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    for name in names:  # every file the loader reads, one at a time
        folder = tmp_path / name
        shutil.copytree(model_dir, folder)
        _plant_raw(folder / name, marker)
        with pytest.raises(Exception) as err:  # the class depends on the file
            VideoVAE.from_pretrained(folder)
        assert not marker.exists(), name
        # refused as a format error naming the file, never unpickled
        assert isinstance(err.value, ValueError), (name, err.value)
        assert re.search(
            rf"{re.escape(name)}.* not a valid (config\.json|safetensors)", str(err.value)
        )


def test_lpips_weights_with_a_payload_never_run_it(tmp_path, video_dir, marker):
    _plant_torch(tmp_path / "lpips.pt", marker)
    with pytest.raises(ValueError, match=r"refusing to load LPIPS weights .*lpips\.pt: it holds"):
        evaluate_folder(VideoVAE(FAST), video_dir, tmp_path / "e", lpips_path=tmp_path / "lpips.pt")
    assert not marker.exists()


def test_damaged_folders_name_the_file(tmp_path, model_dir):
    cut = tmp_path / "cut"
    shutil.copytree(model_dir, cut)
    (weights,) = cut.glob("*.safetensors")
    data = weights.read_bytes()
    for size in (999, len(data) - 16):  # inside the header, inside the tensor data
        weights.write_bytes(data[:size])
        with pytest.raises(ValueError, match=rf"{weights.name}: not a valid safetensors file"):
            VideoVAE.from_pretrained(cut)
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "norm_num_groups": "4"}))
    with pytest.raises(TypeError, match=r"bad/config\.json: VAEConfig\.norm_num_groups must be"):
        VideoVAE.from_pretrained(bad)


def test_trainer_state_with_a_payload_never_runs_it(tmp_path, model_dir, marker):
    from mugv_vae.training import load_trainer_state

    _plant_torch(tmp_path / "trainer.pt", marker)
    with pytest.raises(ValueError, match=r"refusing to load .*trainer\.pt: it holds pickled"):
        load_trainer_state(tmp_path / "trainer.pt")
    assert not marker.exists()
    torch.save({"step": 3}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"partial\.pt is not a VAETrainer state: it needs"):
        load_trainer_state(tmp_path / "partial.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"cannot read trainer state .*cut\.pt"):
        load_trainer_state(tmp_path / "cut.pt")


def test_resume_from_a_planted_trainer_state_exits_2_and_runs_nothing(
    tmp_path, model_dir, marker, capsys
):
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000001"
    shutil.copytree(model_dir, ckpt)
    _plant_torch(ckpt / "trainer.pt", marker)
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"vae": FAST.to_dict(), "num_frames": 8, "height": 16,
                                  "width": 16, "batch_size": 1, "steps": 2}))  # fmt: skip
    rc, err = _cli(["train", "--out", tmp_path / "run", "--config", config], capsys)
    line = _one_error_line(err)
    assert rc == 2 and re.search(r"refusing to load .*step_0000001/trainer\.pt", line), line
    assert not marker.exists()


# --------------------------------------------------------------------------- the command
def _cases(tmp_path, video_dir):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"lr": "\xe9"}')
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    broken = tmp_path / "broken.json"
    broken.write_text("{lr: 1}")
    fifo_dir = tmp_path / "fifos"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "x.mp4")
    ev = ["eval", "--videos", video_dir, "--out", tmp_path / "e"]
    tr = ["train", "--out", tmp_path / "run", "--preset", "debug"]
    return [
        ([], r"the following arguments are required: command"),
        (["fit"], r"argument command: invalid choice: 'fit'"),
        ([*ev, "--model", "nowhere"], r"--model nowhere is neither an existing file or folder"),
        (
            ["eval", "--model", "a/b", "--videos", tmp_path / "no", "--out", tmp_path / "e"],
            r"video folder not found: .*no",
        ),
        (
            ["eval", "--model", "a/b", "--videos", fifo_dir, "--out", tmp_path / "e"],
            r"no video files .* \(1 entries are not regular files\)",
        ),
        ([*ev, "--model", "a/b", "--max-frames", "0"], r"--max-frames must be >= 1, got 0"),
        ([*ev, "--model", "a/b", "--lpips-widths", "a,b"], r"--lpips-widths must be comma-sep"),
        ([*ev, "--model", "a/b", "--lpips", tmp_path / "x.pt"], r"--lpips .*x\.pt does not"),
        (
            ["eval", "--model", "a/b", "--videos", video_dir, "--out", text],
            r"--out .*notes\.txt exists and is not a folder",
        ),
        ([*ev, "--model", text], r"cannot read .*notes\.txt: not a (complete )?torch checkpoint"),
        ([*ev, "--model", "a/b", "--max-frames", "two"], r"--max-frames: invalid int value"),
        ([*tr, "--set", "lr=nan"], r"TrainConfig\.lr must be a finite number, got 'nan'"),
        ([*tr, "--set", "colour=1"], r"unknown TrainConfig fields \['colour'\]"),
        ([*tr, "--set", "lr"], r"--set expects KEY=VALUE, got 'lr'"),
        ([*tr, "--set", "vae.tile_mode=fast"], r"tile_mode must be 'exact' or 'blend'"),
        ([*tr, "--set", "vae.norm_num_groups=3"], r"divisible by norm_num_groups=3"),
        ([*tr, "--set", "loss.kl=-1"], r"TrainConfig\.loss\.kl must be >= 0, got -1"),
        ([*tr, "--set", "data.x=1"], r"--set data\.x: only vae\.\* and loss\.\* take a dotted"),
        ([*tr, "--set", "device=gpu"], r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ([*tr, "--steps", "-1"], r"batch_size must be >= 1 and steps >= 0"),
        ([*tr, "--config", tmp_path / "none.json"], r"--config .*none\.json does not exist"),
        ([*tr, "--config", latin], r"--config .*latin\.json is not UTF-8 text"),
        ([*tr, "--config", array], r"--config .*array\.json must hold a JSON object, got list"),
        ([*tr, "--config", broken], r"--config .*broken\.json is not valid JSON"),
        ([*tr, "--data", tmp_path / "no"], r"video folder not found: .*no"),
        ([*tr, "--data", fifo_dir], r"no readable video files .* in --data .*fifos"),
        (["train", "--out", text], r"--out .*notes\.txt exists and is not a folder"),
        ([*tr, "--set", f"lpips_path={tmp_path / 'lp.pt'}"], r"lpips_path .*lp\.pt does not"),
        ([*tr, "--set", "init_from=nowhere"], r"--model nowhere is neither|nowhere is neither"),
    ]


@pytest.mark.timeout(120)
def test_command_line_table(tmp_path, video_dir, capsys):
    cases = _cases(tmp_path, video_dir)
    assert len(cases) >= 25
    for argv, pattern in cases:
        rc, err = _cli(argv, capsys)
        line = _one_error_line(err)
        assert rc == 2, (argv, err)
        assert re.search(pattern, line), (argv, line)
        assert "Traceback" not in err
    assert not (tmp_path / "e").exists() and not (tmp_path / "run").exists()


def test_truncated_weights_are_named(tmp_path, model_dir, video_dir, capsys):
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    (weights,) = folder.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:999])
    rc, err = _cli(["eval", "--model", folder, "--videos", video_dir, "--out", tmp_path / "e"],
                   capsys)  # fmt: skip
    line = _one_error_line(err)
    assert rc == 2 and re.search(
        r"cannot read .*/m/.*\.safetensors: not a valid safetensors file", line
    ), line
    assert "truncated or damaged" in line


def test_bad_config_json_in_a_model_folder(tmp_path, model_dir, video_dir, capsys):
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    cfg = json.loads((model_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "tile_mode": "fast"}))
    rc, err = _cli(["eval", "--model", folder, "--videos", video_dir, "--out", tmp_path / "e"],
                   capsys)  # fmt: skip
    line = _one_error_line(err)
    assert rc == 2 and "tile_mode must be 'exact' or 'blend', got 'fast'" in line, line


def test_pickled_vae_pt_from_the_command_line(tmp_path, video_dir, marker, capsys):
    _plant_torch(tmp_path / "vae.pt", marker)
    rc, err = _cli(["eval", "--model", tmp_path / "vae.pt", "--videos", video_dir, "--out",
                    tmp_path / "e"], capsys)  # fmt: skip
    line = _one_error_line(err)
    assert rc == 2 and re.search(r"refusing to load .*vae\.pt: it holds pickled", line)
    assert "(_io.open)" in line and not marker.exists()


def test_all_files_undecodable_is_bad_input(tmp_path, model_dir, capsys):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "x.mp4").write_bytes(b"junk")
    rc, err = _cli(["eval", "--model", model_dir, "--videos", folder, "--out", tmp_path / "e"],
                   capsys)  # fmt: skip
    line = _one_error_line(err)
    assert rc == 2 and "none of the 1 files in --videos" in line
    assert "could not decode" in (tmp_path / "e" / "summary.md").read_text()


# --------------------------------------------------------------------------- exit codes
def test_exit_codes_debug_and_signals(tmp_path, capsys, monkeypatch):
    def fail():
        raise RuntimeError("the accelerator fell over")

    assert run_command(fail) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == (
        "mugv-vae: error: RuntimeError: the accelerator fell over (run with --debug or "
        "MUGV_DEBUG=1 for the traceback)"
    )
    monkeypatch.setenv("MUGV_DEBUG", "1")
    assert run_command(fail) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("RuntimeError: the accelerator fell over")
    monkeypatch.delenv("MUGV_DEBUG")
    rc, err = _cli(["--debug", "eval", "--model", "x", "--videos", tmp_path, "--out", tmp_path],
                   capsys)  # fmt: skip
    assert rc == 2 and "Traceback" in err and err.rstrip().endswith("nor a Hub repo id 'org/name'")

    def interrupted():
        raise KeyboardInterrupt

    assert run_command(interrupted) == 130
    assert capsys.readouterr().err == "mugv-vae: interrupted; finished outputs are complete\n"


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    import av

    real = av.VideoFrame.from_ndarray

    def killed(*args, **kwargs):  # SIGTERM arrives while the temporary file is open
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", killed)
    before = signal.getsignal(signal.SIGTERM)
    rc = run_command(lambda: write_video(tmp_path / "clip.mp4", torch.zeros(3, 2, 16, 16)))
    assert rc == 143
    assert capsys.readouterr().err.startswith("mugv-vae: terminated (SIGTERM)")
    assert list(tmp_path.iterdir()) == []  # neither the clip nor a hidden temporary file
    assert signal.getsignal(signal.SIGTERM) is before
