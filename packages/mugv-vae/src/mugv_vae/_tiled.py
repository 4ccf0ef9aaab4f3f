"""Exact spatial tiling: the VAE run layer group by layer group over spatial tiles.

Dimension legend: B batch (frames or 8-frame groups), C channels, T time, H/W the current
layer's height/width, G GroupNorm groups.

Every full activation lives on the *park* device (e.g. the CPU); only one tile of it, plus
the halo its conv needs, is moved to the *compute* device at a time. Tiles partition each
layer's OUTPUT (no overlap, no blending), and each tile reads exactly the input window the
conv reads in the untiled run (zeros only beyond the frame edge), so convolutions are exact.
GroupNorm is two-pass: per-(sample, group) sum and sum of squares are accumulated in float64
over the tiles of the whole activation (each element counted once), then every tile is
normalised with those global statistics. The mid-block attention runs on the whole
latent-resolution map (h * w tokens), the only place a full map goes to the compute device.
Result: tiled equals untiled up to float rounding (reduction order), for any tile size.

Tile sizes: a layer's tile edge is the configured tile scaled to the layer's resolution
(8x at full pixel resolution), or larger where the layer is narrow enough: every tile may
hold up to ``budget`` elements (input or output, all batch items, channels and frames;
by default the decoder's full-resolution 256-channel tile, the largest tile the scaled plan
already holds). Lower-resolution layers thus run in few tiles (often one) instead of many
small ones: each tile costs a kernel launch and a weight reorder, so many small tiles
made the tiled run several times slower than the untiled one, for the same peak memory.
Spans are balanced (no thin last tile).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mugv_vae._layers import (
    CausalConv3d,
    Decoder2D,
    Encoder2D,
    ResBlock3d,
    ResnetBlock2D,
    TemporalDecoder,
    TemporalEncoder,
    _depth_to_time,
    norm_silu,
)

Stats = tuple[torch.Tensor, torch.Tensor]
TileFn = Callable[[torch.Tensor], torch.Tensor]


def _spans(n: int, edge: int) -> list[tuple[int, int]]:
    """[0, n) in ceil(n / edge) near-equal spans, none longer than ``edge``."""
    k = -(-n // max(edge, 1))
    cuts = [n * i // k for i in range(k + 1)]
    return list(itertools.pairwise(cuts))


class TiledRunner:
    """Runs the trunk and temporal networks tile by tile (see the module docstring).

    ``tile``: tile edge in latent pixels (scaled by the layer's resolution: 8x at full pixel
    resolution); ``latent_hw``: the latent (h, w) of the frame being processed; ``budget``:
    elements one tile may hold (see the module docstring; 0 = the scaled edge only).
    """

    def __init__(
        self,
        tile: int,
        latent_hw: tuple[int, int],
        device: torch.device,
        park: torch.device,
        budget: int = 0,
    ) -> None:
        self.tile = tile
        self.lat_h, self.lat_w = latent_hw
        self.device = device
        self.park = park
        self.budget = budget

    # -- tiles ----------------------------------------------------------------------------
    def _tiles(self, ho: int, wo: int, per_pixel: int = 0) -> list[tuple[int, int, int, int]]:
        """Output tiles of an ho x wo map whose tiles hold ``per_pixel`` elements per pixel."""
        ey = self.tile * max(1, ho // max(self.lat_h, 1))
        ex = self.tile * max(1, wo // max(self.lat_w, 1))
        if self.budget and per_pixel:
            if per_pixel * ho * wo <= self.budget:
                return [(0, ho, 0, wo)]
            edge = math.isqrt(self.budget // per_pixel)
            ey, ex = max(ey, edge), max(ex, edge)
        return [(y0, y1, x0, x1) for y0, y1 in _spans(ho, ey) for x0, x1 in _spans(wo, ex)]

    # -- GroupNorm, two-pass ----------------------------------------------------------------
    def gn_stats(self, x: torch.Tensor, norm: nn.GroupNorm) -> Stats:
        """Global per-(sample, group) mean and variance of ``x`` [B, C, ..., H, W]."""
        # per tile: float32 mean and variance (torch.var_mean), merged over the tiles in
        # float64 with the parallel-variance formula (Chan et al.): no float64 copy of x
        b, g = x.shape[0], norm.num_groups
        per_pixel = x[0].numel() // (x.shape[-2] * x.shape[-1]) * b
        parts = []
        for y0, y1, x0, x1 in self._tiles(x.shape[-2], x.shape[-1], per_pixel):
            t = x[..., y0:y1, x0:x1].to(self.device).reshape(b, g, -1)
            var, mean = torch.var_mean(t.float(), dim=-1, correction=0)
            parts.append((t.shape[-1], mean.double(), var.double()))
        n = sum(k for k, _, _ in parts)
        mean = sum(k * m for k, m, _ in parts) / n
        var = sum(k * (v + (m - mean) ** 2) for k, m, v in parts) / n
        return mean, var

    @staticmethod
    def gn_apply(t: torch.Tensor, stats: Stats, norm: nn.GroupNorm) -> torch.Tensor:
        """Normalise a tile with global statistics, then the GroupNorm affine."""
        mean, var = stats
        b, c = t.shape[:2]
        g = norm.num_groups
        inv = torch.rsqrt(var + norm.eps).float()[..., None]
        y = (t.float().reshape(b, g, -1) - mean.float()[..., None]) * inv
        y = y.reshape(t.shape)
        if norm.affine:
            shape = (1, c) + (1,) * (t.ndim - 2)
            y = y * norm.weight.float().view(shape) + norm.bias.float().view(shape)
        return y.to(t.dtype)

    def _norm_act(self, x: torch.Tensor, norm: nn.GroupNorm) -> TileFn:
        """GroupNorm + SiLU of tiles of ``x``. A tile that is the whole of ``x`` (a layer in
        one tile) is normalised by the GroupNorm module itself, as untiled; the two-pass
        statistics are computed only when a partial tile needs them."""
        stats: list[Stats] = []

        def fn(t: torch.Tensor) -> torch.Tensor:
            if t.shape == x.shape:
                return norm_silu(norm, t)
            if not stats:
                stats.append(self.gn_stats(x, norm))
            return F.silu(self.gn_apply(t, stats[0], norm))

        return fn

    # -- convolutions -----------------------------------------------------------------------
    def conv(
        self,
        x: torch.Tensor,
        module: nn.Module,
        *,
        pre: TileFn | None = None,
        residual: torch.Tensor | None = None,
        res_fn: TileFn | None = None,
        pad: tuple[int, int, int, int] | None = None,
        up: int = 1,
    ) -> torch.Tensor:
        """``module`` (Conv2d or CausalConv3d) applied to ``pre(x)``, tile by tile.

        ``pad`` (top, bottom, left, right) overrides the module's spatial zero padding;
        ``up`` nearest-upsamples the (pre-processed) input first; ``residual`` (same
        spatial size as the output) is added after ``res_fn``.
        """
        time_pad: tuple[int, ...] = ()
        if isinstance(module, CausalConv3d):
            conv: nn.Module = module.conv
            p = module.space_pad
            time_pad = module.time_pad
        else:
            conv = module
            p = conv.padding[0]
        pt, pb, pl, pr = pad if pad is not None else (p, p, p, p)
        k, s = conv.kernel_size[-1], conv.stride[-1]
        fn = F.conv3d if isinstance(conv, nn.Conv3d) else F.conv2d
        hh, ww = x.shape[-2] * up, x.shape[-1] * up
        ho, wo = (hh + pt + pb - k) // s + 1, (ww + pl + pr - k) // s + 1
        frames = x.shape[2] if x.ndim == 5 else 1
        per_pixel = x.shape[0] * frames * max(conv.out_channels, x.shape[1] * s * s)
        tiles = self._tiles(ho, wo, per_pixel)
        if len(tiles) == 1 and pad is None:  # the layer in one tile: the module itself
            xt = x.to(self.device)
            xt = pre(xt) if pre is not None else xt
            if up > 1:
                xt = F.interpolate(xt, scale_factor=float(up), mode="nearest")
            yt = module(xt)
            if residual is not None:
                r = residual.to(self.device)
                yt = yt + (res_fn(r) if res_fn is not None else r)
            return yt.to(self.park)
        out: torch.Tensor | None = None
        for y0, y1, x0, x1 in tiles:
            a, b = y0 * s - pt, (y1 - 1) * s - pt + k  # input rows the conv reads
            c, d = x0 * s - pl, (x1 - 1) * s - pl + k
            ca, cb, cc, cd = max(a, 0), min(b, hh), max(c, 0), min(d, ww)
            xt = x[..., ca // up : (cb - 1) // up + 1, cc // up : (cd - 1) // up + 1]
            xt = xt.to(self.device)
            if pre is not None:
                xt = pre(xt)
            if up > 1:
                xt = F.interpolate(xt, scale_factor=float(up), mode="nearest")
                oy, ox = ca - up * (ca // up), cc - up * (cc // up)
                xt = xt[..., oy : oy + cb - ca, ox : ox + cd - cc]
            xt = F.pad(xt, (cc - c, d - cd, ca - a, b - cb, *time_pad))
            yt = fn(xt, conv.weight, conv.bias, conv.stride)
            if residual is not None:
                r = residual[..., y0:y1, x0:x1].to(self.device)
                yt = (res_fn(r) if res_fn is not None else r) + yt
            if out is None:
                out = yt.new_empty(*yt.shape[:-2], ho, wo, device=self.park)
            out[..., y0:y1, x0:x1] = yt
        assert out is not None
        return out

    # -- blocks -----------------------------------------------------------------------------
    def resnet(self, x: torch.Tensor, block: ResnetBlock2D | ResBlock3d) -> torch.Tensor:
        h = self.conv(x, block.conv1, pre=self._norm_act(x, block.norm1))
        shortcut = block.conv_shortcut if isinstance(block, ResnetBlock2D) else block.conv3
        return self.conv(
            h, block.conv2, pre=self._norm_act(h, block.norm2), residual=x, res_fn=shortcut
        )

    def _full(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """A module that needs the whole map (attention): latent resolution only."""
        return module(x.to(self.device)).to(self.park)

    def encoder2d(self, enc: Encoder2D, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 512, h, w], as ``Encoder2D.forward``."""
        x = self.conv(x, enc.conv_in)
        for blk in enc.down_blocks:
            for r in blk.resnets:
                x = self.resnet(x, r)
            if blk.downsamplers is not None:
                x = self.conv(x, blk.downsamplers[0].conv, pad=(0, 1, 0, 1))
        return self._mid(enc.mid_block, x)

    def _mid(self, mid: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = self.resnet(x, mid.resnets[0])
        x = self._full(x, mid.attentions[0])
        return self.resnet(x, mid.resnets[1])

    def decoder2d(self, dec: Decoder2D, x: torch.Tensor) -> torch.Tensor:
        """[B, 512, h, w] -> [B, 3, 8h, 8w], as ``Decoder2D.forward``."""
        x = self._mid(dec.mid_block, x)
        for blk in dec.up_blocks:
            for r in blk.resnets:
                x = self.resnet(x, r)
            if blk.upsamplers is not None:
                x = self.conv(x, blk.upsamplers[0].conv, up=2)
        return self.conv(x, dec.conv_out, pre=self._norm_act(x, dec.conv_norm_out))

    def temporal_encoder(self, te: TemporalEncoder, x: torch.Tensor) -> torch.Tensor:
        """[B, 512, 8, h, w] -> [B, 48, 1, h, w], as ``TemporalEncoder.forward``."""
        x = self.conv(x, te.conv_in)
        for i, blocks in enumerate(te.block_res_blocks):
            for block in blocks:
                x = self.resnet(x, block)
            if i < len(te.conv_blocks):
                x = self.conv(x, te.conv_blocks[i])
        for block in te.res_blocks:
            x = self.resnet(x, block)
        return self.conv(x, te.conv2, pre=self._norm_act(x, te.norm1))

    def temporal_decoder(self, td: TemporalDecoder, z: torch.Tensor) -> torch.Tensor:
        """[B, 24, T, h, w] -> [B, 512, 8T, h, w], as ``TemporalDecoder.forward``."""
        x = self.conv(z, td.conv1)
        for block in td.res_blocks:
            x = self.resnet(x, block)
        x = self.resnet(x.repeat_interleave(2, dim=2), td.upsample_block)
        for i in reversed(range(len(td.block_res_blocks))):
            for block in td.block_res_blocks[i]:
                x = self.resnet(x, block)
            if i > 0:
                conv = td.conv_blocks[i - 1]
                if not isinstance(conv, nn.Identity):
                    x = _depth_to_time(self.conv(x, conv))
        return self.conv(x, td.conv_out, pre=self._norm_act(x, td.norm1))
