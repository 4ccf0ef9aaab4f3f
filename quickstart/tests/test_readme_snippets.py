"""Every ``python`` and ``bash`` block of the READMEs runs as written (issue 19).

A fenced block runs unless the line before it is ``<!-- snippet: skip (REASON) -->``;
the reason is required and says what the block needs that a fresh CPU machine without
network does not have (the 10 GB official weights, a GPU, a Hub account), and where the
same call is tested instead. A README's python blocks run in order in one namespace (a
later block may use an earlier block's names, as a reader would), in a temporary working
folder, offline (``HF_HUB_OFFLINE=1``), against a local Hugging Face cache that holds:

- ``MUG-V/MUG-V-inference``: ``dit.pt`` / ``vae.pt`` of the *debug* presets in the official
  key layout (the real files are tens of GB); ``VAEConfig.preset("mugv")`` gives the debug
  topology for the duration, since an official ``vae.pt`` carries no config;
- ``DeepFloyd/t5-v1_1-xxl``: a tiny random T5 encoder with a word-level tokenizer.

Generation calls that leave the size at its default (720p, 5 s) run at 32 x 32, 9 frames:
``resolve_size`` / ``resolve_num_frames`` are replaced for the duration (a 720p clip from
the debug models would take minutes on a CPU and test nothing more). Files a user brings
(``first_frame.png``, ``ref.png``, ``my_lora.safetensors``) are made in the working folder.
``bash`` blocks run with ``bash -e`` in the same folder and environment.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READMES = [
    "README.md",
    "packages/mugv-vae/README.md",
    "packages/mugv-dit/README.md",
    "packages/mugv-data/README.md",
    "packages/mugv-infer/README.md",
]
# packages/mugv-train/README.md is not listed yet: its snippets are being rewritten with
# mugv-train (issue 19 note); add it here once its blocks carry skip markers or run.
RUNNABLE = {"python", "bash"}
SKIP = re.compile(r"<!--\s*snippet:\s*skip\s*\((?P<reason>.*)\)\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")


@dataclass(frozen=True)
class Snippet:
    readme: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the stated reason, None when the block runs

    @property
    def where(self) -> str:
        return f"{self.readme}:{self.line}"


def snippets(readme: str) -> list[Snippet]:
    """The fenced blocks of one README, with their skip markers."""
    lines = (ROOT / readme).read_text(encoding="utf-8").splitlines()
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, lang, start = m["indent"], m["lang"], i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        prev = next((s for s in reversed(lines[:start]) if s.strip()), "")
        found = SKIP.search(prev)
        skip = found["reason"].strip() if found else None
        out.append(Snippet(readme, start + 1, lang, "\n".join(body) + "\n", skip))
    return out


def _state_bytes(module) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def _tiny_t5_files(folder: Path) -> dict[str, bytes]:
    """A tiny random T5 encoder (d_model 16) and a word-level tokenizer with T5's tokens."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = [
        "a",
        "red",
        "fox",
        "running",
        "through",
        "snow",
        "cat",
        "on",
        "the",
        "beach",
        "aesthetic",
        "score:",
        "6.0.",
    ]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=16, d_kv=4, d_ff=32, num_layers=1,
                      num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)  # fmt: skip
    T5EncoderModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """The local Hub cache the snippets resolve against (see the module docstring)."""
    import torch

    import mugv_dit
    import mugv_vae
    from mugv_testing import build_hf_cache

    cache = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    dit = mugv_dit.MUGDiT(mugv_dit.DiTConfig.preset("debug", text_dim=16))
    vae = mugv_vae.VideoVAE(mugv_vae.VAEConfig.preset("debug"))
    files = {"dit.pt": _state_bytes(dit), "vae.pt": _state_bytes(vae)}
    build_hf_cache(cache, "MUG-V/MUG-V-inference", files)
    t5 = tmp_path_factory.mktemp("t5")
    build_hf_cache(cache, "DeepFloyd/t5-v1_1-xxl", _tiny_t5_files(t5))
    return cache


def _user_files(folder: Path) -> None:
    """What a reader brings: a reference image, and a LoRA for the model they load."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:48, 0:64]
    img = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).clip(0, 255).astype(np.uint8)
    for name in ("first_frame.png", "ref.png"):
        Image.fromarray(img).save(folder / name)
    import torch
    from safetensors.torch import save_file

    import mugv_dit

    with torch.device("meta"):
        dit = mugv_dit.MUGDiT(mugv_dit.DiTConfig.preset("debug", text_dim=16))
    qkv = dit.get_submodule("blocks.0.attn.qkv")
    gen = torch.Generator().manual_seed(0)
    lora = {  # peft layout, rank 4 (mugv_infer.lora)
        "dit.blocks.0.attn.qkv.lora_A.weight": torch.randn(4, qkv.in_features, generator=gen),
        "dit.blocks.0.attn.qkv.lora_B.weight": torch.randn(qkv.out_features, 4, generator=gen),
    }
    save_file(lora, str(folder / "my_lora.safetensors"))


@pytest.fixture
def sandbox(hub_cache, tmp_path, monkeypatch):
    """Working folder, offline cache, small default sizes, 1 thread."""
    import torch
    from huggingface_hub import constants

    import mugv_vae

    work = tmp_path / "work"
    work.mkdir()
    _user_files(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    # Internals patched by name (tests may; the packages' code never reaches them so).
    debug = mugv_vae.VAEConfig.preset("debug")
    real_preset = mugv_vae.VAEConfig.preset.__func__
    monkeypatch.setattr(
        mugv_vae.VAEConfig,
        "preset",
        classmethod(
            lambda cls, name, **kw: real_preset(cls, "debug" if name == "mugv" else name, **kw)
        ),
    )
    assert mugv_vae.VAEConfig.preset("mugv") == debug
    monkeypatch.setattr("mugv_infer.pipeline.resolve_size", lambda *a, **k: (32, 32))
    monkeypatch.setattr("mugv_infer.pipeline.resolve_num_frames", lambda *a, **k: 9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield work
    torch.set_num_threads(threads)


def _run(snippet: Snippet, namespace: dict) -> None:
    if snippet.lang == "python":
        exec(compile(snippet.code, snippet.where, "exec"), namespace)
        return
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(
        ["bash", "-e", "-c", snippet.code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, f"{snippet.where} exited {done.returncode}:\n{done.stderr[-2000:]}"


def _id(readme: str) -> str:
    return readme.removeprefix("packages/").removesuffix("/README.md")


#: READMEs whose blocks take over ~30 s on a loaded 2-core machine (a bash block pays a new
#: interpreter's torch import).
SLOW = {"packages/mugv-dit/README.md"}


@pytest.mark.parametrize(
    "readme",
    [pytest.param(r, id=_id(r), marks=[pytest.mark.slow] if r in SLOW else []) for r in READMES],
)
def test_readme_snippets_run(readme, sandbox):
    blocks = [s for s in snippets(readme) if s.lang in RUNNABLE and s.skip is None]
    assert blocks, f"{readme}: no block runs (all skipped?)"
    namespace: dict = {"__name__": "__readme__"}
    for snippet in blocks:
        _run(snippet, namespace)


@pytest.mark.parametrize("readme", READMES, ids=_id)
def test_skipped_snippets_say_why(readme):
    """A skipped block names what it needs; every runnable-language block is accounted for."""
    found = snippets(readme)
    assert found, f"{readme} has no fenced blocks: the parser is broken"
    for s in found:
        if s.skip is not None:
            assert len(s.skip) >= 10, f"{s.where}: skip marker needs a reason, got {s.skip!r}"
