"""Rectified-flow Euler sampling with the MUG-V timestep shift, guidance and frame conditioning.

Dimension legend: B batch, C latent channels (24), T latent frames, H/W latent height/width.

Conventions (architecture reference §D.1-D.3):
- x_t = (1 - s) x0 + s eps with s = t / 1000, t in [0, 1000]; t = 1000 is pure noise.
- The model predicts the velocity v = x0 - eps (noise -> data), so one Euler step is
  z <- z + v (t_i - t_{i+1}) / 1000, and the last step uses dt = t_last / 1000.
- Timestep shift: s' = r s / (1 + (r - 1) s), r = sqrt(H W / 512^2) sqrt(T_lat) (pixel H, W;
  latent T). The official code computes r from bf16 tensors (7.0 instead of 7.016 at 720p 5 s,
  §H.5); ``bf16_ratio`` keeps that quirk.
- Conditioning frames (I2V, extension, any set of frames) hold clean latents; they are fed with
  ``x_mask`` False (the DiT modulates them with t = 0) and reset to their clean value after
  every step.

`MUGVFlowScheduler` is the same sampler as a diffusers scheduler (``set_timesteps`` /
``step``), the one `MUGVPipeline` runs. The sampler is model-agnostic (diffusers' scheduler / model split): it calls a *denoiser*
``denoiser(x [N, C, T, H, W], timestep [N], x_mask [N, T]) -> velocity [N, C, T, H, W]``.
With guidance, N = 2B: the conditional half first, then the unconditional half, in one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config

if TYPE_CHECKING:
    from mugv_infer._cache import StepCache

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]

_BASE_RESOLUTION = 512 * 512


# ---------------------------------------------------------------------------------- guidance


class Guidance(Protocol):
    """Combines the conditional and unconditional velocities of one step."""

    def needs_uncond(self) -> bool: ...

    def combine(
        self, v_cond: torch.Tensor, v_uncond: torch.Tensor, step: int, num_steps: int
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """v = v_uncond + scale (v_cond - v_uncond), the official guidance (scale 4.0, §D.3)."""

    scale: float = 4.0

    def needs_uncond(self) -> bool:
        return self.scale != 1.0

    def combine(
        self, v_cond: torch.Tensor, v_uncond: torch.Tensor, step: int, num_steps: int
    ) -> torch.Tensor:
        return v_uncond + self.scale * (v_cond - v_uncond)


@dataclass(frozen=True)
class CFGZeroStar:
    """CFG-Zero* (Fan et al. 2025): optimised unconditional scale plus zero-init.

    s* = <v_cond, v_uncond> / ||v_uncond||^2 per sample; v = s* v_uncond + scale (v_cond -
    s* v_uncond). The first ``zero_init_steps`` steps return a zero velocity (the paper's
    "zero-init": early flow estimates are worse than doing nothing).
    """

    scale: float = 4.0
    zero_init_steps: int = 0

    def needs_uncond(self) -> bool:
        return True

    def combine(
        self, v_cond: torch.Tensor, v_uncond: torch.Tensor, step: int, num_steps: int
    ) -> torch.Tensor:
        if step < self.zero_init_steps:
            return torch.zeros_like(v_cond)
        c = v_cond.flatten(1).float()
        u = v_uncond.flatten(1).float()
        s_star = (c * u).sum(1) / (u * u).sum(1).clamp_min(1e-8)
        s_star = s_star.view(-1, *([1] * (v_cond.dim() - 1))).to(v_cond.dtype)
        return s_star * v_uncond + self.scale * (v_cond - s_star * v_uncond)


def as_guidance(guidance: Guidance | float | None) -> Guidance:
    """A float means classifier-free guidance with that scale; None means no guidance."""
    if guidance is None:
        return ClassifierFreeGuidance(1.0)
    if isinstance(guidance, int | float):
        return ClassifierFreeGuidance(float(guidance))
    return guidance


# ---------------------------------------------------------------------------------- sampler


@dataclass(frozen=True)
class FlowEulerSampler:
    """Euler sampler of the official ``RFlow.sample`` (reference §D.2-D.3)."""

    num_steps: int = 25
    """Sampling steps (official: 25)."""
    num_timesteps: int = 1000
    """The training time scale: timesteps run from ``num_timesteps`` (noise) to 0."""
    shift: bool = True
    """Apply the resolution/length dependent timestep shift (official: on)."""
    shift_scale: float = 1.0
    """Extra factor on the shift ratio (official: 1.0)."""
    bf16_ratio: bool = True
    """Compute the shift ratio in bf16 like the official code (§H.5)."""

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {self.num_timesteps}")
        if self.shift_scale <= 0:
            raise ValueError(f"shift_scale must be > 0, got {self.shift_scale}")

    def _ratio(self, height: int, width: int, latent_frames: int) -> torch.Tensor:
        dtype = torch.bfloat16 if self.bf16_ratio else torch.float64
        h = torch.tensor([float(height)], dtype=dtype)
        w = torch.tensor([float(width)], dtype=dtype)
        t = torch.tensor([float(latent_frames)], dtype=dtype)
        # Same op order as the official timestep_transform, each op rounded in ``dtype``.
        ratio_space = (h * w / _BASE_RESOLUTION).sqrt()
        ratio_time = (t / 1).sqrt() if latent_frames != 1 else torch.ones_like(t)
        return ratio_space * ratio_time * self.shift_scale

    def shift_ratio(self, height: int, width: int, latent_frames: int) -> float:
        """r = sqrt(H W / 512^2) sqrt(T_lat) scale; H, W pixels, T_lat latent frames."""
        return float(self._ratio(height, width, latent_frames).item())

    def timesteps(self, height: int, width: int, latent_frames: int) -> torch.Tensor:
        """The ``num_steps`` timesteps [num_steps] float32, 0-1000 scale, first = 1000."""
        n, scale = self.num_steps, float(self.num_timesteps)
        base = torch.tensor([(1.0 - i / n) * scale for i in range(n)], dtype=torch.float32)
        if not self.shift:
            return base
        ratio = self._ratio(height, width, latent_frames)
        if not self.bf16_ratio:
            ratio = ratio.float()
        s = base / scale
        # The official code mixes a bf16 ratio with float32 timesteps: ``ratio - 1`` is
        # rounded in bf16 (exact for ratio >= 1), products promote to float32.
        return (ratio * s / (1 + (ratio - 1) * s) * scale).float()

    def step(
        self, z: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor | None
    ) -> torch.Tensor:
        """One Euler step from ``t`` to ``t_next`` (None: the last step, to 0)."""
        dt = (t - t_next if t_next is not None else t) / self.num_timesteps
        return z + velocity * dt

    def sample(
        self,
        denoiser: Denoiser,
        noise: torch.Tensor,
        *,
        height: int,
        width: int,
        guidance: Guidance | float | None = 4.0,
        cond_latents: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
        step_cache: StepCache | None = None,
        callback: StepCallback | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Integrate from noise to data.

        Args:
            denoiser: ``(x [N, C, T, H, W], timestep [N], x_mask [N, T]) -> velocity``.
            noise: [B, C, T, H, W] initial noise (its dtype is the state's starting dtype;
                the state becomes float32 after the first update, like the official code).
            height, width: pixel size used by the timestep shift.
            guidance: a ``Guidance``, a CFG scale, or None. With guidance, the denoiser gets
                one batch of 2B: conditional first, then unconditional.
            cond_latents: [B, C, T, H, W] clean latents of the conditioning frames (other
                frames are ignored).
            cond_mask: [B, T] bool, True for conditioning (clean) frames.
            step_cache: optional step cache (reuses model outputs between close steps).
            callback: called as ``callback(step, timestep, z)`` after every step.
            progress: show a progress bar.

        Returns:
            [B, C, T, H, W] final latents (float32 after at least one step).
        """
        if noise.dim() != 5:
            raise ValueError(f"noise must be [B, C, T, H, W], got shape {tuple(noise.shape)}")
        b, _, frames = noise.shape[:3]
        guide = as_guidance(guidance)
        z = noise
        gen_mask = torch.ones(b, frames, dtype=torch.bool, device=noise.device)
        if cond_mask is not None or cond_latents is not None:
            if cond_mask is None or cond_latents is None:
                raise ValueError("cond_latents and cond_mask must be given together")
            if cond_mask.shape != (b, frames):
                raise ValueError(
                    f"cond_mask must be [B, T] = {(b, frames)}, got {tuple(cond_mask.shape)}"
                )
            if cond_latents.shape != noise.shape:
                raise ValueError(
                    f"cond_latents must have the noise shape {tuple(noise.shape)}, "
                    f"got {tuple(cond_latents.shape)}"
                )
            if bool(cond_mask.all()):
                raise ValueError("every frame is a conditioning frame: nothing to generate")
            cond_mask = cond_mask.to(device=noise.device, dtype=torch.bool)
            gen_mask = ~cond_mask
            keep = cond_mask[:, None, :, None, None]
            z = torch.where(keep, cond_latents.to(device=noise.device, dtype=noise.dtype), z)

        ts = self.timesteps(height, width, frames).to(noise.device)
        if step_cache is not None:
            step_cache.reset(len(ts))
        use_uncond = guide.needs_uncond()
        steps = range(len(ts))
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="sampling", unit="step")
        for i in steps:
            t = ts[i]
            x0 = z
            x_in = torch.cat([z, z]) if use_uncond else z
            m_in = torch.cat([gen_mask, gen_mask]) if use_uncond else gen_mask
            t_in = t.expand(x_in.shape[0])
            if step_cache is not None:
                out = step_cache(denoiser, x_in, t_in, m_in, i)
            else:
                out = denoiser(x_in, t_in, m_in)
            if use_uncond:
                v_cond, v_uncond = out.chunk(2)
                v = guide.combine(v_cond, v_uncond, i, len(ts))
            else:
                v = out
            z = self.step(z, v, t, ts[i + 1] if i + 1 < len(ts) else None)
            # Conditioning frames go back to their clean value (official: where(x_mask, z, x0)).
            z = torch.where(gen_mask[:, None, :, None, None], z, x0)
            if callback is not None:
                callback(i, t, z)
        return z


