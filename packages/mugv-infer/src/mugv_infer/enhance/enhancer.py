"""`MUGVEnhancer`: the official one-step video refiner on diffusers' Wan components.

Dimension legend: B videos, C latent channels (16), T latent frames, h/w latent height/width,
N pixel frames, H/W pixel height/width, L DiT tokens (T h w / 4), S text tokens (512), E text
width (4096).

The official refinement (enhancer reference §0, §1.4), step by step:
1. the video is rounded to bf16 (Q7) and encoded by the Wan VAE: z = normalised posterior
   mean [B, 16, T, h, w];
2. noised to sigma = 0.3: x = (1 - sigma) z + sigma eps, eps ~ N(0, 1) drawn on the CPU in
   float32 (the seeded diffsynth convention, Q8);
3. latent frame 0 set to the clean z[:, :, 0];
4. velocity from the modified DiT: input [x, z] through the folded 32-channel patch
   embedding (§2.8), per-token timesteps 0 for the frame-0 tokens and 1000 sigma = 300 for
   the others (§2.2); positive and negative prompts (Wan's negative prompt) in two calls,
   v = v_neg + 2 (v_pos - v_neg);
5. one Euler step to sigma = 0: x0 = x - sigma v (fp32);
6. frame 0 reset to z[:, :, 0] and the latents decoded; uint8 by truncation (§1.5).
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from mugv_infer.enhance import _weights as W
from mugv_infer.enhance._video import prepare, to_uint8

if TYPE_CHECKING:
    from mugv_dit import HubAccess

OFFICIAL_REPO = "MUG-V/MUG-V-inference"
WAN_REPO = "Wan-AI/Wan2.1-T2V-1.3B"

#: Wan's standard negative prompt, the enhancer's CFG branch (reference §1.4 step 7).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
#: The prompt of the official example (``assets/sample.csv``), used when none is given.
ENHANCE_PROMPT = "高质量视频,HD,清晰,运动,电影,高清,high quality,cinema"
OFFICIAL_SIGMA = 0.3
OFFICIAL_GUIDANCE = 2.0
OFFICIAL_FPS = 20.0
#: imageio quality 9 = libx264 crf int((1 - 0.9) * 51) = 5 (reference §1.5).
OFFICIAL_CRF = 5
TEXT_LENGTH = 512
_CONFIG = "enhancer.json"
_OUTPUT_TYPES = ("latent", "pt", "np", "mp4")


@dataclass(frozen=True)
class EnhancerQuirks:
    """Official behaviours that are choices rather than the algorithm (reference §5).

    The default reproduces the official numerics. The third precision quirk, the bf16
    rounding of the DiT's residual stream between blocks (§2.6), is the component dtype:
    ``from_pretrained(dtype=torch.bfloat16)`` (the default) reproduces it, float32 avoids it.
    """

    bf16_input: bool = True
    """Round the input video to bfloat16 before encoding, like the official ``predict_step``
    (Q7). False encodes the float32 pixels."""

    truncate_uint8: bool = True
    """Pixels to uint8 by truncation, ``clip((x + 1) * 127.5, 0, 255).astype(uint8)``, as the
    official writer (§1.5). False rounds to nearest (the generator's convention)."""


@dataclass
class EnhancementOutput:
    """What ``MUGVEnhancer.__call__`` returns.

    ``latents`` [B, 16, T, h, w] are the refined latents. ``videos`` by ``output_type``:
    "latent" -> the latents; "pt" -> float [B, 3, N, H, W] in [-1, 1]; "np" -> uint8
    [B, N, H, W, 3]; "mp4" -> B file paths (also in ``paths``).
    """

    latents: torch.Tensor
    videos: Any
    fps: float
    paths: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: text, encode, refine, decode, write."""


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning (reference §4.2): ftfy (a declared dependency), HTML unescaped
    twice, whitespace collapsed."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class MUGVEnhancer:
    """The MUG-V enhancer over four library components.

    ``transformer``: diffusers ``WanTransformer3DModel`` with ``in_channels=32`` (the folded
    second patch embedding) and the LoRA injected by peft; ``vae``: ``AutoencoderKLWan``;
    ``text_encoder``: transformers ``UMT5EncoderModel``; ``tokenizer``: its tokenizer.
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        *,
        device: torch.device | str | None = None,
        quirks: EnhancerQuirks | None = None,
        text_length: int = TEXT_LENGTH,
    ) -> None:
        in_ch = transformer.config.in_channels
        if in_ch != 2 * vae.config.z_dim or transformer.config.out_channels != vae.config.z_dim:
            raise ValueError(
                f"the transformer takes {in_ch} channels and returns "
                f"{transformer.config.out_channels}; the enhancer needs [x, z] = "
                f"{2 * vae.config.z_dim} in and {vae.config.z_dim} out for this VAE"
            )
        if text_encoder.config.d_model != transformer.config.text_dim:
            raise ValueError(
                f"text encoder width {text_encoder.config.d_model} != the transformer's "
                f"text_dim {transformer.config.text_dim}"
            )
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.quirks = quirks if quirks is not None else EnhancerQuirks()
        self.text_length = text_length
        self.device = torch.device(device) if device is not None else _module_device(transformer)
        self._offload = None
        self._block_offload = None

    # ------------------------------------------------------------------ construction
    @property
    def components(self) -> dict[str, Any]:
        """``MUGVEnhancer(**enhancer.components)`` rebuilds the enhancer."""
        return {
            "transformer": self.transformer,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
        }

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the transformer (its ``_keep_in_fp32_modules`` stay float32)."""
        return self.transformer.patch_embedding.weight.dtype

    @property
    def lora_rank(self) -> int | None:
        for name, p in self.transformer.named_parameters():
            if ".lora_A." in name:
                return p.shape[0]
        return None

    @classmethod
    def from_pretrained(
        cls,
        repo_or_dir: str | os.PathLike[str] = OFFICIAL_REPO,
        *,
        wan_repo_or_dir: str | os.PathLike[str] = WAN_REPO,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.bfloat16,
        head_dim: int = W.OFFICIAL_HEAD_DIM,
        lora_alpha: float = W.OFFICIAL_LORA_ALPHA,
        quirks: EnhancerQuirks | None = None,
        offload: Literal["model", "block"] | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | None = None,
        local_files_only: bool = False,
    ) -> MUGVEnhancer:
        """Load the enhancer from the official files or from ``save_pretrained``'s folder.

        Official layout (reference §1.3): ``enhancer/dit_i2v.safetensors`` and
        ``enhancer/pytorch_model.bin`` from ``repo_or_dir`` (default
        ``MUG-V/MUG-V-inference``); ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``
        and the ``google/umt5-xxl`` tokenizer from ``repo_or_dir`` when it is a folder that
        holds them, else from ``wan_repo_or_dir`` (default ``Wan-AI/Wan2.1-T2V-1.3B``). Hub
        files go through the Hugging Face cache and honour offline mode.

        ``dtype`` (default bfloat16, the official precision) applies to every component;
        diffusers' ``_keep_in_fp32_modules`` of the transformer stay float32. ``head_dim``
        sets the number of heads (width / 128 for Wan); ``lora_alpha`` the LoRA scale
        alpha / r (official 4 / 256). ``offload`` ("model" or "block") keeps weights in CPU
        memory like ``MUGVPipeline``. Every file is found, opened and key-checked before
        the large modules are built; errors name the file and the fix.
        """
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if offload not in (None, "model", "block"):
            raise ValueError(f"offload must be None, 'model' or 'block', got {offload!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype (torch.bfloat16), got {dtype!r}")
        hub = {"revision": revision, "cache_dir": cache_dir, "token": token,
               "local_files_only": local_files_only}  # fmt: skip
        ours = _find_saved(repo_or_dir, hub)
        if ours is not None:
            parts = _load_saved(ours, dtype)
        else:
            parts = _load_official(repo_or_dir, wan_repo_or_dir, hub, dtype, head_dim,
                                   lora_alpha, device, offload)  # fmt: skip
        enhancer = cls(*parts, device=device, quirks=quirks)
        if offload == "model":
            enhancer.enable_model_offload()
        elif offload == "block":
            enhancer.enable_block_offload()
        else:
            for module in (enhancer.transformer, enhancer.vae, enhancer.text_encoder):
                module.to(device)
        return enhancer

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write the enhancer to one folder, atomically: ``transformer/`` (diffusers config
        and base weights, plus ``lora.safetensors`` in peft keys), ``vae/``,
        ``text_encoder/``, ``tokenizer/`` and ``enhancer.json``. ``from_pretrained`` reads it
        back (a Hub repo holding it works too)."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        try:
            base, lora = {}, {}
            for key, value in self.transformer.state_dict().items():
                value = value.detach().to("cpu").contiguous()
                if ".lora_A." in key or ".lora_B." in key:
                    lora[key.replace(".default.weight", ".weight")] = value
                else:
                    base[key.replace(".base_layer.", ".")] = value
            (tmp / "transformer").mkdir()
            self.transformer.save_config(tmp / "transformer")
            save_file(base, str(tmp / "transformer" / "diffusion_pytorch_model.safetensors"))
            if lora:
                save_file(lora, str(tmp / "transformer" / "lora.safetensors"))
            self.vae.save_pretrained(tmp / "vae")
            self.text_encoder.save_pretrained(tmp / "text_encoder")
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            info = {
                "format": "mugv-enhancer",
                "lora_rank": self.lora_rank,
                "lora_alpha": _lora_alpha(self.transformer),
                "text_length": self.text_length,
            }
            (tmp / _CONFIG).write_text(json.dumps(info, indent=2))
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    # ------------------------------------------------------------------ memory and speed
    def enable_model_offload(self) -> MUGVEnhancer:
        """One component (text encoder, transformer or VAE) on the device at a time."""
        from mugv_infer.offload import ComponentOffload

        self._offload = ComponentOffload(self.device)
        for module in (self.text_encoder, self.transformer, self.vae):
            self._offload.add(module)
        self._block_offload = None
        return self

    def enable_block_offload(self, prefetch: int = 1) -> MUGVEnhancer:
        """Transformer blocks streamed to the device one at a time (``1 + prefetch``
        resident, LoRA included); the text encoder and VAE offloaded whole."""
        from mugv_infer.offload import BlockOffload, ComponentOffload

        self._offload = ComponentOffload(self.device)
        self._offload.add(self.text_encoder)
        self._offload.add(self.vae)
        self._block_offload = BlockOffload(
            self.transformer, list(self.transformer.blocks), self.device, prefetch=prefetch
        )
        return self

    def enable_vae_tiling(self, **kwargs: Any) -> MUGVEnhancer:
        """diffusers' spatial VAE tiling for encode and decode (``AutoencoderKLWan
        .enable_tiling(**kwargs)``). Not bit-exact: the official path is untiled (§4.1)."""
        self.vae.enable_tiling(**kwargs)
        return self

    def fuse_lora(self) -> MUGVEnhancer:
        """Merge the LoRA into the base weights, W + (alpha / r) B A, and drop the adapter
        (faster; under bf16 not bit-exact with the official unmerged LoRA)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in list(self.transformer.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(self.transformer.get_submodule(parent), child, module.get_base_layer())
        return self

    def _on_device(self, module: torch.nn.Module):
        if self._offload is None or (module is self.transformer and self._block_offload):
            return contextlib.nullcontext(module)
        return self._offload.on_device(module)

    # ------------------------------------------------------------------ stages
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """umT5 embeddings [B, 512, E]: padded/truncated to 512 tokens with EOS; rows past
        each prompt's tokens are zero, as the official trim + zero-pad (reference §4.2)."""
        tok = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            max_length=self.text_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        with self._on_device(self.text_encoder):
            emb = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return (emb * mask[..., None].to(emb.dtype)).to(self.dtype)

    @torch.no_grad()
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, N, H, W] in [-1, 1] -> normalised latent mean [B, 16, T, h, w] float32
        (reference §1.4 step 4, §4.1: (mu - mean) / std in mu's dtype)."""
        if self.quirks.bf16_input:
            pixels = pixels.to(torch.bfloat16)
        x = pixels.to(self.device, self.vae.dtype)
        with self._on_device(self.vae):
            mu = self.vae.encode(x).latent_dist.mode()
        mean, std = _latent_stats(self.vae, mu.device)
        return ((mu - mean.to(mu.dtype)) * (1.0 / std).to(mu.dtype)).float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 16, T, h, w] -> pixels [B, 3, 4(T - 1) + 1, H, W] float32 in [-1, 1]."""
        mean, std = _latent_stats(self.vae, latents.device)
        z = latents.float() * std + mean
        with self._on_device(self.vae):
            video = self.vae.decode(z.to(self.device, self.vae.dtype)).sample
        return video.float().clamp(-1, 1)

    @torch.no_grad()
    def predict_velocity(
        self, x: torch.Tensor, z: torch.Tensor, timestep: float, context: torch.Tensor
    ) -> torch.Tensor:
        """The enhancer DiT: velocity [B, 16, T, h, w] float32 for noisy latents ``x``, clean
        latents ``z`` (second patch embedding) and text ``context`` [B, S, E]; tokens of latent
        frame 0 get timestep 0, the rest ``timestep`` (reference §2.2)."""
        p_t, p_h, p_w = self.transformer.config.patch_size
        b, _, t, h, w = x.shape
        per_frame = (h // p_h) * (w // p_w)
        steps = torch.full((b, (t // p_t) * per_frame), float(timestep), device=self.device)
        steps[:, :per_frame] = 0.0
        inp = torch.cat([x, z], dim=1).to(self.device, self.dtype)
        out = self.transformer(
            inp, timestep=steps, encoder_hidden_states=context.to(self.device), return_dict=False
        )[0]
        return out.float()

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(
        self,
        video: Any,
        prompt: str | list[str] = ENHANCE_PROMPT,
        *,
        negative_prompt: str = WAN_NEGATIVE_PROMPT,
        guidance: float = OFFICIAL_GUIDANCE,
        sigma: float = OFFICIAL_SIGMA,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        height: int | None = None,
        width: int | None = None,
        pad_frames: bool = False,
        output_type: Literal["latent", "pt", "np", "mp4"] = "pt",
        output_path: str | os.PathLike[str] | list | None = None,
        fps: float | None = None,
    ) -> EnhancementOutput:
        """Refine ``video`` in one step (module docstring).

        Args:
            video: MP4 path(s), uint8 frames [B, N, H, W, 3], float [B, 3, N, H, W] in
                [-1, 1], or a ``GenerationOutput`` ("pt", "np" or "mp4").
            prompt: one prompt, or one per video (official: the CSV ``text``).
            guidance: CFG scale against ``negative_prompt`` (1.0 skips the negative pass).
            sigma: noise level of the single step (official 0.3; timestep 1000 sigma).
            seed / generator: CPU float32 noise; ``seed=None`` draws a fresh seed.
            height, width: cover-resize and centre-crop to this size first (official
                reader); otherwise the size must be a multiple of 16.
            pad_frames: repeat the last frame up to 4k + 1 frames (trimmed afterwards)
                instead of refusing other frame counts.
            output_type: "latent", "pt", "np" or "mp4" (``output_path``: a file for one
                video, a folder, or one path per video).
            fps: frame rate of written files (default: the input file's, else 20).
        """
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {_OUTPUT_TYPES}, got {output_type!r}")
        if not 0.0 < sigma <= 1.0:
            raise ValueError(f"sigma must be in (0, 1], got {sigma}")
        if not isinstance(guidance, int | float) or not math.isfinite(guidance):
            raise ValueError(f"guidance must be a finite number, got {guidance!r}")
        if seed is not None and (not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        if fps is not None and (not isinstance(fps, int | float) or not 0 < fps < 1e4):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if not isinstance(negative_prompt, str):
            raise ValueError("negative_prompt must be one string (it is used for every video)")
        clips = prepare(video, height=height, width=width, pad_frames=pad_frames)
        B = clips.pixels.shape[0]
        prompts = [prompt] * B if isinstance(prompt, str) else list(prompt)
        if len(prompts) != B or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{len(prompts)} prompts for {B} videos; give one or one per video")
        paths = _output_paths(output_path, clips.names, B) if output_type == "mp4" else []
        if generator is None:
            generator = torch.Generator("cpu")
            generator.manual_seed(
                seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            )
        timings: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            context = self.encode_prompt(prompts)
            negative = self.encode_prompt([negative_prompt] * B) if guidance != 1.0 else None
            timings["text"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            z = self.encode_video(clips.pixels)
            timings["encode"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            latents = self.refine(z, context, negative, guidance=guidance, sigma=sigma,
                                  generator=generator)  # fmt: skip
            timings["refine"] = time.perf_counter() - t0
            result_fps = fps or clips.fps or OFFICIAL_FPS
            out = EnhancementOutput(latents=latents, videos=latents, fps=result_fps,
                                    timings=timings)  # fmt: skip
            if output_type == "latent":
                return out
            t0 = time.perf_counter()
            pixels = self.decode_latents(latents)[:, :, : clips.num_frames]
            timings["decode"] = time.perf_counter() - t0
        except torch.OutOfMemoryError as exc:
            raise torch.OutOfMemoryError(
                f"out of device memory enhancing {B} x {clips.num_frames} frames at "
                f"{clips.pixels.shape[-2]} x {clips.pixels.shape[-1]}: {exc}. Try "
                "enhancer.enable_model_offload() or enable_block_offload() (--offload), "
                "enable_vae_tiling() (--vae-tiling), or one video per call"
            ) from exc

        t0 = time.perf_counter()
        if output_type == "pt":
            out.videos = pixels.cpu()
        else:
            frames = to_uint8(pixels, truncate=self.quirks.truncate_uint8)
            if output_type == "np":
                out.videos = frames
            else:
                from mugv_infer._media import write_mp4

                out.paths = [
                    write_mp4(f, p, fps=result_fps, crf=OFFICIAL_CRF)
                    for f, p in zip(frames, paths, strict=True)
                ]
                out.videos = out.paths
        timings["write"] = time.perf_counter() - t0
        return out

    @torch.no_grad()
    def refine(
        self,
        z: torch.Tensor,
        context: torch.Tensor,
        negative: torch.Tensor | None,
        *,
        guidance: float = OFFICIAL_GUIDANCE,
        sigma: float = OFFICIAL_SIGMA,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The one-step refinement of clean latents ``z`` [B, 16, T, h, w] (float32):
        noise to ``sigma``, pin frame 0, CFG velocity, Euler step to 0, pin frame 0 again
        (reference §1.4 steps 3-9, §3 with n = 1: sigma = [0.3], timesteps = [300])."""
        if noise is None:
            noise = torch.randn(z.shape, generator=generator, dtype=torch.float32)
        sig = torch.tensor(sigma, dtype=torch.float32)  # float32 like the scheduler
        timestep = float(sig * 1000)
        sig = sig.to(z.device)
        x = (1 - sig) * z + sig * noise.to(z.device)
        first = z[:, :, :1].clone()
        x[:, :, :1] = first
        with self._on_device(self.transformer):
            v = self.predict_velocity(x, z, timestep, context)
            if negative is not None:
                v_neg = self.predict_velocity(x, z, timestep, negative)
                v = v_neg + guidance * (v - v_neg)
        x = x + v.to(x.device) * (0.0 - sig)
        x[:, :, :1] = first
        return x


# ---------------------------------------------------------------------- helpers


def _module_device(module: torch.nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _latent_stats(vae: torch.nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=device).view(shape)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=device).view(shape)
    return mean, std


def _lora_alpha(transformer: torch.nn.Module) -> float | None:
    from peft.tuners.lora import LoraLayer

    for module in transformer.modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_alpha:
            return float(module.lora_alpha["default"])
    return None


def _output_paths(output_path: Any, names: list[str], count: int) -> list[Path]:
    if output_path is None:
        raise ValueError('output_type="mp4" needs output_path (a file, a folder or a list)')
    if isinstance(output_path, str | os.PathLike):
        path = Path(output_path)
        if path.suffix.lower() == ".mp4":
            if count != 1:
                raise ValueError(f"{count} videos but one output file {str(path)!r}: pass a folder")
            return [path]
        return [path / f"{i:04d}_{name}_enhance.mp4" for i, name in enumerate(names)]
    paths = [Path(p) for p in output_path]
    if len(paths) != count:
        raise ValueError(f"{len(paths)} output paths for {count} videos")
    return paths


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def _access(hub: dict) -> tuple[HubAccess, dict]:
    """Offline / reachable decided once (no retry loop without network), and the other
    download options."""
    from mugv_dit import HubAccess

    access = HubAccess.check(hub.get("local_files_only", False))
    return access, {k: v for k, v in hub.items() if k != "local_files_only"}


def _hub_file(repo: str, filename: str, hub: dict) -> Path:
    access, kwargs = _access(hub)
    return Path(access.download(repo, filename, **kwargs))  # type: ignore[arg-type]


def _hub_folder(repo: str, folder: str, hub: dict) -> Path:
    from huggingface_hub import snapshot_download

    access, kwargs = _access(hub)
    try:
        root = Path(
            snapshot_download(
                repo, allow_patterns=[f"{folder}/*"], local_files_only=access.cache_only, **kwargs
            )
        )
    except Exception as exc:  # one line: offline / unreachable / repo not found
        raise access.error(repo, f"{folder}/", exc, kwargs.get("cache_dir")) from None
    if not (root / folder).is_dir():
        raise FileNotFoundError(f"Hub repo {repo!r} has no {folder!r} folder")
    return root / folder


def _locate(
    name: str, sources: list[str | os.PathLike[str]], hub: dict, folder: bool = False
) -> Path:
    """``name`` from the first local folder that holds it, else from the last source (a Hub
    repo or a folder)."""
    for src in sources:
        path = Path(src) / name
        if Path(src).is_dir() and (path.is_dir() if folder else path.is_file()):
            return path
    last = sources[-1]
    if Path(last).is_dir() or not _is_hub_id(str(last)):
        where = " or ".join(repr(str(s)) for s in sources)
        raise FileNotFoundError(
            f"{name!r} not found in {where}; download it with `huggingface-cli download "
            f"{WAN_REPO if name in (W.VAE_FILE, W.T5_FILE, W.TOKENIZER_DIR) else OFFICIAL_REPO} "
            "--local-dir <folder>`"
        )
    return _hub_folder(str(last), name, hub) if folder else _hub_file(str(last), name, hub)


def _find_saved(repo_or_dir: str | os.PathLike[str], hub: dict) -> Path | None:
    """The folder of a ``save_pretrained`` enhancer, or None for the official layout."""
    path = Path(repo_or_dir)
    if path.is_dir():
        return path if (path / _CONFIG).is_file() else None
    if not _is_hub_id(str(repo_or_dir)):
        raise FileNotFoundError(
            f"{str(repo_or_dir)!r} is neither a local folder nor a Hub repo id like "
            f"{OFFICIAL_REPO!r}"
        )
    from huggingface_hub import snapshot_download

    access, kwargs = _access(hub)
    try:
        found = access.download(str(repo_or_dir), _CONFIG, missing_ok=True, **kwargs)
    except OSError:
        found = None  # the official layout's loading names the failure
    if found is None:
        return None  # no enhancer.json: the official layout (its errors come from there)
    return Path(snapshot_download(str(repo_or_dir), local_files_only=access.cache_only, **kwargs))


def _load_official(repo, wan_repo, hub, dtype, head_dim, lora_alpha, device, offload):
    from transformers import AutoTokenizer

    main = [repo] if Path(repo).is_dir() else []
    dit_path = W.check_file(_locate(W.DIT_FILE, [repo], hub))
    lora_path = W.check_file(_locate(W.LORA_FILE, [repo], hub))
    vae_path = W.check_file(_locate(W.VAE_FILE, [*main, wan_repo], hub))
    t5_path = W.check_file(_locate(W.T5_FILE, [*main, wan_repo], hub))
    tok_dir = _locate(W.TOKENIZER_DIR, [*main, wan_repo], hub, folder=True)
    # Read (memory-mapped) and key-check every file before building anything large.
    dit = W.convert_dit(W.read_safetensors(dit_path), W.read_torch(lora_path), head_dim=head_dim,
                        source=str(dit_path), lora_source=str(lora_path))  # fmt: skip
    vae_config, vae_state = W.convert_vae(W.read_torch(vae_path))
    t5_config, t5_state = W.convert_t5(W.read_torch(t5_path))
    if device.type == "cuda" and offload is None:
        _check_fits(device, dtype, dit.state, dit.lora, vae_state, t5_state)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    transformer = build_transformer(dit.config, dit.state, dit.lora, dtype=dtype,
                                    lora_alpha=lora_alpha, source=str(dit_path))  # fmt: skip
    vae = build_vae(vae_config, vae_state, dtype=dtype, source=str(vae_path))
    text_encoder = build_text_encoder(t5_config, t5_state, dtype=dtype, source=str(t5_path))
    return transformer, vae, text_encoder, tokenizer


def _load_saved(folder: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    info = json.loads((folder / _CONFIG).read_text())
    tdir = folder / "transformer"
    config = dict(WanTransformer3DModel.load_config(tdir))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    state = W.read_safetensors(W.check_file(tdir / "diffusion_pytorch_model.safetensors"))
    lora = {}
    if (tdir / "lora.safetensors").is_file():
        lora = W.read_safetensors(tdir / "lora.safetensors")
    transformer = build_transformer(config, state, lora, dtype=dtype,
                                    lora_alpha=info.get("lora_alpha") or W.OFFICIAL_LORA_ALPHA,
                                    source=str(tdir))  # fmt: skip
    vae = AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=dtype)
    text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    return transformer, vae.eval(), text_encoder.eval(), tokenizer


def _check_fits(device: torch.device, dtype: torch.dtype, *states: dict) -> None:
    need = (
        sum(v.numel() for s in states for v in s.values())
        * torch.empty((), dtype=dtype).element_size()
    )
    free, _ = torch.cuda.mem_get_info(device)
    if need > 0.9 * free:
        raise ValueError(
            f"the enhancer's weights need {need / 2**30:.1f} GiB on {device}, {free / 2**30:.1f} "
            "GiB are free: load with offload='model' (or 'block'; --offload model) so only the "
            "running component is on the GPU, and enable_vae_tiling() for 720p"
        )


def build_transformer(
    config: dict,
    state: dict[str, torch.Tensor],
    lora: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype,
    lora_alpha: float = W.OFFICIAL_LORA_ALPHA,
    source: str = "transformer",
) -> torch.nn.Module:
    """``WanTransformer3DModel(**config)`` holding ``state`` strictly, with the peft LoRA
    (``lora`` in peft keys, rank from its shapes, scale ``lora_alpha / r``) when given."""
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig, inject_adapter_in_model

    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    keep = tuple(WanTransformer3DModel._keep_in_fp32_modules)
    W.load_into(model, state, dtype=dtype, keep_fp32=keep, what=source)
    # The rotary tables are computed buffers, not weights: build them for real.
    model.rope = type(model.rope)(
        model.config.attention_head_dim, model.config.patch_size, model.config.rope_max_seq_len
    )
    if lora:
        ranks = {v.shape[0] for k, v in lora.items() if ".lora_A." in k}
        if len(ranks) != 1:
            raise ValueError(f"{source}: LoRA tensors disagree on the rank: {sorted(ranks)}")
        config = LoraConfig(r=ranks.pop(), lora_alpha=lora_alpha, lora_dropout=0.0,
                            target_modules=W.LORA_TARGET_REGEX)  # fmt: skip
        inject_adapter_in_model(config, model, adapter_name="default", low_cpu_mem_usage=True)
        want = {k for k in model.state_dict() if ".lora_A." in k or ".lora_B." in k}
        given = {k.replace(".weight", ".default.weight"): v for k, v in lora.items()}
        missing, unexpected = want - set(given), set(given) - want
        if missing or unexpected:
            raise ValueError(
                f"{source}: the LoRA does not match the transformer: missing "
                f"{W._first(missing) or 'none'}; unexpected {W._first(unexpected) or 'none'}"
            )
        model.load_state_dict(
            {k: v.to(dtype).contiguous() for k, v in given.items()}, strict=False, assign=True
        )
    _no_meta(model, source)
    return model.eval().requires_grad_(False)


def build_vae(config: dict, state: dict[str, torch.Tensor], *, dtype: torch.dtype,
              source: str = "vae") -> torch.nn.Module:  # fmt: skip
    """``AutoencoderKLWan(**config)`` holding ``state`` strictly (Wan2.1 latent constants)."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan(**config)
    W.load_into(vae, state, dtype=dtype, what=source)
    _no_meta(vae, source)
    return vae.eval().requires_grad_(False)


def build_text_encoder(config: dict, state: dict[str, torch.Tensor], *, dtype: torch.dtype,
                       source: str = "text_encoder") -> torch.nn.Module:  # fmt: skip
    """``UMT5EncoderModel(UMT5Config(**config))`` holding ``state`` strictly."""
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**config))
    W.load_into(model, state, dtype=dtype, what=source)
    model.tie_weights()
    _no_meta(model, source)
    return model.eval().requires_grad_(False)


def _no_meta(module: torch.nn.Module, source: str) -> None:
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{source}: tensors left without values: {W._first(left)}")


__all__ = [
    "ENHANCE_PROMPT",
    "WAN_NEGATIVE_PROMPT",
    "EnhancementOutput",
    "EnhancerQuirks",
    "MUGVEnhancer",
]
