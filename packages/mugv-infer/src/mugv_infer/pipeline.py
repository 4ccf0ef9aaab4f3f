"""`MUGVPipeline`: text-to-video, image-to-video and text+image-to-video generation.

Dimension legend: B prompts, C latent channels (24), T latent frames, h/w latent height/width,
N pixel frames, H/W pixel height/width, S text tokens, E text width.

The official flow (architecture reference §B.7, §C, §D, §E), step by step:
1. prompts get the "aesthetic score" suffix; [prompts, negatives] are encoded in one batch;
2. the reference image is cover-resized, centre-cropped, repeated 8x and encoded (posterior
   sample) into one clean latent frame;
3. noise [B, C, T, h, w] in the model dtype; the conditioning frame(s) replace their noise;
4. 25 Euler steps with the timestep shift and CFG 4.0 against the official negative prompt,
   conditioned frames reset to their clean latent after every step;
5. decode: with a first-frame reference only the generated latent frames are decoded
   (N - 1 frames) and the reference pixel frame is prepended; otherwise every frame is;
6. uint8 frames, H.264 MP4 through PyAV.

Random numbers: one CPU ``torch.Generator`` seeded with ``seed`` draws, in order, the
reference posterior noise (one draw per reference image) and then the initial latent noise
(in the model dtype), so a seed reproduces on any device.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from diffusers import DiffusionPipeline

from mugv_infer._cache import StepCache
from mugv_infer._media import ImageInput, preprocess_image, to_uint8_frames, write_mp4
from mugv_infer.lora import MUGVLoraLoaderMixin
from mugv_infer.offload import BlockOffload, ComponentOffload
from mugv_infer.parallel import ParallelGroups, SequenceParallelDiT, cfg_parallel
from mugv_infer.presets import (
    OFFICIAL_AES_SCORE,
    OFFICIAL_MODEL_FPS,
    OFFICIAL_NEGATIVE_PROMPT,
    OFFICIAL_WRITE_FPS,
    OfficialQuirks,
    resolve_num_frames,
    resolve_size,
    with_aesthetic_score,
)
from mugv_infer.sampling import (
    FlowEulerSampler,
    Guidance,
    MUGVFlowScheduler,
    as_guidance,
    frame_conditioning,
    initial_noise,
)

OFFICIAL_REPO = "MUG-V/MUG-V-inference"
T5_XXL = "DeepFloyd/t5-v1_1-xxl"
OutputType = Literal["latent", "pt", "np", "pil", "mp4"]
_OUTPUT_TYPES = ("latent", "pt", "np", "pil", "mp4")
_PIPELINE_CONFIG = "pipeline.json"
_MODEL_INDEX = "model_index.json"


@dataclass
class GenerationOutput:
    """What ``MUGVPipeline.__call__`` returns.

    ``latents`` [B, C, T, h, w] are always the final sampler state. ``videos`` depends on
    ``output_type``: "latent" -> the latents; "pt" -> float [B, 3, N, H, W] in [-1, 1];
    "np" -> uint8 [B, N, H, W, 3]; "pil" -> B lists of PIL images; "mp4" -> B file paths.
    """

    latents: torch.Tensor
    videos: Any
    fps: float
    """fps the model was conditioned on."""
    write_fps: float
    """fps written to MP4 files (20 with ``OfficialQuirks.write_official_fps``)."""
    paths: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: text, reference, sampling, decode, write."""


