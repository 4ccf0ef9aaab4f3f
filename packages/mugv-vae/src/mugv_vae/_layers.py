"""Building blocks of the video VAE: the 2D trunk and the temporal 3D-conv network.

Dimension legend: B batch, C channels, F pixel frames, T latent frames, H/W height/width.

The 2D trunk uses the diffusers ``AutoencoderKL`` module names so that the official
``vae.pt`` (keys ``spatial_vae.module.{encoder,decoder}.*``) and SDXL-VAE safetensors load
as they are; it is written here from the architecture facts (reference §B.1), not copied.
The temporal network follows reference §B.2-B.5 (keys ``temporal_vae.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mugv_vae.config import VAEConfig

# ---------------------------------------------------------------------------------------
# 2D trunk (per frame): diffusers-compatible names
# ---------------------------------------------------------------------------------------


def norm_silu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """SiLU(GroupNorm(x)); the SiLU runs in place on the fresh normalised tensor when no
    gradient is recorded (its backward would need that tensor)."""
    h = norm(x)
    return F.silu(h, inplace=not (torch.is_grad_enabled() and h.requires_grad))


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv x2 with a residual (1x1 ``conv_shortcut`` when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(norm_silu(self.norm1, x))
        h = self.conv2(norm_silu(self.norm2, h))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return h.add_(x)  # = x + h; the conv's backward needs its input, not its output


class Downsample2D(nn.Module):
    """Pad right/bottom by one, then a 3x3 stride-2 conv: sizes are floored (§B.1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    """Nearest x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Attention2D(nn.Module):
    """Single-head self-attention over the pixels of the mid-block (diffusers names)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        o = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        o = self.to_out[0](o)
        return x + o.transpose(1, 2).reshape(b, c, h, w)


class MidBlock2D(nn.Module):
    """resnet, attention, resnet at the trunk's full width."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(channels, channels, groups), ResnetBlock2D(channels, channels, groups)]
        )
        self.attentions = nn.ModuleList([Attention2D(channels, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if i == 0 else cout, cout, groups) for i in range(layers)]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(cout)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if i == 0 else cout, cout, groups) for i in range(layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder2D(nn.Module):
    """SDXL-VAE encoder truncated after the mid-block: [B, 3, H, W] -> [B, 512, H/8, W/8].

    ``conv_norm_out`` and ``conv_out`` exist only so the official keys load strictly;
    the truncated forward skips them (§B.1).
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        ch, g = config.block_out_channels, config.norm_num_groups
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [
                DownEncoderBlock2D(
                    ch[max(i - 1, 0)], ch[i], config.layers_per_block, g, i < len(ch) - 1
                )
                for i in range(len(ch))
            ]
        )
        self.mid_block = MidBlock2D(ch[-1], g)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * config.spatial_latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.mid_block(x)


class Decoder2D(nn.Module):
    """SDXL-VAE decoder without ``conv_in``: [B, 512, h, w] -> [B, 3, 8h, 8w].

    ``conv_in`` exists only for strict loading; the 512-channel map enters the mid-block.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        ch, g = config.block_out_channels, config.norm_num_groups
        rev = tuple(reversed(ch))
        self.conv_in = nn.Conv2d(config.spatial_latent_channels, rev[0], 3, padding=1)
        self.mid_block = MidBlock2D(rev[0], g)
        self.up_blocks = nn.ModuleList(
            [
                UpDecoderBlock2D(
                    rev[max(i - 1, 0)], rev[i], config.layers_per_block + 1, g, i < len(ch) - 1
                )
                for i in range(len(ch))
            ]
        )
        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class SpatialVAE(nn.Module):
    """Holds the trunk as ``module.encoder`` / ``module.decoder`` like the official wrapper."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.module = nn.Module()
        self.module.encoder = Encoder2D(config)
        self.module.decoder = Decoder2D(config)


# ---------------------------------------------------------------------------------------
# Temporal 3D network
# ---------------------------------------------------------------------------------------


class CausalConv3d(nn.Module):
    """3D conv with the official time padding; despite the name it is not causal (§B.2, §H.2).

    Time padding ``(k_t - 1) + (1 - stride_t)`` split as ``front = pad // 2``, back = rest,
    with zeros; space padding ``k // 2`` each side. The conv itself is ``.conv`` (no padding).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int = 3,
        stride: tuple[int, int, int] = (1, 1, 1),
        bias: bool = True,
    ) -> None:
        super().__init__()
        k = kernel_size
        pad_t = (k - 1) + (1 - stride[0])
        self.time_pad = (pad_t // 2, pad_t - pad_t // 2)
        self.space_pad = k // 2
        self.conv = nn.Conv3d(cin, cout, k, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Zero padding through the conv itself (no padded copy of the input) where it is
        # symmetric; the stride-2 convs pad time (0, 1), which F.pad adds first.
        conv, s = self.conv, self.space_pad
        front, back = self.time_pad
        if front != back:
            x = F.pad(x, (0, 0, 0, 0, front, back))
            front = 0
        kt = conv.kernel_size[0]
        if x.shape[2] == 1 and front == kt // 2 and conv.stride[0] == 1 and kt > 1:
            # one frame between zero pads: only the middle time tap meets data, so the 3D
            # conv is the 2D conv with that tap (the others multiply zeros)
            w = conv.weight[:, :, kt // 2]
            return F.conv2d(x[:, :, 0], w, conv.bias, conv.stride[1:], s)[:, :, None]
        return F.conv3d(x, conv.weight, conv.bias, conv.stride, (front, s, s))


class ResBlock3d(nn.Module):
    """GroupNorm-SiLU-conv3 x2 (no bias) plus a residual (1x1x1 ``conv3`` when widths differ)."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = CausalConv3d(cin, cout, 3, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = CausalConv3d(cout, cout, 3, bias=False)
        self.conv3 = CausalConv3d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(norm_silu(self.norm1, x))
        h = self.conv2(norm_silu(self.norm2, h))
        if self.conv3 is not None:
            x = self.conv3(x)
        return h.add_(x)  # = x + h; the conv's backward needs its input, not its output


