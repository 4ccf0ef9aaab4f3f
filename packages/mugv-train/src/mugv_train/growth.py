"""Width growth (paper §4.2.1): widen a trained DiT by an integer factor e, function-preserving.

Every hidden-width axis is tiled e times. A weight W [out, in] whose input is the hidden
state becomes tile(W) / e along the input axis (the replicated input is counted e times);
an output along the hidden axis is tiled, so the wide model's hidden state is the narrow
one repeated e times: h_wide = [h, h, ..., h]. Biases and per-channel vectors (tables,
tokens) are tiled. Heads are tiled as whole heads (N -> e N, head dim K unchanged), so
attention, RMSNorm over K and RoPE act per head exactly as before; LayerNorm over D gives
the same statistics on a repeated vector. With ``noise`` > 0 a small perturbation is added
to the grown weights to break the symmetry between copies.

Keys are those of the mugv-dit / official layout. Only the hidden width changes: latent
channels, text dim and the timestep-sinusoid width stay, and the final projection maps the
tiled hidden state back with weights divided by e.
"""

from __future__ import annotations

import torch

from mugv_dit import DiTConfig


def _tile(t: torch.Tensor, dims: tuple[int, ...], e: int) -> torch.Tensor:
    reps = [1] * t.dim()
    for d in dims:
        reps[d] = e
    return t.repeat(*reps)


def _tile_heads(t: torch.Tensor, groups: int, heads: int, e: int) -> torch.Tensor:
    """Rows laid out (groups, heads, K): tile the heads inside every group."""
    rest = t.shape[1:]
    g = t.reshape(groups, heads, -1, *rest)
    return g.repeat(1, e, *([1] * (g.dim() - 2))).reshape(groups * heads * e * g.shape[2], *rest)


def grow_width(
    state: dict[str, torch.Tensor],
    config: DiTConfig,
    factor: int,
    *,
    noise: float = 0.0,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], DiTConfig]:
    """Grow a mugv-dit state dict of ``config`` to hidden_size x ``factor``.

    Returns the new state dict and config (heads x factor, same head dim). With ``noise`` =
    0 the grown model computes the same output as the original.
    """
    e = int(factor)
    if e < 1:
        raise ValueError(f"growth factor must be a positive integer, got {factor}")
    n = config.num_heads
    new_cfg = config.replace(hidden_size=config.hidden_size * e, num_heads=n * e)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, w in state.items():
        w = w.detach()
        leaf = key.rsplit(".", 1)[-1]
        if key.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            v = _tile_heads(w, 3, n, e)
            if leaf == "weight":
                v = _tile(v, (1,), e) / e
        elif key.endswith(("cross_attn.kv_linear.weight", "cross_attn.kv_linear.bias")):
            v = _tile_heads(w, 2, n, e)  # its input, the embedded caption, is hidden-wide
            if leaf == "weight":
                v = _tile(v, (1,), e) / e
        elif key.endswith(("q_norm.weight", "k_norm.weight")):
            v = w.clone()  # per head dim K, unchanged
        elif key.startswith("t_block.1."):
            # six modulation chunks of width D: tile inside each chunk
            chunks = w.reshape(6, config.hidden_size, *w.shape[1:])
            v = _tile(chunks, (1,), e).reshape(6 * config.hidden_size * e, *w.shape[1:])
            if leaf == "weight":
                v = _tile(v, (1,), e) / e
        elif key.endswith("scale_shift_table"):
            v = _tile(w, (1,), e)
        elif key.startswith("x_embedder.proj.") or key in ("start_token", "end_token"):
            v = _tile(w, (0,), e)
        elif key.endswith(("mlp.0.weight", "y_proj.fc1.weight")):
            v = _tile(w, (0,), e)  # input: sinusoid / caption, not widened
        elif key == "final_layer.linear.weight":
            v = _tile(w, (1,), e) / e  # output: latent channels, not widened
        elif key == "final_layer.linear.bias":
            v = w.clone()
        elif leaf == "weight" and w.dim() == 2:
            v = _tile(w, (0, 1), e) / e  # hidden -> hidden (or hidden -> MLP width)
        elif leaf in ("weight", "bias") and w.dim() == 1:
            v = _tile(w, (0,), e)
        else:
            raise KeyError(f"no growth rule for {key} {tuple(w.shape)}")
        if noise > 0 and v.dim() >= 2:
            v = v + noise * torch.randn(v.shape, generator=g, dtype=torch.float32).to(v.dtype)
        out[key] = v.contiguous()
    return out, new_cfg