class MUGVPipeline(DiffusionPipeline, MUGVLoraLoaderMixin):
    """The MUG-V pipeline as a diffusers ``DiffusionPipeline``.

    Components (``register_modules``): ``dit`` (``mugv_dit.MUGDiT``), ``vae``
    (``mugv_vae.VideoVAE``), ``text_encoder`` + ``tokenizer`` (transformers; T5-XXL
    officially) and ``scheduler`` (`MUGVFlowScheduler`). ``save_pretrained`` writes the
    diffusers layout (``model_index.json`` + one folder per component) and
    ``DiffusionPipeline.from_pretrained(folder)`` returns this class (``import mugv_infer``
    first). diffusers' ``enable_model_cpu_offload`` / ``enable_sequential_cpu_offload`` /
    ``enable_group_offload`` and LoRA loading (``load_lora_weights``) work on it.

    Also accepted, as before: ``text_encoder`` a ``mugv_dit.TextEncoder`` (split into its
    model and tokenizer) or any callable ``prompts -> (emb [B, S, E], mask [B, S])``
    (precomputed embeddings; not a component), and ``sampler`` a `FlowEulerSampler`
    (turned into the scheduler).
    """

    model_cpu_offload_seq = "text_encoder->dit->vae"
    _optional_components: list[str] = ["text_encoder", "tokenizer", "scheduler"]  # noqa: RUF012

    def __init__(
        self,
        dit: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: Any = None,
        sampler: FlowEulerSampler | None = None,
        *,
        tokenizer: Any = None,
        scheduler: MUGVFlowScheduler | None = None,
        max_sequence_length: int | None = None,
        device: torch.device | str | None = None,
        quirks: OfficialQuirks | None = None,
    ) -> None:
        super().__init__()
        prompt_fn = None
        if text_encoder is not None and not isinstance(text_encoder, torch.nn.Module):
            if isinstance(getattr(text_encoder, "model", None), torch.nn.Module) and hasattr(
                text_encoder, "tokenizer"
            ):  # a mugv_dit.TextEncoder: its transformers model and tokenizer
                tokenizer = text_encoder.tokenizer
                max_sequence_length = max_sequence_length or text_encoder.max_length
                text_encoder = text_encoder.model
            elif callable(text_encoder):  # weightless callable (precomputed embeddings)
                prompt_fn, text_encoder = text_encoder, None
            else:
                raise TypeError(
                    "text_encoder must be a transformers encoder (with tokenizer=), a "
                    f"mugv_dit.TextEncoder or a callable, got {type(text_encoder).__name__}"
                )
        if text_encoder is not None and tokenizer is None:
            raise ValueError("a text_encoder model needs its tokenizer: pass tokenizer=")
        if scheduler is None:
            scheduler = MUGVFlowScheduler.from_sampler(
                sampler if sampler is not None else FlowEulerSampler()
            )
        elif sampler is not None:
            raise ValueError("give sampler= or scheduler=, not both")
        self.register_modules(
            dit=dit, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )
        self.register_to_config(max_sequence_length=int(max_sequence_length or 300))
        self._prompt_fn = prompt_fn
        self.quirks = quirks if quirks is not None else OfficialQuirks()
        self._compute_device = torch.device(device) if device is not None else None
        text_dim = getattr(prompt_fn, "dim", None)
        if text_encoder is not None:
            cfg = text_encoder.config
            text_dim = int(getattr(cfg, "d_model", None) or cfg.hidden_size)
        if text_dim is not None and text_dim != dit.config.text_dim:
            raise ValueError(
                f"text encoder width {text_dim} does not match the DiT's text_dim "
                f"{dit.config.text_dim}; use the encoder the DiT was trained with"
            )
        if dit.config.in_channels != vae.latent_channels:
            raise ValueError(
                f"DiT expects {dit.config.in_channels} latent channels but the VAE makes "
                f"{vae.latent_channels}"
            )
        self.step_cache: StepCache | None = None
        self._offload: ComponentOffload | None = None
        self._block_offload: BlockOffload | None = None
        self._parallel: ParallelGroups | None = None
        self._sp: SequenceParallelDiT | None = None

    # ------------------------------------------------------------------ construction
    @property
    def sampler(self) -> FlowEulerSampler:
        """The scheduler's settings as a `FlowEulerSampler` (the functional sampler)."""
        return self.scheduler.to_sampler()

    @property
    def _execution_device(self) -> torch.device:
        """Where the models run: the offload target (ours or diffusers'), else the DiT's."""
        for offload in (self._offload, self._block_offload):
            if offload is not None:
                return offload.device
        try:
            device = super()._execution_device
        except AttributeError:  # a component without parameters (a test double)
            device = torch.device("cpu")
        if device.type == "cpu" and self._compute_device is not None:
            return self._compute_device
        return device

    @classmethod
    def from_pretrained(
        cls,
        repo_or_dir: str | os.PathLike[str] = OFFICIAL_REPO,
        *,
        text_encoder: str | os.PathLike[str] | Callable | None = T5_XXL,
        dit: torch.nn.Module | None = None,
        vae: torch.nn.Module | None = None,
        vae_config: Any = None,
        sampler: FlowEulerSampler | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        text_encoder_dtype: torch.dtype = torch.float32,
        quirks: OfficialQuirks | None = None,
        offload: Literal["model", "block"] | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> MUGVPipeline:
        """Load the pipeline from a diffusers folder, the official Hub layout, or components.

        ``repo_or_dir`` holds ``model_index.json`` (`save_pretrained`, read by diffusers'
        ``DiffusionPipeline.from_pretrained``, which takes ``kwargs`` such as
        ``quantization_config``), ``dit.pt`` and ``vae.pt`` (the official
        ``MUG-V/MUG-V-inference`` layout), or the older ``dit/`` + ``vae/`` folders. Hub
        files go through the Hugging Face cache and honour offline mode. ``dit`` / ``vae``
        replace the loaded components; ``text_encoder`` is a Hub id or folder (default: the
        folder's own encoder, else the official T5-XXL; run in ``text_encoder_dtype`` =
        float32 like the official code) or a ready encoder. ``vae_config`` is the VAE topology of an official ``vae.pt`` (default
        the ``mugv`` preset). ``dtype`` defaults to bfloat16 on CUDA and float32 elsewhere.
        ``offload`` ("model" or "block") loads every component into CPU memory first and
        enables that offload mode, so the weights never need to fit the device together
        (the 24 GB path for 10b: ``offload="block"``).
        """
        import mugv_dit
        import mugv_vae
        from mugv_infer._checks import check_load_arguments

        check_load_arguments(locals())  # before any file is read (issue 14)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        if offload not in (None, "model", "block"):
            raise ValueError(f"offload must be None, 'model' or 'block', got {offload!r}")
        load_device = torch.device("cpu") if offload else device
        hub = {
            "revision": revision,
            "cache_dir": cache_dir,
            "token": token,
            "local_files_only": local_files_only,
        }
        folder_index = Path(repo_or_dir) / _MODEL_INDEX
        if dit is None or vae is None or folder_index.is_file():
            files = _resolve_weights(repo_or_dir, **hub)
        else:  # both models given: nothing to read from repo_or_dir
            files = {"format": "official"}
        if files.get("local_files_only"):  # Hub unreachable: the cache only, no retries
            hub["local_files_only"] = True
        if files["format"] == "diffusers":
            return cls._from_diffusers_folder(
                files["root"], hub=hub, text_encoder=text_encoder, dit=dit, vae=vae,
                sampler=sampler, device=device, dtype=dtype,
                text_encoder_dtype=text_encoder_dtype, quirks=quirks, offload=offload, **kwargs,
            )  # fmt: skip
        if kwargs:
            raise TypeError(
                f"{sorted(kwargs)} are diffusers loading options: they apply to a folder "
                "written by save_pretrained (model_index.json), not to the official layout"
            )
        if dit is None or vae is None:
            if dit is None:
                load = (
                    mugv_dit.MUGDiT.from_official
                    if files["format"] == "official"
                    else mugv_dit.MUGDiT.from_pretrained
                )
                dit = load(files["dit"], dtype=dtype, device=load_device)
            if vae is None:
                if files["format"] == "official":
                    vae = mugv_vae.VideoVAE.from_official(
                        files["vae"], vae_config, device=load_device, dtype=dtype
                    )
                else:
                    vae = mugv_vae.VideoVAE.from_pretrained(
                        files["vae"], device=load_device, dtype=dtype
                    )
        if text_encoder is None:
            raise ValueError("text_encoder is required (a Hub id, a local folder or an encoder)")
        if isinstance(text_encoder, str | os.PathLike):
            text_encoder = _load_text_encoder(
                text_encoder, text_encoder_dtype, load_device, local_files_only, revision=None
            )
        pipe = cls(dit.eval(), vae.eval(), text_encoder, sampler, device=device, quirks=quirks)
        return pipe._enable_offload(offload)

    @classmethod
    def _from_diffusers_folder(
        cls,
        root: str | os.PathLike[str],
        *,
        hub: dict[str, Any],
        text_encoder: Any,
        dit: torch.nn.Module | None,
        vae: torch.nn.Module | None,
        sampler: FlowEulerSampler | None,
        device: torch.device,
        dtype: torch.dtype,
        text_encoder_dtype: torch.dtype,
        quirks: OfficialQuirks | None,
        offload: str | None,
        **kwargs: Any,
    ) -> MUGVPipeline:
        """diffusers' loader on a ``model_index.json`` folder or repo, with our options."""
        passed: dict[str, Any] = {k: v for k, v in (("dit", dit), ("vae", vae)) if v is not None}
        if sampler is not None:
            passed["scheduler"] = MUGVFlowScheduler.from_sampler(sampler)
        if isinstance(text_encoder, str | os.PathLike) and str(text_encoder) != T5_XXL:
            text_encoder = _load_text_encoder(
                text_encoder, text_encoder_dtype, torch.device("cpu"), hub["local_files_only"],
                revision=None,
            )  # fmt: skip
        prompt_fn = None
        if isinstance(getattr(text_encoder, "model", None), torch.nn.Module):  # TextEncoder
            passed.update(text_encoder=text_encoder.model, tokenizer=text_encoder.tokenizer)
        elif isinstance(text_encoder, torch.nn.Module):
            passed["text_encoder"] = text_encoder
        elif callable(text_encoder):
            prompt_fn = text_encoder
            passed.update(text_encoder=None, tokenizer=None)
        if "dtype" not in kwargs and "torch_dtype" not in kwargs:
            kwargs[_dtype_keyword()] = {"text_encoder": text_encoder_dtype, "default": dtype}
        hub = {k: v for k, v in hub.items() if v is not None}
        pipe = DiffusionPipeline.from_pretrained.__func__(cls, root, **hub, **passed, **kwargs)
        if prompt_fn is not None:
            pipe._prompt_fn = prompt_fn
        if quirks is not None:
            pipe.quirks = quirks
        pipe._compute_device = device
        if not offload:
            pipe.to(device)
        return pipe._enable_offload(offload)

    def _enable_offload(self, offload: str | None) -> MUGVPipeline:
        if offload == "model":
            self.enable_model_offload()
        elif offload == "block":
            self.enable_block_offload()
        return self

    def save_pretrained(  # type: ignore[override]
        self, save_directory: str | os.PathLike[str], **kwargs: Any
    ) -> Path:
        """diffusers' ``save_pretrained``: ``model_index.json``, ``scheduler/`` and one folder
        per component (``dit/``, ``vae/``, ``text_encoder/``, ``tokenizer/``), written into a
        temporary folder and moved into place entry by entry (``model_index.json`` last).
        ``MUGVPipeline.from_pretrained`` and ``DiffusionPipeline.from_pretrained`` read it."""
        import shutil
        import tempfile

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        try:
            DiffusionPipeline.save_pretrained(self, tmp, **kwargs)
            for entry in sorted(tmp.iterdir(), key=lambda e: e.name == _MODEL_INDEX):
                target = out / entry.name
                if target.is_dir() and entry.is_dir():
                    shutil.rmtree(target)
                os.replace(entry, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    # ------------------------------------------------------------------ memory and speed
    def enable_model_offload(self) -> MUGVPipeline:
        """Whole-component CPU offload: only the running component (text encoder, DiT or
        VAE) occupies device memory."""
        self._offload = ComponentOffload(self._offload_target())
        for module in self._managed_modules():
            self._offload.add(module)
        return self

    def enable_block_offload(self, prefetch: int = 1) -> MUGVPipeline:
        """DiT blocks streamed to the device one at a time (``1 + prefetch`` resident); the
        text encoder and VAE are offloaded whole."""
        target = self._offload_target()
        self._offload = ComponentOffload(target)
        for module in self._managed_modules():
            if module is not self.dit:
                self._offload.add(module)
        self._block_offload = BlockOffload(
            self.dit, list(self.dit.blocks), target, prefetch=prefetch
        )
        return self

    def _offload_target(self) -> torch.device:
        if self._compute_device is not None:
            return self._compute_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def enable_vae_tiling(self, tile_latent_size: int = 32, overlap: int = 4) -> MUGVPipeline:
        """Decode in overlapping spatial tiles of ``tile_latent_size`` latent pixels."""
        self.vae.config = dataclasses.replace(
            self.vae.config, tile_latent_size=tile_latent_size, tile_latent_overlap=overlap
        )
        return self

    def enable_step_cache(self, threshold: float = 0.1, **kwargs: int) -> MUGVPipeline:
        """TeaCache-style step skipping; ``threshold`` is the quality knob (0 = exact)."""
        self.step_cache = StepCache(threshold=threshold, **kwargs)
        return self

    def disable_step_cache(self) -> MUGVPipeline:
        self.step_cache = None
        return self

    def compile(self, **compile_kwargs: Any) -> MUGVPipeline:
        """``torch.compile`` each DiT block (compiled once per shape; blocks have no graph
        breaks)."""
        for block in self.dit.blocks:
            block.compile(**compile_kwargs)
        return self

    def enable_parallel(self, groups: ParallelGroups) -> MUGVPipeline:
        """Multi-process inference over ``mugv_infer.init_parallel(cfg_degree, sp_degree)``
        groups: CFG parallelism and Ulysses sequence parallelism. Every rank must call the
        pipeline with the same arguments; rank 0 should write the files."""
        self._parallel = groups
        if self._sp is not None:
            self._sp.detach()
            self._sp = None
        if groups.sp_group is not None:
            self._sp = SequenceParallelDiT(self.dit, groups.sp_group)
        return self

    def _managed_modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.text_encoder, self.dit, self.vae) if m is not None]

    def _on_device(self, component: Any):
        """Offload context for a component (the text encoder object, the DiT or the VAE)."""
        import contextlib

        module = _text_module(component) if component is self.text_encoder else component
        if module is None or not any(module is m for m in self._offload_modules()):
            return contextlib.nullcontext(component)
        return self._offload.on_device(module)

    def _offload_modules(self) -> list[torch.nn.Module]:
        if self._offload is None:
            return []
        if self._block_offload is not None:
            return [m for m in self._managed_modules() if m is not self.dit]
        return self._managed_modules()

    # ------------------------------------------------------------------ stages
    def encode_prompt(
        self,
        prompts: Sequence[str],
        negative_prompt: str | Sequence[str] | None,
        *,
        aes_score: float | None = OFFICIAL_AES_SCORE,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[prompts + suffix, negatives] encoded in one batch: emb [2B or B, S, E], mask."""
        positives = [with_aesthetic_score(p, aes_score) for p in prompts]
        texts = list(positives)
        if negative_prompt is not None:
            negs = (
                [negative_prompt] * len(prompts)
                if isinstance(negative_prompt, str)
                else list(negative_prompt)
            )
            if len(negs) != len(prompts):
                raise ValueError(
                    f"{len(negs)} negative prompts for {len(prompts)} prompts; give one or "
                    "one per prompt"
                )
            texts += negs
        self._warn_truncation(texts)
        device = self._execution_device
        emb, mask = self.encode_text(texts)
        return emb.to(device), mask.to(device)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (emb [B, S, E], mask [B, S] bool), the official tokenisation (padding to
        ``max_sequence_length`` = 300, truncation, special tokens; the EOS counts in the
        mask) and the encoder's ``last_hidden_state`` under the attention mask (§C)."""
        if self._prompt_fn is not None:
            return self._prompt_fn(texts)
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                "this pipeline has no text encoder: pass text_encoder= (and tokenizer=), or "
                "a callable giving the embeddings"
            )
        tokens = self.tokenizer(
            texts,
            max_length=self.config.max_sequence_length,
            padding="max_length",
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        device = self._execution_device
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        with self._on_device(self.text_encoder):
            emb = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return emb, mask.bool()

    def _warn_truncation(self, texts: list[str]) -> None:
        tokenizer = self.tokenizer if self._prompt_fn is None else None
        limit = self.config.max_sequence_length
        if tokenizer is None:
            return
        for text in dict.fromkeys(texts):
            n = len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])
            if n > limit:
                warnings.warn(
                    f"prompt has {n} tokens but the text encoder keeps {limit}; the end is "
                    f"truncated: {text[:60]!r}...",
                    stacklevel=3,
                )

    def encode_reference(
        self,
        image: ImageInput,
        height: int,
        width: int,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference image -> (clean latent frame [1, C, 1, h, w], pixel frame [3, H, W])."""
        pixels = preprocess_image(image, height, width)
        with self._on_device(self.vae):
            latent = self.vae.encode_image(
                pixels[None].to(self._execution_device, self.vae.dtype),
                sample=self.quirks.reference_posterior_sample,
                generator=generator,
            )
        return latent, pixels

    def _denoiser(
        self, emb: torch.Tensor, mask: torch.Tensor, fps: float, batch: int
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        dit = self.dit
        channels = dit.config.in_channels

        def model_call(x, t, m, text, text_mask):
            out = dit(x, t, text, text_mask=text_mask, fps=fps, x_mask=m)
            return out[:, :channels]

        group = self._parallel.cfg_group if self._parallel is not None else None
        call = cfg_parallel(model_call, group)

        def denoiser(x: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            if x.shape[0] == emb.shape[0]:
                text, text_mask = emb, mask
            elif x.shape[0] == batch:
                text, text_mask = emb[:batch], mask[:batch]
            else:
                raise ValueError(f"unexpected denoiser batch {x.shape[0]}")
            return call(x.to(dit.dtype), t, m, text, text_mask)

        return denoiser

    def prepare_latents(
        self,
        shape: tuple[int, int, int, int, int],
        generator: torch.Generator,
        device: torch.device,
        cond_latents: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial state [B, C, T, h, w] and the generated-frame mask [B, T].

        Noise is drawn on the generator's device in the DiT dtype; conditioning frames
        (``cond_mask`` True) start from their clean latents."""
        b, _, frames = shape[:3]
        z = initial_noise(shape, generator=generator, dtype=self.dit.dtype, device=device)
        gen_mask = torch.ones(b, frames, dtype=torch.bool, device=device)
        if cond_mask is None and cond_latents is None:
            return z, gen_mask
        if cond_mask is None or cond_latents is None:
            raise ValueError("cond_latents and cond_mask must be given together")
        if cond_mask.shape != (b, frames):
            raise ValueError(
                f"cond_mask must be [B, T] = {(b, frames)}, got {tuple(cond_mask.shape)}"
            )
        if cond_latents.shape != z.shape:
            raise ValueError(
                f"cond_latents must have the noise shape {tuple(z.shape)}, "
                f"got {tuple(cond_latents.shape)}"
            )
        if bool(cond_mask.all()):
            raise ValueError("every frame is a conditioning frame: nothing to generate")
        cond_mask = cond_mask.to(device=device, dtype=torch.bool)
        keep = cond_mask[:, None, :, None, None]
        z = torch.where(keep, cond_latents.to(device=device, dtype=z.dtype), z)
        return z, ~cond_mask

    def _denoise(
        self,
        denoiser: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        z: torch.Tensor,
        gen_mask: torch.Tensor,
        guide: Guidance,
        *,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None,
        progress: bool,
    ) -> torch.Tensor:
        """The official sampling loop (§D.3) over ``self.scheduler.timesteps``: one batch
        [cond, uncond] per step with guidance, the step cache if enabled, the scheduler's
        Euler step, then the conditioning frames reset to their clean value."""
        ts = self.scheduler.timesteps
        if self.step_cache is not None:
            self.step_cache.reset(len(ts))
        use_uncond = guide.needs_uncond()
        self.set_progress_bar_config(disable=not progress, desc="sampling", unit="step")
        with self.progress_bar(total=len(ts)) as bar:
            for i, t in enumerate(ts):
                x0 = z
                x_in = torch.cat([z, z]) if use_uncond else z
                m_in = torch.cat([gen_mask, gen_mask]) if use_uncond else gen_mask
                t_in = t.expand(x_in.shape[0])
                if self.step_cache is not None:
                    out = self.step_cache(denoiser, x_in, t_in, m_in, i)
                else:
                    out = denoiser(x_in, t_in, m_in)
                if use_uncond:
                    v_cond, v_uncond = out.chunk(2)
                    v = guide.combine(v_cond, v_uncond, i, len(ts))
                else:
                    v = out
                z = self.scheduler.step(v, t, z).prev_sample
                # conditioning frames back to their clean value (official where(x_mask, z, x0))
                z = torch.where(gen_mask[:, None, :, None, None], z, x0)
                if callback is not None:
                    callback(i, t, z)
                bar.update()
        return z

    def decode(
        self, latents: torch.Tensor, num_frames: int, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Latents -> video [B, 3, N, H', W'] in [-1, 1] (float32).

        With a first-frame ``reference`` [B, 3, H, W], only latent frames 1.. are decoded
        (N - 1 frames) and the reference pixel frame is prepended, as the official code does.
        """
        with self._on_device(self.vae), torch.no_grad():
            if reference is None:
                return self.vae.decode(latents.to(self.vae.dtype), num_frames=num_frames).float()
            rest = self.vae.decode(latents[:, :, 1:].to(self.vae.dtype), num_frames=num_frames - 1)
        rest = rest.float()
        h, w = rest.shape[-2:]
        ref = reference.to(rest.device, rest.dtype)
        if ref.shape[-2:] != (h, w):
            # Official odd sizes (1110 / 1108 px) decode to 1104: centre-crop the reference.
            top, left = (ref.shape[-2] - h) // 2, (ref.shape[-1] - w) // 2
            ref = ref[..., top : top + h, left : left + w]
        return torch.cat([ref[:, :, None], rest], dim=2)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        image: ImageInput | None = None,
        images: Mapping[int, ImageInput] | None = None,
        negative_prompt: str | Sequence[str] | None = OFFICIAL_NEGATIVE_PROMPT,
        negative_embedding: torch.Tensor | None = None,
        aspect: str = "16:9",
        resolution: str = "720p",
        duration: str | int = "5s",
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        guidance: Guidance | float | None = 4.0,
        seed: int | None = 42,
        generator: torch.Generator | None = None,
        fps: float = OFFICIAL_MODEL_FPS,
        aes_score: float | None = OFFICIAL_AES_SCORE,
        cond_latents: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
        output_type: OutputType = "mp4",
        output_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        progress: bool = True,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> GenerationOutput:
        """Generate B clips, one per prompt.

        Args:
            prompt: one prompt or a list (B).
            image: reference image for the first frame (I2V / TI2V), shared by all prompts.
            images: latent frame index -> image for any set of conditioning frames (e.g.
                {0: first, -1: last}); each is encoded alone like the reference image.
            negative_prompt: the CFG branch text (official fixed string; None = no CFG).
            negative_embedding: the CFG branch as text features [S_null, E] instead of a
                text: the null caption a model was trained against with caption dropout
                (``load_null_text``). Its first S rows are used with each prompt's own
                mask (caption dropout keeps caption lengths); ``negative_prompt`` is then
                ignored.
            aspect, resolution: official size table ("H:W" keys, "16:9" is 1280 x 720
                portrait); ``height``/``width`` override it.
            duration: "5s" (105 frames), "3s" (73) or a frame count.
            steps: sampler steps (default: the sampler's, 25).
            guidance: CFG scale (official 4.0) or a Guidance (e.g. ``CFGZeroStar``).
            seed / generator: randomness (see the module docstring); ``generator`` wins.
            fps: fps fed to the model (official 30); files are written at this fps unless
                ``quirks.write_official_fps`` (20).
            aes_score: the official prompt suffix ("aesthetic score: 6.0."); None drops it.
            cond_latents, cond_mask: clean latents [B, C, T, h, w] and mask [B, T] (True =
                condition) for latent-space conditioning, e.g. ``extension_conditioning``.
            output_type: "latent", "pt", "np", "pil" or "mp4".
            output_path: MP4 path (B = 1), a list of B paths, or a folder.
        """
        from mugv_infer._checks import check_call_arguments

        check_call_arguments(locals())  # every argument, before any work (issue 14)
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {_OUTPUT_TYPES}, got {output_type!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError("prompt must be a non-empty string or a list of them")
        if image is not None and images is not None:
            raise ValueError("give image= (first frame) or images= (any frames), not both")
        if image is not None:
            images = {0: image}
        if images and (cond_latents is not None or cond_mask is not None):
            raise ValueError(
                "give conditioning images (image= / images=) or latents (cond_latents= / "
                "cond_mask=), not both"
            )
        B = len(prompts)
        quirks = self.quirks
        if (height is None) != (width is None):
            raise ValueError("give both height and width, or neither (then aspect= is used)")
        if height is None:
            height, width = resolve_size(aspect, resolution, odd_sizes=quirks.odd_sizes)
        num_frames = resolve_num_frames(duration)
        C, T, h, w = self.vae.latent_shape(num_frames, height, width)
        device = self._execution_device
        if generator is None:
            generator = torch.Generator("cpu")
            # No seed: a fresh one from the OS, without touching torch's global RNG.
            generator.manual_seed(
                seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            )
        timings: dict[str, float] = {}
        guide = as_guidance(guidance)
        use_cfg = guide.needs_uncond()
        if use_cfg and negative_prompt is None and negative_embedding is None:
            raise ValueError(
                "guidance needs a negative_prompt or a negative_embedding (or pass guidance=None)"
            )
        if negative_embedding is not None:
            _check_negative_embedding(negative_embedding, self.dit)

        try:
            # 1. text: [prompts, negatives] in one batch
            t0 = time.perf_counter()
            if use_cfg and negative_embedding is not None:
                emb, mask = self.encode_prompt(prompts, None, aes_score=aes_score)
                emb, mask = _with_null_branch(emb, mask, negative_embedding)
            else:
                emb, mask = self.encode_prompt(
                    prompts, negative_prompt if use_cfg else None, aes_score=aes_score
                )
            timings["text"] = time.perf_counter() - t0

            # 2. conditioning frames: reference latents drawn first from the generator
            t0 = time.perf_counter()
            reference = None
            if images:
                frames = {}
                for index, img in images.items():
                    latent, pixels = self.encode_reference(img, height, width, generator)
                    frames[index] = latent.expand(B, -1, -1, -1, -1)
                    if index == 0:
                        reference = pixels[None].expand(B, -1, -1, -1)
                cond_latents, cond_mask = frame_conditioning(
                    (B, C, T, h, w), frames, device=device, dtype=torch.float32
                )
            timings["reference"] = time.perf_counter() - t0

            # 3. noise, conditioning frames in place of theirs
            t0 = time.perf_counter()
            latents, gen_mask = self.prepare_latents(
                (B, C, T, h, w), generator, device, cond_latents, cond_mask
            )

            # 4. the denoising loop (scheduler steps, CFG, clean frames reset)
            self.scheduler.set_timesteps(
                steps, device=device, height=height, width=width, latent_frames=T,
                bf16_ratio=quirks.bf16_shift_ratio,
            )  # fmt: skip
            denoiser = self._denoiser(emb, mask, fps, B)
            with self._on_device(self.dit):
                latents = self._denoise(
                    denoiser, latents, gen_mask, guide, callback=callback, progress=progress
                )
            timings["sampling"] = time.perf_counter() - t0
            out = GenerationOutput(
                latents=latents,
                videos=latents,
                fps=fps,
                write_fps=OFFICIAL_WRITE_FPS if quirks.write_official_fps else fps,
                timings=timings,
            )
            if output_type == "latent":
                self.maybe_free_model_hooks()
                return out

            # 5. decode (reference frame prepended for first-frame conditioning)
            t0 = time.perf_counter()
            first_only = images is not None and set(_positions(images, T)) == {0}
            video = self.decode(latents, num_frames, reference if first_only else None)
            timings["decode"] = time.perf_counter() - t0
            self.maybe_free_model_hooks()
        except torch.OutOfMemoryError as exc:
            raise torch.OutOfMemoryError(
                f"out of device memory generating {B} x {num_frames} frames at {height} x "
                f"{width}: {exc}. Try pipe.enable_block_offload() (10b fits 24 GB), "
                "pipe.enable_model_offload(), pipe.enable_vae_tiling(), fewer prompts per "
                "call, or a shorter duration"
            ) from exc

        # 6. outputs
        t0 = time.perf_counter()
        if output_type == "pt":
            out.videos = video
        elif output_type == "np":
            out.videos = np.stack([to_uint8_frames(v) for v in video])
        elif output_type == "pil":
            from PIL import Image

            out.videos = [[Image.fromarray(f) for f in to_uint8_frames(v)] for v in video]
        else:
            paths = _output_paths(output_path, B)
            out.paths = [
                write_mp4(to_uint8_frames(v), p, fps=out.write_fps)
                for v, p in zip(video, paths, strict=True)
            ]
            out.videos = out.paths
        timings["write"] = time.perf_counter() - t0
        return out

    def extend(
        self,
        prompt: str | Sequence[str],
        video: torch.Tensor | str | os.PathLike[str],
        *,
        context_frames: int = 1,
        num_new_frames: int = 64,
        **kwargs: Any,
    ) -> GenerationOutput:
        """Video extension: continue ``video`` from its last frames.

        The last ``8 * context_frames`` pixel frames of ``video`` (an MP4 path, or a float
        tensor [B, 3, N, H, W] in [-1, 1]) are encoded (posterior mean) into
        ``context_frames`` clean latent frames that open a new clip of ``context_frames +
        num_new_frames / 8`` latent frames; the rest is generated. The returned clip starts
        with the (re-decoded) context frames, so its first ``8 * context_frames`` frames
        overlap the end of ``video``. ``kwargs`` go to ``__call__`` (steps, guidance,
        seed, output_type, ...); the size is the input's.
        """
        from mugv_infer._media import read_mp4
        from mugv_infer.sampling import extension_conditioning

        if isinstance(video, str | os.PathLike):
            frames = torch.from_numpy(read_mp4(video).frames).permute(3, 0, 1, 2)
            video = (frames.float() / 127.5 - 1)[None]
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, N, H, W], got {tuple(video.shape)}")
        need = 8 * context_frames
        if context_frames < 1 or video.shape[2] < need:
            raise ValueError(
                f"context_frames={context_frames} needs the last {need} frames, the video has "
                f"{video.shape[2]}"
            )
        if num_new_frames < 8 or num_new_frames % 8:
            raise ValueError(
                f"num_new_frames must be a positive multiple of 8, got {num_new_frames}"
            )
        height, width = video.shape[-2:]
        with torch.no_grad(), self._on_device(self.vae):
            context = self.vae.encode(
                video[:, :, -need:].to(self._execution_device, self.vae.dtype)
            )
        cond, mask = extension_conditioning(context.float(), context_frames, num_new_frames // 8)
        if isinstance(prompt, str):
            prompt = [prompt] * cond.shape[0]
        total = 8 * (context_frames + num_new_frames // 8)
        return self(
            prompt, cond_latents=cond, cond_mask=mask, height=height, width=width,
            duration=total, **kwargs,
        )  # fmt: skip

    def enhance(
        self, output: Any, prompt: str | Sequence[str] | None = None, *, enhancer: Any = None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        """Sharpen generated clips in one step with the MUG-V enhancer (``MUGVEnhancer``).

        ``output``: a ``GenerationOutput`` ("pt", "np" or "mp4") or any video the enhancer
        takes; ``prompt`` defaults to the official enhancer prompt. ``enhancer`` defaults to
        ``MUGVEnhancer.from_pretrained(device=self.device)``, kept as ``self.enhancer``;
        ``kwargs`` go to its ``__call__`` (seed, output_type, output_path, ...).
        """
        from mugv_infer.enhance import ENHANCE_PROMPT, MUGVEnhancer

        if enhancer is None:
            enhancer = getattr(self, "enhancer", None)
            enhancer = enhancer or MUGVEnhancer.from_pretrained(device=self.device)
        self.enhancer = enhancer
        return enhancer(output, ENHANCE_PROMPT if prompt is None else prompt, **kwargs)


# ---------------------------------------------------------------------- helpers


def _positions(images: Mapping[int, Any], frames: int) -> list[int]:
    return [i + frames if i < 0 else i for i in images]


def _module_device(module: torch.nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _text_module(encoder: Any) -> torch.nn.Module | None:
    """The nn.Module holding a text encoder's weights (``TextEncoder.model`` or the encoder
    itself); None for a weightless callable (e.g. precomputed embeddings), never offloaded."""
    model = getattr(encoder, "model", encoder)
    return model if isinstance(model, torch.nn.Module) else None


def _output_paths(
    output_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None, count: int
) -> list[Path]:
    if output_path is None:
        raise ValueError('output_type="mp4" needs output_path (a file, a folder or a list)')
    if isinstance(output_path, str | os.PathLike):
        path = Path(output_path)
        if path.suffix.lower() == ".mp4":
            if count != 1:
                raise ValueError(
                    f"{count} prompts but one output file {str(path)!r}: pass a folder or a "
                    "list of paths"
                )
            return [path]
        return [path / f"sample_{i:04d}.mp4" for i in range(count)]
    paths = [Path(p) for p in output_path]
    if len(paths) != count:
        raise ValueError(f"{len(paths)} output paths for {count} prompts")
    return paths


def _resolve_weights(
    repo_or_dir: str | os.PathLike[str],
    *,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    token: str | None,
    local_files_only: bool,
) -> dict[str, Any]:
    """Locate dit/vae weights: {"format": "official" | "ours", "dit": path, "vae": path}."""
    path = Path(repo_or_dir)
    if path.is_dir():
        if (path / _MODEL_INDEX).is_file():
            return {"format": "diffusers", "root": path}
        if (path / "dit.pt").is_file() and (path / "vae.pt").is_file():
            return {"format": "official", "dit": path / "dit.pt", "vae": path / "vae.pt"}
        if (path / "dit" / "config.json").is_file() and (path / "vae").is_dir():
            return {"format": "ours", "dit": path / "dit", "vae": path / "vae"}
        raise FileNotFoundError(
            f"{str(path)!r} has neither dit.pt + vae.pt (the official MUG-V-inference layout) "
            "nor dit/ + vae/ folders (MUGVPipeline.save_pretrained); download the weights "
            f"with `huggingface-cli download {OFFICIAL_REPO} --local-dir {path}`"
        )
    repo = str(repo_or_dir)
    if repo.count("/") != 1 or repo.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"{repo!r} is neither a local folder nor a Hub repo id like {OFFICIAL_REPO!r}"
        )
    from mugv_dit import HubAccess

    hub = HubAccess.check(local_files_only)  # offline / reachable, decided once (issue 19)
    kwargs = {"revision": revision, "cache_dir": cache_dir, "token": token}
    dit = hub.download(repo, "dit.pt", missing_ok=True, **kwargs)
    if dit is not None:
        vae = hub.download(repo, "vae.pt", **kwargs)
        return {"format": "official", "dit": Path(dit), "vae": Path(vae)}  # type: ignore[arg-type]
    if hub.download(repo, _MODEL_INDEX, missing_ok=True, **kwargs) is not None:
        return {"format": "diffusers", "root": repo, "local_files_only": hub.cache_only}
    from huggingface_hub import snapshot_download

    try:
        root = Path(
            snapshot_download(
                repo, allow_patterns=["dit/*", "vae/*", _PIPELINE_CONFIG],
                local_files_only=hub.cache_only, **kwargs,
            )
        )  # fmt: skip
    except Exception as exc:
        if hub.cache_only:
            err = hub.error(repo, "dit.pt", exc, cache_dir)
            raise type(err)(f"no MUG-V weights found for {repo}: {err}") from None
        raise hub.error(repo, None, exc, cache_dir) from None
    if not (root / "dit" / "config.json").is_file():
        raise FileNotFoundError(
            f"Hub repo {repo!r} has neither dit.pt + vae.pt, model_index.json nor dit/ + vae/ "
            "folders"
        )
    return {"format": "ours", "dit": root / "dit", "vae": root / "vae"}


def _load_text_encoder(
    name: str | os.PathLike[str],
    dtype: torch.dtype,
    device: torch.device,
    local_files_only: bool,
    revision: str | None,
) -> Any:
    import mugv_dit

    try:
        return mugv_dit.TextEncoder(
            name, dtype=dtype, device=device, local_files_only=local_files_only, revision=revision
        )
    except OSError as exc:
        if not Path(name).exists():  # a Hub id: TextEncoder's one line says which failure
            raise type(exc)(f"cannot load the text encoder: {exc}") from None
        raise FileNotFoundError(
            f"cannot load the text encoder {str(name)!r} ({exc}). Download it once with "
            f"network access (`huggingface-cli download {name}`), pass a local folder, or "
            "pass text_encoder= a loaded encoder"
        ) from exc


#: File a trained model folder carries its caption-dropout null embedding in (key
#: ``null_text``); mugv-train writes it into its exports when caption dropout is on.
NULL_TEXT_FILE = "null_text.safetensors"


def load_null_text(folder: str | os.PathLike[str]) -> torch.Tensor:
    """The null caption [S_null, E] a model folder carries (``NULL_TEXT_FILE``): the
    ``negative_embedding`` for classifier-free guidance of a model trained with caption
    dropout (its unconditional branch saw exactly this text)."""
    from safetensors.torch import load_file

    path = Path(folder) / NULL_TEXT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the model was exported without a null caption (trained "
            "without caption dropout?). Use a negative_prompt for guidance, or guidance=None"
        )
    tensors = load_file(str(path))
    if "null_text" not in tensors:
        raise ValueError(f"{path} has no 'null_text' tensor (keys: {sorted(tensors)})")
    return tensors["null_text"]


def _check_negative_embedding(null: torch.Tensor, dit: torch.nn.Module) -> None:
    text_dim = getattr(getattr(dit, "config", None), "text_dim", None)
    if null.ndim != 2 or (text_dim is not None and null.shape[-1] != text_dim):
        raise ValueError(
            f"negative_embedding must be [tokens, {text_dim}] (the null caption of "
            f"load_null_text), got {tuple(null.shape)}"
        )


def _with_null_branch(
    emb: torch.Tensor, mask: torch.Tensor, null: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[prompts, null] text: the null caption's first S rows under each prompt's mask."""
    b, s, _ = emb.shape
    if null.shape[0] < s:
        raise ValueError(
            f"negative_embedding has {null.shape[0]} tokens, fewer than the {s} the text "
            "encoder gives; train with DataConfig.null_text_tokens >= the text length"
        )
    uncond = null[:s].to(emb)[None].expand(b, -1, -1)
    return torch.cat([emb, uncond]), torch.cat([mask, mask])


def _dtype_keyword() -> str:
    """diffusers renamed ``from_pretrained(torch_dtype=)`` to ``dtype=`` (the old name warns)."""
    try:  # the helper that came with the rename
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _register_with_diffusers() -> None:
    """``DiffusionPipeline.from_pretrained(folder)`` looks the ``model_index.json`` class name
    up in the ``diffusers`` namespace (it has no registry for out-of-tree pipelines); make
    ``MUGVPipeline`` findable there once ``mugv_infer`` is imported."""
    import diffusers

    if getattr(diffusers, MUGVPipeline.__name__, None) is not MUGVPipeline:
        setattr(diffusers, MUGVPipeline.__name__, MUGVPipeline)


_register_with_diffusers()
