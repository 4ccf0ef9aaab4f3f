"""The official ``vae.pt`` key/shape list, written from the architecture reference text
(§B.1-B.6), independently of the package's module code. Parametric in the widths so the
same description also gives the debug preset's layout."""

from __future__ import annotations


def official_vae_layout(
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
    layers_per_block: int = 2,
    spatial_latent_channels: int = 4,
    filters: int = 128,
    multipliers: tuple[int, ...] = (1, 2, 2, 4),
    num_res_blocks: int = 4,
    latent: int = 24,
) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}

    def conv2d(name: str, cout: int, cin: int, k: int) -> None:
        keys[f"{name}.weight"] = (cout, cin, k, k)
        keys[f"{name}.bias"] = (cout,)

    def norm(name: str, c: int) -> None:
        keys[f"{name}.weight"] = (c,)
        keys[f"{name}.bias"] = (c,)

    def resnet2d(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin)
        conv2d(f"{name}.conv1", cout, cin, 3)
        norm(f"{name}.norm2", cout)
        conv2d(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv2d(f"{name}.conv_shortcut", cout, cin, 1)

    def mid(name: str, c: int) -> None:
        resnet2d(f"{name}.resnets.0", c, c)
        resnet2d(f"{name}.resnets.1", c, c)
        a = f"{name}.attentions.0"
        norm(f"{a}.group_norm", c)
        for lin in ("to_q", "to_k", "to_v", "to_out.0"):
            keys[f"{a}.{lin}.weight"] = (c, c)
            keys[f"{a}.{lin}.bias"] = (c,)

    ch = block_out_channels
    top = ch[-1]
    enc = "spatial_vae.module.encoder"
    conv2d(f"{enc}.conv_in", ch[0], 3, 3)
    prev = ch[0]
    for i, c in enumerate(ch):
        for j in range(layers_per_block):
            resnet2d(f"{enc}.down_blocks.{i}.resnets.{j}", prev, c)
            prev = c
        if i < 3:
            conv2d(f"{enc}.down_blocks.{i}.downsamplers.0.conv", c, c, 3)
    mid(f"{enc}.mid_block", top)
    norm(f"{enc}.conv_norm_out", top)
    conv2d(f"{enc}.conv_out", 2 * spatial_latent_channels, top, 3)

    dec = "spatial_vae.module.decoder"
    conv2d(f"{dec}.conv_in", top, spatial_latent_channels, 3)
    mid(f"{dec}.mid_block", top)
    rev = list(reversed(ch))
    prev = rev[0]
    for i, c in enumerate(rev):
        for j in range(layers_per_block + 1):
            resnet2d(f"{dec}.up_blocks.{i}.resnets.{j}", prev, c)
            prev = c
        if i < 3:
            conv2d(f"{dec}.up_blocks.{i}.upsamplers.0.conv", c, c, 3)
    norm(f"{dec}.conv_norm_out", ch[0])
    conv2d(f"{dec}.conv_out", 3, ch[0], 3)

    # temporal network: every conv is CausalConv3d -> ".conv.weight" / ".conv.bias"
    def conv3d(name: str, cout: int, cin: int, k: int, bias: bool) -> None:
        keys[f"{name}.conv.weight"] = (cout, cin, k, k, k)
        if bias:
            keys[f"{name}.conv.bias"] = (cout,)

    def resblock(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin)
        conv3d(f"{name}.conv1", cout, cin, 3, False)
        norm(f"{name}.norm2", cout)
        conv3d(f"{name}.conv2", cout, cout, 3, False)
        if cin != cout:
            conv3d(f"{name}.conv3", cout, cin, 1, False)

    widths = [filters * m for m in multipliers]
    te = "temporal_vae.encoder"
    conv3d(f"{te}.conv_in", filters, top, 3, False)
    prev = filters
    for lvl, w in enumerate(widths):
        for j in range(num_res_blocks):
            resblock(f"{te}.block_res_blocks.{lvl}.{j}", prev, w)
            prev = w
        if lvl < 3:
            conv3d(f"{te}.conv_blocks.{lvl}", w, w, 3, True)
    for j in range(num_res_blocks):
        resblock(f"{te}.res_blocks.{j}", widths[-1], widths[-1])
    norm(f"{te}.norm1", widths[-1])
    conv3d(f"{te}.conv2", 2 * latent, widths[-1], 1, True)
    conv3d("temporal_vae.quant_conv", 2 * latent, 2 * latent, 1, True)
    conv3d("temporal_vae.post_quant_conv", latent, latent, 1, True)

    td = "temporal_vae.decoder"
    conv3d(f"{td}.conv1", widths[-1], latent, 3, True)
    for j in range(num_res_blocks):
        resblock(f"{td}.res_blocks.{j}", widths[-1], widths[-1])
    resblock(f"{td}.upsample_block", widths[-1], widths[-1])
    prev = widths[-1]
    for lvl in (3, 2, 1, 0):
        for j in range(num_res_blocks):
            resblock(f"{td}.block_res_blocks.{lvl}.{j}", prev, widths[lvl])
            prev = widths[lvl]
        if lvl in (3, 2):  # conv_blocks.2 / .1 double the channels; conv_blocks.0 is Identity
            conv3d(f"{td}.conv_blocks.{lvl - 1}", 2 * prev, prev, 3, True)
    norm(f"{td}.norm1", widths[0])
    conv3d(f"{td}.conv_out", top, widths[0], 3, True)

    keys["scale"] = (1, latent, 1, 1, 1)
    keys["shift"] = (1, latent, 1, 1, 1)
    keys["logvar"] = ()
    return keys


DEBUG_LAYOUT_ARGS = dict(block_out_channels=(8, 16, 32, 32), filters=8)
