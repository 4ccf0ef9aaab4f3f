"""`VideoVAE`: the MUG-V 8x8x8 video VAE (state dict identical to the official ``vae.pt``).

Dimension legend: B batch, C channels (3 pixel, 512 trunk, 24 latent), N pixel frames,
T latent frames, H/W pixel height/width, h/w latent height/width (H // 8, W // 8).

Encode, per micro-chunk of frames (reference §B.4, paper §3.1.2):
  1. replicate frame 0 seven times when N = 1 (mod 8);
  2. 2D trunk per frame in micro-batches, times 0.18215 -> [B, 512, N, h, w] (the trunk
     is per frame, so frame 0 runs once and its features are replicated);
  3. zero-pad the chunk's front to a multiple of 8, split into 8-frame groups, each group
     its own batch item (minimal encoding) -> temporal encoder -> quant_conv -> moments;
  4. posterior mean (or a sample drawn with a CPU generator), then (z - shift) / scale.
Decode, per window of ``decode_window`` latents (§B.5; official 6, windows independent):
  1. z * scale + shift -> post_quant_conv -> temporal decoder -> [B, 512, 8T, h, w];
  2. drop the padded / replicated frames; 2D decoder per frame after dividing by 0.18215.
Tiling (optional, ``tile_latent_size``): ``tile_mode="exact"`` (default) runs every layer
tile by tile with global two-pass GroupNorm statistics (``_tiled``), equal to untiled output
up to float rounding; ``"blend"`` runs the whole pipeline per overlapping tile and blends
linearly (per-tile statistics). Either way peak compute-device memory depends on the tile
and the chunk, not on the frame size or the clip length.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mugv_vae import _checkpoint
from mugv_vae._encoding import (
    FramePlan,
    frame_plan,
    frames_for_latents,
    plan_tiles,
    tile_weight,
)
from mugv_vae._layers import SpatialVAE, TemporalVAE
from mugv_vae._tiled import TiledRunner
from mugv_vae.config import SPACE_FACTOR, TIME_FACTOR, VAEConfig

_checkpoint.require_diffusers(feature="VideoVAE")

from diffusers import ConfigMixin, ModelMixin  # noqa: E402  (after the version check)
from diffusers.utils.accelerate_utils import apply_forward_hook  # noqa: E402

#: Values this far outside [-1, 1] are rejected; anything closer is clamped silently.
RANGE_SLACK = 1e-3


_FIELDS = tuple(f.name for f in dataclasses.fields(VAEConfig))


def _as_config(config: VAEConfig | Mapping[str, Any] | None, fields: dict[str, Any]) -> VAEConfig:
    if isinstance(config, VAEConfig):
        return config.replace(**fields) if fields else config
    if isinstance(config, Mapping):  # diffusers' config dict
        data = {k: v for k, v in config.items() if not k.startswith("_")}
        return VAEConfig.from_dict({**data, **fields})
    if config is not None:
        raise TypeError(f"config must be a VAEConfig or a dict, got {type(config).__name__}")
    return VAEConfig.preset("mugv", **fields) if fields else VAEConfig.preset("mugv")


class VideoVAE(ModelMixin, ConfigMixin):
    """The video VAE. ``VideoVAE(VAEConfig.preset("mugv"))`` has the official topology.

    A diffusers model (``from_pretrained`` / ``save_pretrained`` / ``push_to_hub``, offload
    hooks). ``VideoVAE(config)`` takes a `VAEConfig` (or its fields as keywords, which is
    how diffusers' ``from_config`` builds it); ``model.config`` is that `VAEConfig`
    (settable, e.g. to switch tiling), and ``config.json`` holds its fields.
    """

    config_name = "config.json"
    _supports_group_offloading = True

    def __init__(self, config: VAEConfig | Mapping[str, Any] | None = None, **fields: Any) -> None:
        super().__init__()
        self.config = _as_config(config, fields)
        c = self._typed_config
        self.spatial_vae = SpatialVAE(c)
        self.temporal_vae = TemporalVAE(c)
        self.register_buffer("scale", torch.tensor(c.latent_scale).view(1, -1, 1, 1, 1))
        self.register_buffer("shift", torch.tensor(c.latent_shift).view(1, -1, 1, 1, 1))
        self.logvar = nn.Parameter(torch.tensor(c.logvar_init))

    # ------------------------------------------------------------------------------------
    # config (typed, with diffusers' dict behind it)
    # ------------------------------------------------------------------------------------
    @staticmethod
    def _get_init_keys(input_class: type) -> set[str]:
        # config.json keys are the VAEConfig fields, taken by __init__ as **fields.
        if isinstance(input_class, type) and issubclass(input_class, VideoVAE):
            return {"self", *_FIELDS}
        return ConfigMixin._get_init_keys(input_class)

    @property
    def config(self) -> VAEConfig:  # type: ignore[override]
        """The model's `VAEConfig` (settable: run-time fields such as tiling)."""
        if _checkpoint.raw_config_view():
            return self._internal_dict
        return self._typed_config

    @config.setter
    def config(self, value: VAEConfig) -> None:
        if not isinstance(value, VAEConfig):
            raise TypeError(f"config must be a VAEConfig, got {type(value).__name__}")
        self.register_to_config(**value.to_dict())
        self._typed_config = value

    # ------------------------------------------------------------------------------------
    # shapes and checks
    # ------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def dtype(self) -> torch.dtype:
        return self.logvar.dtype

    @property
    def device(self) -> torch.device:
        return self.logvar.device

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T, h, w) of the latents of an N x H x W clip (no batch dimension).

        T = 6 * (N' // 48) + ceil((N' % 48) / 8) with N' = N + 7 when N = 1 (mod 8);
        h, w = H // 8, W // 8 (floored like the official code: 1110 -> 138).
        """
        _check_size(height, width)
        t = frame_plan(num_frames, self.config.micro_frame_size).latent_frames
        return (self.latent_channels, t, height // SPACE_FACTOR, width // SPACE_FACTOR)

    def _check_video(self, video: torch.Tensor) -> torch.Tensor:
        if not isinstance(video, torch.Tensor):
            raise TypeError(f"video must be a torch.Tensor [B, 3, N, H, W], got {type(video)}")
        if video.ndim != 5:
            raise ValueError(
                f"video must be [B, 3, N, H, W], got shape {tuple(video.shape)}; "
                "add a batch dimension with video[None] or a frame dimension with x[:, :, None]"
            )
        if video.shape[1] != 3:
            raise ValueError(
                f"video must have 3 (RGB) channels on dim 1, got {video.shape[1]} in "
                f"{tuple(video.shape)}; frames-first tensors need video.permute(0, 2, 1, 3, 4)"
            )
        if not video.is_floating_point():
            raise TypeError(
                f"video must be a float tensor in [-1, 1], got {video.dtype}; "
                "convert uint8 frames with x.float() / 127.5 - 1"
            )
        _check_size(video.shape[-2], video.shape[-1])
        lo, hi = torch.aminmax(video.detach())
        lo, hi = float(lo), float(hi)
        if not (lo == lo and hi == hi) or lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK:
            raise ValueError(
                f"video values must lie in [-1, 1], got min {lo:.4g} max {hi:.4g}; "
                "map [0, 1] pixels with 2 * x - 1 and clamp overshoot with x.clamp(-1, 1)"
            )
        return video.clamp(-1, 1)

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be [B, {self.latent_channels}, T, h, w], got {tuple(latents.shape)}"
            )

    # ------------------------------------------------------------------------------------
    # building blocks (untiled)
    # ------------------------------------------------------------------------------------
    def _spatial_encode(
        self, frames: torch.Tensor, runner: TiledRunner | None = None, replicate: int = 0
    ) -> torch.Tensor:
        """[B, 3, N, H, W] -> [B, 512, replicate + N, h, w] times the scaling factor,
        micro-batched; ``replicate`` copies of frame 0's features in front (§B.4)."""
        b, _, n, hh, ww = frames.shape
        flat = frames.transpose(1, 2).reshape(b * n, 3, hh, ww)
        enc = self.spatial_vae.module.encoder
        outs = []
        for i in range(0, b * n, self.config.micro_batch_size):
            x = flat[i : i + self.config.micro_batch_size]
            if self.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = enc(x) if runner is None else runner.encoder2d(enc, x)
            outs.append(y * self.config.scaling_factor)
        feats = torch.cat(outs)
        feats = feats.reshape(b, n, *feats.shape[1:]).transpose(1, 2)
        if replicate:
            first = feats[:, :, :1].expand(-1, -1, replicate, -1, -1)
            feats = torch.cat([first, feats], dim=2)
        return feats

    def _spatial_decode(
        self, feats: torch.Tensor, runner: TiledRunner | None = None
    ) -> torch.Tensor:
        """[B, 512, N, h, w] (scaled) -> [B, 3, N, 8h, 8w], micro-batched."""
        b, c, n, h, w = feats.shape
        flat = feats.transpose(1, 2).reshape(b * n, c, h, w)
        dec = self.spatial_vae.module.decoder
        outs = []
        for i in range(0, b * n, self.config.micro_batch_size):
            x = flat[i : i + self.config.micro_batch_size] / self.config.scaling_factor
            if self.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            outs.append((dec(x) if runner is None else runner.decoder2d(dec, x)).contiguous())
        pix = torch.cat(outs)
        return pix.reshape(b, n, *pix.shape[1:]).transpose(1, 2)

    def _temporal_encode(
        self, feats: torch.Tensor, runner: TiledRunner | None = None
    ) -> torch.Tensor:
        """[B, 512, n, h, w] -> moments [B, 48, ceil(n/8), h, w]; each 8-frame group alone."""
        b, c, n, h, w = feats.shape
        pad = (-n) % TIME_FACTOR
        if pad:  # zero features at the chunk's front (§B.4)
            feats = torch.cat([feats.new_zeros(b, c, pad, h, w), feats], dim=2)
        g = (n + pad) // TIME_FACTOR
        groups = feats.reshape(b, c, g, TIME_FACTOR, h, w).transpose(1, 2)
        groups = groups.reshape(b * g, c, TIME_FACTOR, h, w)
        tv = self.temporal_vae
        if runner is None:
            moments = tv.quant_conv(tv.encoder(groups))
        else:
            moments = runner.conv(runner.temporal_encoder(tv.encoder, groups), tv.quant_conv)
        return moments.reshape(b, g, -1, h, w).transpose(1, 2)

    def _temporal_decode(self, z: torch.Tensor, runner: TiledRunner | None = None) -> torch.Tensor:
        """Un-normalised latents [B, 24, t, h, w] -> scaled trunk features [B, 512, 8t, h, w]."""
        tv = self.temporal_vae
        if runner is None:
            return tv.decoder(tv.post_quant_conv(z))
        return runner.temporal_decoder(tv.decoder, runner.conv(z, tv.post_quant_conv))

    def _encode_region(
        self, frames: torch.Tensor, runner: TiledRunner | None = None, replicate: int = 0
    ) -> torch.Tensor:
        """One micro-chunk (possibly one tile): pixels -> moments."""
        return self._temporal_encode(self._spatial_encode(frames, runner, replicate), runner)

    @staticmethod
    def _chunk_frames(
        video: torch.Tensor, plan: FramePlan, s: int, e: int
    ) -> tuple[torch.Tensor, int]:
        """Micro-chunk [s, e) of the replicated frame grid as (original frames, number of
        frame-0 replicas in front of them)."""
        r = plan.replicate
        return video[:, :, max(s - r, 0) : e - r], max(min(e, r) - s, 0)

    def _decode_region(
        self,
        z: torch.Tensor,
        keep: torch.Tensor | None,
        runner: TiledRunner | None = None,
    ) -> torch.Tensor:
        """One decode window (possibly one tile): un-normalised latents -> pixels."""
        feats = self._temporal_decode(z, runner)
        if keep is not None:
            feats = feats.index_select(2, keep.to(feats.device))
        return self._spatial_decode(feats, runner)

    def _tile_mode(self, h: int, w: int) -> str | None:
        """None (untiled: tiling off, or one tile covers the h x w latent frame), else the
        configured ``tile_mode``."""
        tile = self.config.tile_latent_size
        if tile is None or (h <= tile and w <= tile):
            return None
        return self.config.tile_mode

    def _runner(self, h: int, w: int) -> TiledRunner:
        c = self.config
        assert c.tile_latent_size is not None
        park = self.device if c.tile_park_device is None else torch.device(c.tile_park_device)
        # tile budget: the decoder's full-resolution tile (micro-batch x the second trunk
        # width x the tile in pixels), the largest one the scaled tile plan already holds
        edge = SPACE_FACTOR * c.tile_latent_size
        budget = c.micro_batch_size * c.block_out_channels[1] * edge * edge
        return TiledRunner(c.tile_latent_size, (h, w), self.device, park, budget)

    # ------------------------------------------------------------------------------------
    # tiling
    # ------------------------------------------------------------------------------------
    def _tiled(
        self,
        fn: Any,
        x: torch.Tensor,
        out_channels: int,
        out_frames: int,
        in_unit: int,
        out_unit: int,
        pixel_height: int,
        pixel_width: int,
    ) -> torch.Tensor:
        """Run ``fn`` on overlapping spatial tiles of ``x`` and blend the outputs linearly.

        Tiles are planned in latent units on a ``pixel_height`` x ``pixel_width`` frame;
        ``in_unit``/``out_unit`` are the pixels per input/output element (8 or 1).
        """
        c = self.config
        assert c.tile_latent_size is not None
        tiles = plan_tiles(pixel_height, pixel_width, c.tile_latent_size, c.tile_latent_overlap)
        oh = pixel_height // SPACE_FACTOR * (SPACE_FACTOR // out_unit)
        ow = pixel_width // SPACE_FACTOR * (SPACE_FACTOR // out_unit)
        b = x.shape[0]
        acc = torch.zeros(b, out_channels, out_frames, oh, ow, device=x.device, dtype=torch.float32)
        wsum = torch.zeros(oh, ow, device=x.device, dtype=torch.float32)
        ramp = c.tile_latent_overlap * (SPACE_FACTOR // out_unit)
        for t in tiles:
            if in_unit == 1:  # pixel input: use the tile's pixel extent
                xt = x[..., t.py0 : t.py1, t.px0 : t.px1]
            else:  # latent input
                xt = x[..., t.y0 : t.y1, t.x0 : t.x1]
            yt = fn(xt)
            s = SPACE_FACTOR // out_unit
            y0, x0 = t.y0 * s, t.x0 * s
            rows, cols = yt.shape[-2], yt.shape[-1]
            wt = tile_weight(t, rows, cols, ramp, device=x.device, dtype=torch.float32)
            acc[..., y0 : y0 + rows, x0 : x0 + cols] += yt.float() * wt
            wsum[y0 : y0 + rows, x0 : x0 + cols] += wt
        return (acc / wsum).to(x.dtype)

    # ------------------------------------------------------------------------------------
    # encode
    # ------------------------------------------------------------------------------------
    @apply_forward_hook
    def encode_moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logvar) of ``video`` [B, 3, N, H, W], each [B, 24, T, h, w].

        Un-normalised (before shift/scale); logvar clamped to [-30, 20]. Differentiable.
        """
        video = self._check_video(video).to(self.dtype)
        # N = 1 (mod 8): 7 extra copies of frame 0 in front (§B.4), as features (plan.replicate)
        plan = frame_plan(video.shape[2], self.config.micro_frame_size)
        hh, ww = video.shape[-2:]
        moments = []
        for s, e in plan.chunks:  # micro-chunks: groups never cross them (minimal encoding)
            chunk, rep = self._chunk_frames(video, plan, s, e)
            mode = self._tile_mode(hh // SPACE_FACTOR, ww // SPACE_FACTOR)
            if mode is None:
                moments.append(self._encode_region(chunk, replicate=rep))
            elif mode == "exact":
                runner = self._runner(hh // SPACE_FACTOR, ww // SPACE_FACTOR)
                moments.append(self._encode_region(chunk, runner, rep).to(video.device))
            else:
                moments.append(
                    self._tiled(
                        functools.partial(self._encode_region, replicate=rep),
                        chunk,
                        2 * self.latent_channels,
                        -(-(e - s) // TIME_FACTOR),
                        in_unit=1,
                        out_unit=SPACE_FACTOR,
                        pixel_height=hh,
                        pixel_width=ww,
                    )
                )
        mean, logvar = torch.cat(moments, dim=2).chunk(2, dim=1)
        return mean, logvar.clamp(*self.config.logvar_clamp)

    # ------------------------------------------------------------------------------------
    # the two stages on their own (training: trunk pre-training, feature matching)
    # ------------------------------------------------------------------------------------
    def trunk_features(self, video: torch.Tensor) -> torch.Tensor:
        """The 2D trunk's scaled features [B, C, 8T, h, w] of ``video`` [B, 3, N, H, W], on
        the frame grid the temporal encoder sees: frame 0 replicated for N = 1 (mod 8),
        zero features in front of a micro-chunk that is not a multiple of 8. So
        ``_temporal_encode`` of them gives :meth:`encode_moments`. Untiled."""
        video = self._check_video(video).to(self.dtype)
        plan = frame_plan(video.shape[2], self.config.micro_frame_size)
        feats = []
        for s, e in plan.chunks:
            chunk, rep = self._chunk_frames(video, plan, s, e)
            f = self._spatial_encode(chunk, replicate=rep)
            pad = (-(e - s)) % TIME_FACTOR
            if pad:
                f = torch.cat([f.new_zeros(*f.shape[:2], pad, *f.shape[3:]), f], dim=2)
            feats.append(f)
        return torch.cat(feats, dim=2)

    def decode_features(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled trunk features [B, C, 8T, h, w] from un-normalised latents
        [B, 24, T, h, w] (e.g. the posterior mean), each latent decoded alone (window 1):
        what the 2D decoder turns into :meth:`decode` ``(normalize(z), window=1)``."""
        self._check_latents(z)
        b, c, t, h, w = z.shape
        out = self._temporal_decode(z.transpose(1, 2).reshape(b * t, c, 1, h, w))
        out = out.reshape(b, t, out.shape[1], TIME_FACTOR, h, w).transpose(1, 2)
        return out.reshape(b, out.shape[1], TIME_FACTOR * t, h, w)

    def trunk_roundtrip(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [B, 3, N, H, W] through the 2D trunk alone (encoder, then decoder), no
        temporal stage: the image autoencoder the trunk is pre-trained as."""
        frames = self._check_video(frames).to(self.dtype)
        return self._spatial_decode(self._spatial_encode(frames))

    def sample_posterior(
        self,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """mean + std * eps, eps drawn on the CPU (with ``generator``) then moved (§B.3).

        ``mean``/``logvar``: [B, 24, T, h, w]. The noise is drawn per micro-chunk of
        ``micro_frame_size / 8`` latents (official: 6), in order, as the official encode does.
        """
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(
                f"generator must be a CPU torch.Generator (noise is drawn on the CPU like the "
                f"official code), got one on {generator.device}"
            )
        # one draw per micro-chunk of latents, in order, like the official per-chunk sampling
        step = self.config.micro_frame_size // TIME_FACTOR
        eps = torch.cat(
            [
                torch.randn(
                    (*mean.shape[:2], min(step, mean.shape[2] - s), *mean.shape[3:]),
                    generator=generator,
                    device="cpu",
                    dtype=torch.float32,
                )
                for s in range(0, mean.shape[2], step)
            ],
            dim=2,
        )
        return mean + torch.exp(0.5 * logvar) * eps.to(mean.device, mean.dtype)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """(z - shift) / scale: raw posterior latents -> the DiT's latents."""
        # .to(z): offload hooks may leave these root buffers on the offload device
        return (z - self.shift.to(z)) / self.scale.to(z)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        return latents * self.scale.to(latents) + self.shift.to(latents)

    @apply_forward_hook
    def encode(
        self,
        video: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Normalised latents [B, 24, T, h, w] of ``video`` [B, 3, N, H, W] in [-1, 1].

        ``sample=True`` draws from the posterior like the official code (noise from the CPU
        ``generator``); ``False`` returns the posterior mean. See :meth:`latent_shape`.
        """
        mean, logvar = self.encode_moments(video)
        z = self.sample_posterior(mean, logvar, generator) if sample else mean
        return self.normalize(z)

    @apply_forward_hook
    def encode_image(
        self,
        image: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One latent frame [B, 24, 1, h, w] from ``image`` [B, 3, H, W] or [B, 3, 1, H, W].

        The frame is repeated 8 times and encoded (reference §B.7, used for I2V).
        """
        if image.ndim == 4:
            image = image[:, :, None]
        if image.ndim != 5 or image.shape[2] != 1:
            raise ValueError(
                f"image must be [B, 3, H, W] or [B, 3, 1, H, W], got {tuple(image.shape)}"
            )
        return self.encode(image.expand(-1, -1, TIME_FACTOR, -1, -1), sample, generator)

    # ------------------------------------------------------------------------------------
    # decode
    # ------------------------------------------------------------------------------------
    def _plan_for_decode(self, t: int, num_frames: int | None) -> FramePlan | None:
        if num_frames is None:
            return None
        plan = frame_plan(num_frames, self.config.micro_frame_size)
        if plan.latent_frames != t:
            valid = frames_for_latents(t)
            raise ValueError(
                f"num_frames={num_frames} encodes to {plan.latent_frames} latent frames but "
                f"the latents have {t}; pass a num_frames in [{valid.start}, {valid.stop - 1}] "
                "or None for all 8T frames"
            )
        return plan

    def iter_decode(
        self,
        latents: torch.Tensor,
        num_frames: int | None = None,
        window: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Decode window by window, yielding pixel chunks [B, 3, n_i, H, W] in order.

        Memory stays bounded by one window (and one tile) however long the clip is.
        ``window`` overrides ``config.decode_window`` (official 6; the paper trains 1/4/8).
        """
        self._check_latents(latents)
        w = self.config.decode_window if window is None else int(window)
        if w < 1:
            raise ValueError(f"decode window must be >= 1, got {w}")
        t, h, ww = latents.shape[2:]
        plan = self._plan_for_decode(t, num_frames)
        dropped = set(plan.dropped_frames) if plan is not None else set()
        z = self.denormalize(latents.to(self.dtype))
        for s in range(0, t, w):
            e = min(s + w, t)
            frames = range(TIME_FACTOR * s, TIME_FACTOR * e)
            kept = [i - frames.start for i in frames if i not in dropped]
            if not kept:
                continue
            keep = None
            if len(kept) != len(frames):
                keep = torch.tensor(kept, device=latents.device)

            def run(zt: torch.Tensor, keep: torch.Tensor | None = keep) -> torch.Tensor:
                return self._decode_region(zt, keep)

            mode = self._tile_mode(h, ww)
            if mode is None:
                yield run(z[:, :, s:e])
            elif mode == "exact":
                yield self._decode_region(z[:, :, s:e], keep, self._runner(h, ww)).to(z.device)
            else:
                yield self._tiled(
                    run,
                    z[:, :, s:e],
                    3,
                    len(kept),
                    in_unit=SPACE_FACTOR,
                    out_unit=1,
                    pixel_height=SPACE_FACTOR * h,
                    pixel_width=SPACE_FACTOR * ww,
                )

    @apply_forward_hook
    def decode(
        self,
        latents: torch.Tensor,
        num_frames: int | None = None,
        window: int | None = None,
    ) -> torch.Tensor:
        """Video [B, 3, N, 8h, 8w] (nominally [-1, 1]; not clamped) from normalised latents.

        ``num_frames=None`` returns all 8T frames; with N the padded or replicated frames
        are cropped and exactly N frames come back. ``window`` as in :meth:`iter_decode`.
        """
        self._check_latents(latents)
        b, t = latents.shape[0], latents.shape[2]
        n = TIME_FACTOR * t if num_frames is None else num_frames
        out: torch.Tensor | None = None
        pos = 0
        for chunk in self.iter_decode(latents, num_frames, window):
            if out is None:  # preallocate: no list of chunks, no final concatenation copy
                out = chunk.new_empty(b, 3, n, *chunk.shape[-2:])
            out[:, :, pos : pos + chunk.shape[2]] = chunk
            pos += chunk.shape[2]
        assert out is not None and pos == n
        return out

    def forward(
        self,
        video: torch.Tensor,
        window: int | None = None,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction [B, 3, N, H', W'], mean, logvar).

        Encodes each 8-frame group alone, samples the posterior and decodes with a window
        of ``window`` latents (paper §3.1.2: R in {1, 4, 8}).
        """
        mean, logvar = self.encode_moments(video)
        z = self.sample_posterior(mean, logvar, generator) if sample else mean
        recon = self.decode(self.normalize(z), num_frames=video.shape[2], window=window)
        return recon, mean, logvar

    # ------------------------------------------------------------------------------------
    # checkpoints (implemented in _checkpoint)
    # ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        token: str | None = None,
        endpoint: str | None = None,
        config: VAEConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> VideoVAE:
        """Load a folder written by :meth:`save_pretrained` (through diffusers'
        ``ModelMixin.from_pretrained``; its keywords such as ``torch_dtype`` or
        ``subfolder`` work), a Hub repo holding one, a pre-diffusers folder
        (``model.safetensors``), or an official ``vae.pt`` file (then ``config`` defaults to
        the ``mugv`` preset). `VAEConfig` fields among ``kwargs`` override run-time fields."""
        return _checkpoint.from_pretrained(
            cls,
            pretrained_model_name_or_path,
            revision=revision,
            token=token,
            endpoint=endpoint,
            config=config,
            device=device,
            dtype=dtype,
            fields=_FIELDS,
            **kwargs,
        )

    @classmethod
    def from_official(
        cls,
        path: str | Path,
        config: VAEConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> VideoVAE:
        """Load the official ``vae.pt`` (``torch.load(weights_only=True)``, strict keys)."""
        return _checkpoint.from_official(cls, path, config, device=device, dtype=dtype)

    @classmethod
    def from_single_file(
        cls,
        path: str | Path,
        config: VAEConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype | None = None,
    ) -> VideoVAE:
        """diffusers-style name for `from_official` (one ``vae.pt``, strict keys, no pickled
        code executed)."""
        return cls.from_official(path, config, device=device, dtype=torch_dtype)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> Path:  # type: ignore[override]
        """diffusers' ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model
        .safetensors``) into a temporary folder, moved into place file by file. Returns
        the folder."""
        return _checkpoint.atomic_save_folder(
            lambda tmp: ModelMixin.save_pretrained(self, tmp, **kwargs), save_directory
        )

    def push_to_hub(  # type: ignore[override]
        self,
        repo_id: str,
        *,
        token: str | None = None,
        endpoint: str | None = None,
        private: bool | None = None,
        commit_message: str = "Upload MUG-V video VAE",
        create_pr: bool = False,
    ) -> str:
        """`save_pretrained` and upload to the Hub repo ``repo_id`` (created if missing) in
        one commit; ``endpoint`` selects a private Hub. Returns ``repo_id``."""
        _checkpoint.push_folder_to_hub(
            self.save_pretrained, repo_id, token=token, endpoint=endpoint, private=private,
            commit_message=commit_message, create_pr=create_pr,
        )  # fmt: skip
        return repo_id

    def load_diffusers_trunk(
        self,
        path_or_repo_id: str | Path,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        token: str | None = None,
    ) -> list[str]:
        """Fill the 2D trunk from an SDXL VAE in diffusers format (local folder or Hub repo
        with ``config.json`` + ``diffusion_pytorch_model.safetensors``). Returns the keys of
        the source that were skipped (``quant_conv``/``post_quant_conv``)."""
        return _checkpoint.load_diffusers_trunk(
            self, path_or_repo_id, subfolder=subfolder, revision=revision, token=token
        )


def _check_size(height: int, width: int) -> None:
    if height < SPACE_FACTOR or width < SPACE_FACTOR:
        raise ValueError(f"frames must be at least 8 x 8 pixels, got {height} x {width}")
    if height % SPACE_FACTOR or width % SPACE_FACTOR:
        warnings.warn(
            f"frame size {height} x {width} is not a multiple of 8: the latent is floored to "
            f"{height // 8} x {width // 8} and decodes to {height // 8 * 8} x {width // 8 * 8} "
            "(official behaviour, e.g. 1110 -> 138 -> 1104); crop or resize to a multiple "
            "of 8 to avoid it",
            stacklevel=3,
        )