class TemporalEncoder(nn.Module):
    """[B, 512, 8, h, w] -> moments [B, 48, 1, h, w]; three stride-2 time convs (§B.3)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        f, g, nr = (
            config.temporal_filters,
            config.temporal_norm_num_groups,
            config.temporal_num_res_blocks,
        )
        mult = config.temporal_channel_multipliers
        self.conv_in = CausalConv3d(config.trunk_channels, f, 3, bias=False)
        self.block_res_blocks = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        prev = f
        for i, m in enumerate(mult):
            width = f * m
            blocks = nn.ModuleList()
            for _ in range(nr):
                blocks.append(ResBlock3d(prev, width, g))
                prev = width
            self.block_res_blocks.append(blocks)
            if i < len(mult) - 1:
                self.conv_blocks.append(CausalConv3d(prev, prev, 3, stride=(2, 1, 1)))
        self.res_blocks = nn.ModuleList([ResBlock3d(prev, prev, g) for _ in range(nr)])
        self.norm1 = nn.GroupNorm(g, prev)
        self.conv2 = CausalConv3d(prev, 2 * config.latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, blocks in enumerate(self.block_res_blocks):
            for block in blocks:
                x = block(x)
            if i < len(self.conv_blocks):
                x = self.conv_blocks[i](x)
        for block in self.res_blocks:
            x = block(x)
        return self.conv2(F.silu(self.norm1(x)))


class TemporalDecoder(nn.Module):
    """[B, 24, T, h, w] -> [B, 512, 8T, h, w] (§B.5).

    Order: conv1, res_blocks, upsample_block (nearest x2 in time), then levels 3..0. Level
    i > 0 is followed by ``conv_blocks[i-1]``: for i = 3, 2 a conv doubling the channels and
    a depth-to-space in time (channel ``2c + k`` -> time ``2t + k``); for i = 1 an identity
    (decoder temporal_downsample = (F, T, T)). Total time upsampling: 2 x 2 x 2 = 8.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        f, g, nr = (
            config.temporal_filters,
            config.temporal_norm_num_groups,
            config.temporal_num_res_blocks,
        )
        mult = config.temporal_channel_multipliers
        width = f * mult[-1]
        self.conv1 = CausalConv3d(config.latent_channels, width, 3)
        self.res_blocks = nn.ModuleList([ResBlock3d(width, width, g) for _ in range(nr)])
        self.upsample_block = _UpsampleBlock(width, g)
        prev = width
        levels: list[nn.ModuleList] = []
        convs: list[nn.Module] = []
        for i in reversed(range(len(mult))):
            w = f * mult[i]
            blocks = nn.ModuleList()
            for _ in range(nr):
                blocks.append(ResBlock3d(prev, w, g))
                prev = w
            levels.insert(0, blocks)
            if i > 0:
                # level i is followed by conv_blocks[i-1]; index 0 has no time upsampling
                convs.insert(0, CausalConv3d(prev, 2 * prev, 3) if i - 1 > 0 else nn.Identity())
        self.block_res_blocks = nn.ModuleList(levels)
        self.conv_blocks = nn.ModuleList(convs)
        self.norm1 = nn.GroupNorm(g, prev)
        self.conv_out = CausalConv3d(prev, config.trunk_channels, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv1(z)
        for block in self.res_blocks:
            x = block(x)
        x = self.upsample_block(x)
        for i in reversed(range(len(self.block_res_blocks))):
            for block in self.block_res_blocks[i]:
                x = block(x)
            if i > 0:
                conv = self.conv_blocks[i - 1]
                x = conv(x)
                if not isinstance(conv, nn.Identity):
                    x = _depth_to_time(x)
        return self.conv_out(F.silu(self.norm1(x)))


class _UpsampleBlock(ResBlock3d):
    """``upsample_block``: nearest x2 in time, then the ResBlock body (norm1/conv1/norm2/conv2)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.repeat_interleave(2, dim=2))


def _depth_to_time(x: torch.Tensor) -> torch.Tensor:
    """[B, 2C, T, H, W] -> [B, C, 2T, H, W] with channel ``2c + k`` going to time ``2t + k``."""
    b, c2, t, h, w = x.shape
    x = x.reshape(b, c2 // 2, 2, t, h, w).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, c2 // 2, 2 * t, h, w)


class TemporalVAE(nn.Module):
    """``temporal_vae``: encoder, ``quant_conv`` (48->48), ``post_quant_conv`` (24->24), decoder."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.encoder = TemporalEncoder(config)
        self.decoder = TemporalDecoder(config)
        self.quant_conv = CausalConv3d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = CausalConv3d(config.latent_channels, config.latent_channels, 1)