# ---------------------------------------------------------------------- frame conditioning


def frame_conditioning(
    latent_shape: tuple[int, int, int, int, int],
    frames: Mapping[int, torch.Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning tensors from clean latent frames at any positions.

    Args:
        latent_shape: (B, C, T, H, W) of the clip to generate.
        frames: latent frame index (negative counts from the end) -> clean latent
            [B, C, H, W] or [B, C, 1, H, W] (or [C, H, W], broadcast over the batch).

    Returns:
        cond_latents [B, C, T, H, W] (zeros where not conditioned) and cond_mask [B, T] bool.
    """
    b, c, t, h, w = latent_shape
    cond = torch.zeros(latent_shape, device=device, dtype=dtype)
    mask = torch.zeros(b, t, dtype=torch.bool, device=device)
    for index, latent in frames.items():
        pos = index + t if index < 0 else index
        if not 0 <= pos < t:
            raise ValueError(f"conditioning frame index {index} is outside 0..{t - 1}")
        if latent.dim() == 5:
            if latent.shape[2] != 1:
                raise ValueError(
                    f"a conditioning frame must hold one latent frame, got {tuple(latent.shape)}"
                )
            latent = latent[:, :, 0]
        if latent.dim() == 3:
            latent = latent.unsqueeze(0).expand(b, -1, -1, -1)
        if latent.shape != (b, c, h, w):
            raise ValueError(
                f"conditioning frame {index} must be [B, C, H, W] = {(b, c, h, w)}, "
                f"got {tuple(latent.shape)}"
            )
        cond[:, :, pos] = latent.to(device=cond.device, dtype=dtype)
        mask[:, pos] = True
    return cond, mask


def extension_conditioning(
    clip_latents: torch.Tensor, context_frames: int, new_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning for video extension: the last ``context_frames`` latent frames of a clip
    become the first frames of a new clip of ``context_frames + new_frames`` latent frames.

    Args:
        clip_latents: [B, C, T, H, W] normalised latents of the clip to extend.

    Returns:
        cond_latents [B, C, context + new, H, W] and cond_mask [B, context + new] bool.
    """
    if clip_latents.dim() != 5:
        raise ValueError(f"clip_latents must be [B, C, T, H, W], got {tuple(clip_latents.shape)}")
    b, c, t, h, w = clip_latents.shape
    if not 1 <= context_frames <= t:
        raise ValueError(f"context_frames must be in 1..{t} (the clip's latent frames)")
    if new_frames < 1:
        raise ValueError(f"new_frames must be >= 1, got {new_frames}")
    context = clip_latents[:, :, t - context_frames :]
    frames = {i: context[:, :, i] for i in range(context_frames)}
    return frame_conditioning(
        (b, c, context_frames + new_frames, h, w),
        frames,
        device=clip_latents.device,
        dtype=clip_latents.dtype,
    )


def initial_noise(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal noise drawn in ``dtype`` on the generator's device, then moved.

    Drawing on the generator's device keeps a seed reproducible whatever ``device`` is.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(shape, generator=generator, dtype=dtype, device=gen_device)
    return noise.to(device) if device is not None else noise


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB between two tensors of the same shape."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    if mse == 0:
        return math.inf
    return 10 * math.log10(data_range**2 / mse)


# ------------------------------------------------------------------- diffusers scheduler


@dataclass
class MUGVSchedulerOutput:
    """What `MUGVFlowScheduler.step` returns (diffusers' ``SchedulerOutput`` shape)."""

    prev_sample: torch.Tensor
    """[B, C, T, H, W] the state after the step."""


class MUGVFlowScheduler(SchedulerMixin, ConfigMixin):
    """The official rectified-flow Euler sampler as a diffusers scheduler.

    ``set_timesteps(num_inference_steps, device, height=, width=, latent_frames=)`` sets
    ``timesteps`` (float32, 0-1000 scale, first = 1000, shifted as in §D.2 with the bf16
    ratio quirk of §H.5); ``step(velocity, t, sample)`` is one Euler step z + v (t - t_next)
    / 1000, the last one to 0. Numerically identical to `FlowEulerSampler`.
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: bool = True,
        shift_scale: float = 1.0,
        bf16_ratio: bool = True,
        num_inference_steps: int = 25,
    ) -> None:
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        if shift_scale <= 0:
            raise ValueError(f"shift_scale must be > 0, got {shift_scale}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        self.timesteps = torch.empty(0)
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None

    @classmethod
    def from_sampler(cls, sampler: FlowEulerSampler) -> MUGVFlowScheduler:
        """The scheduler with a `FlowEulerSampler`'s settings."""
        return cls(
            num_train_timesteps=sampler.num_timesteps,
            shift=sampler.shift,
            shift_scale=sampler.shift_scale,
            bf16_ratio=sampler.bf16_ratio,
            num_inference_steps=sampler.num_steps,
        )

    def to_sampler(self) -> FlowEulerSampler:
        c = self.config
        return FlowEulerSampler(
            num_steps=c.num_inference_steps,
            num_timesteps=c.num_train_timesteps,
            shift=c.shift,
            shift_scale=c.shift_scale,
            bf16_ratio=c.bf16_ratio,
        )

    @property
    def step_index(self) -> int | None:
        return self._step_index

    def shift_ratio(
        self, height: int, width: int, latent_frames: int, bf16_ratio: bool | None = None
    ) -> torch.Tensor:
        """r = sqrt(H W / 512^2) sqrt(T_lat) shift_scale, each op rounded in bf16 when
        ``bf16_ratio`` (the official ``timestep_transform`` op order, §H.5)."""
        bf16 = self.config.bf16_ratio if bf16_ratio is None else bf16_ratio
        dtype = torch.bfloat16 if bf16 else torch.float64
        h = torch.tensor([float(height)], dtype=dtype)
        w = torch.tensor([float(width)], dtype=dtype)
        t = torch.tensor([float(latent_frames)], dtype=dtype)
        space = (h * w / _BASE_RESOLUTION).sqrt()
        time = (t / 1).sqrt() if latent_frames != 1 else torch.ones_like(t)
        return space * time * self.config.shift_scale

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        *,
        height: int,
        width: int,
        latent_frames: int,
        bf16_ratio: bool | None = None,
    ) -> None:
        """``timesteps`` for a clip of ``height`` x ``width`` pixels and ``latent_frames``."""
        n = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        if n < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {n}")
        scale = float(self.config.num_train_timesteps)
        base = torch.tensor([(1.0 - i / n) * scale for i in range(n)], dtype=torch.float32)
        ts = base
        if self.config.shift:
            bf16 = self.config.bf16_ratio if bf16_ratio is None else bf16_ratio
            ratio = self.shift_ratio(height, width, latent_frames, bf16)
            if not bf16:
                ratio = ratio.float()
            s = base / scale
            # bf16 ratio times float32 timesteps: ``ratio - 1`` rounds in bf16 (exact for
            # ratio >= 1) and the products promote to float32, as in the official code.
            ts = (ratio * s / (1 + (ratio - 1) * s) * scale).float()
        self.timesteps = ts.to(device) if device is not None else ts
        self.num_inference_steps = n
        self._step_index = None

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def index_for_timestep(self, timestep: torch.Tensor | float) -> int:
        hits = (self.timesteps == torch.as_tensor(timestep, device=self.timesteps.device)).nonzero()
        if len(hits) == 0:
            raise ValueError(f"timestep {float(timestep)} is not one of the scheduler's timesteps")
        return int(hits[0])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | float,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> MUGVSchedulerOutput | tuple[torch.Tensor]:
        """One Euler step: sample + velocity (t - t_next) / num_train_timesteps."""
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps(...) before step(...)")
        if self._step_index is None:
            self._step_index = self.index_for_timestep(timestep)
        i = self._step_index
        t = self.timesteps[i]
        t_next = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else None
        dt = (t - t_next if t_next is not None else t) / self.config.num_train_timesteps
        prev = sample + model_output * dt
        self._step_index = i + 1
        if not return_dict:
            return (prev,)
        return MUGVSchedulerOutput(prev_sample=prev)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
