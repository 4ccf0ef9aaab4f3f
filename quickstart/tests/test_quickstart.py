"""The reduced quickstart end to end (``--fast``), then resume and determinism.

One real run of the command (every package through its public API), then: a rerun
skips every stage; with the last four stages deleted, a rerun redoes exactly those and
reproduces the DiT losses and the generated videos byte for byte.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from mugv_quickstart._media import read_mp4
from PIL import Image

STAGES = ["synth", "curate", "vae", "encode", "dit", "generate", "evaluate", "report"]
REDONE = ["vae", "dit", "generate", "evaluate", "report"]


def _run(out, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mugv_quickstart", "--fast", "--out", str(out), *args],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def _hashes(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.mp4"))
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs")
    log = _run(out)
    return out, log


def test_fast_run_produces_every_output(run):
    out, log = run
    for i, name in enumerate(STAGES, 1):
        assert f"[{i}/{len(STAGES)}] {name}: done in" in log
        assert (out / name / "done.json").is_file()
    done = {n: json.loads((out / n / "done.json").read_text())["summary"] for n in STAGES}

    # curation rejected exactly the planted bad files, each at the right stage
    table = {t["stage"]: t for t in done["curate"]["table"]}
    assert table["probe"]["rejected"] == 2  # truncated file, not a video
    assert table["sharpness"]["rejected"] == 1  # the blurred clip
    assert table["motion"]["rejected"] == 1  # the static clip
    assert table["dedup"]["rejected"] == 1  # the exact duplicate
    assert done["curate"]["kept"] == done["synth"]["kinds"]["clean"] - 16  # all clean train clips

    # both trainings learned something measurable
    assert done["vae"]["psnr_heldout"] > done["vae"]["psnr_untrained"] + 2
    assert done["dit"]["loss_last"] < done["dit"]["loss_first"]
    # the export carries the null caption that guidance runs against (caption dropout)
    assert (out / "dit" / done["dit"]["export"] / "null_text.safetensors").is_file()
    assert done["encode"]["samples"] == done["curate"]["kept"]
    assert done["encode"]["latent_shape"] == [24, 3, 6, 8] and done["encode"]["text_dim"] == 384

    # generated clips: T2V and I2V, trained and untrained, real MP4s of the right size
    prompts = json.loads((out / "generate" / "prompts.json").read_text())
    assert len(prompts) == done["generate"]["prompts"] == 4
    assert len({(p["colour"], p["direction"]) for p in prompts}) == 4
    for model in ("trained", "untrained"):
        for task in ("t2v", "i2v"):
            for p in prompts:
                frames, fps = read_mp4(out / "generate" / model / task / f"{p['id']}.mp4")
                assert frames.shape == (17, 48, 64, 3) and fps == 16.0
    # I2V keeps the reference frame: its first frame is the held-out clip's first frame
    real = read_mp4(out / "synth" / "heldout" / f"{prompts[0]['id']}.mp4")[0]
    gen = read_mp4(out / "generate" / "trained" / "i2v" / f"{prompts[0]['id']}.mp4")[0]
    assert np.abs(gen[0].astype(int) - real[0]).mean() < 6

    # the measurement is sound on real held-out clips
    agree = done["evaluate"]["agreement"]
    assert agree["real"] == {"colour": 1.0, "direction": 1.0, "both": 1.0, "count": 4}
    models = {"trained/t2v", "trained/i2v", "untrained/t2v", "untrained/i2v"}
    assert set(agree) == {"real", "real, VAE reconstruction"} | models
    # latent probes: fitted on the training latents, scored on every set incl. generated
    latent = done["evaluate"]["latent"]
    assert set(latent) == {"real", "real (training latents)"} | models
    assert latent["real (training latents)"]["count"] == done["encode"]["samples"]
    assert all(latent[k]["count"] == 4 for k in {"real"} | models)
    assert agree["real, VAE reconstruction"]["count"] == 4
    # the untrained DiT's output stays near the unit noise it starts from; real latents don't
    assert latent["untrained/t2v"]["std"] > 0.8 > latent["real"]["std"]
    gen_latent = np.load(out / "generate" / "trained" / "t2v" / f"{prompts[0]['id']}.npy")
    assert gen_latent.shape == tuple(done["encode"]["latent_shape"])

    # report, contact sheet and loss curves
    report = (out / "report" / "report.md").read_text()
    assert "latent space, no decoder" in report
    # one verdict line per space and task, with the binomial p-value of the trained DiT
    verdicts = [ln for ln in report.splitlines() if ", 4 clips: colour " in ln]
    assert len(verdicts) == 4 and all("(p = " in ln and "direction" in ln for ln in verdicts)
    for heading in ("Does generation follow the captions?", "Training", "Curation",
                    "Time per stage", "contact_sheet.png", "loss_curves.png"):  # fmt: skip
        assert heading in report
    assert f"{done['vae']['psnr_heldout']:.2f} dB" in report
    sheet = Image.open(out / "report" / "contact_sheet.png")
    assert sheet.format == "PNG" and sheet.size[1] > 16 * 48
    assert Image.open(out / "report" / "loss_curves.png").format == "PNG"


def test_rerun_skips_and_redone_stages_reproduce(run):
    out, _ = run
    log = _run(out)
    assert log.count("already done") == len(STAGES)

    before = _hashes(out / "generate")
    losses = (out / "dit" / "losses.json").read_text()
    vae_losses = (out / "vae" / "losses.json").read_text()
    for name in REDONE:
        os.replace(out / name, out / f"{name}.old")
    (out / "dit.partial").mkdir()  # an interrupted attempt with nothing saved yet
    log = _run(out)
    for name in STAGES:
        assert (f"{name}: already done" in log) == (name not in REDONE)
    # training, in a new process: bitwise (the VAE's trunk and video steps included)
    assert (out / "vae" / "losses.json").read_text() == vae_losses
    assert (out / "dit" / "losses.json").read_text() == losses
    # Generation: the same frames up to float-level differences of CPU kernels between
    # processes (a flipped rounding moves H.264's choices a little), far below what the
    # colour / direction measures can see.
    after = _hashes(out / "generate")
    assert after.keys() == before.keys() and len(before) == 16
    for rel in before:
        a = read_mp4(out / "generate" / rel)[0].astype(int)
        b = read_mp4(out / "generate.old" / rel)[0].astype(int)
        assert np.abs(a - b).mean() < 2.0, rel
    evaluate = json.loads((out / "evaluate" / "done.json").read_text())["summary"]
    old = json.loads((out / "evaluate.old" / "done.json").read_text())["summary"]
    assert evaluate["agreement"]["real"] == old["agreement"]["real"]


def test_other_settings_in_the_same_folder_are_refused(run, tmp_path):
    out, _ = run
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mugv_quickstart", "--fast", "--seed", "7", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "other settings" in proc.stderr


@pytest.mark.slow
def test_mugv_generate_regenerates_the_clips(run):
    """The one command the generate stage writes (``regenerate.sh``: `mugv generate` on the
    saved pipeline, with the null caption and the scheduler's shift scale read from it, and
    ``jobs.jsonl``) samples the trained DiT's T2V and I2V latents bit for bit."""
    out, _ = run
    script = (out / "generate" / "regenerate.sh").read_text()
    summary = json.loads((out / "generate" / "done.json").read_text())["summary"]
    command = script.splitlines()[-1]
    assert command == summary["regenerate"] and command.startswith("mugv generate ")
    assert "--shift-scale" not in command and "--negative" not in command  # read from disk
    run_config = json.loads((out / "run.json").read_text())["config"]
    scheduler = json.loads(
        (out / "generate" / "pipeline" / "scheduler" / "scheduler_config.json").read_text()
    )
    assert scheduler["shift_scale"] == run_config["timestep_shift_scale"] != 1.0

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "mugv_infer.cli", *command.split()[1:]]
    proc = subprocess.run(
        [*argv, "--no-progress", "--save-latents"], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    prompts = json.loads((out / "generate" / "prompts.json").read_text())
    for task in ("t2v", "i2v"):
        for p in prompts:
            want = out / "generate" / "trained" / task / f"{p['id']}.npy"
            got = out / "regenerated" / task / f"{p['id']}.npy"
            np.testing.assert_array_equal(np.load(got), np.load(want), err_msg=str(got))
            frames = read_mp4(got.with_suffix(".mp4"))[0]
            assert frames.shape == read_mp4(want.with_suffix(".mp4"))[0].shape
