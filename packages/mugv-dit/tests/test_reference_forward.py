"""The forward against a straightforward re-implementation of the spec (reference §A).

The re-implementation below reads only the state dict and the spec's equations: explicit
patch gathering instead of Conv3d, complex-number RoPE, a per-sample loop over valid
caption tokens for cross-attention, per-token Python selection of t / t0, explicit
unpatchify loops. It runs in float64, so any disagreement is a real difference.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config, tiny_model

from mugv_dit import DiTConfig


def _linear(sd, name, x):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _layer_norm(x, eps, weight=None, bias=None):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    return y if weight is None else y * weight + bias


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _rms_norm(x, weight, eps):
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps) * weight


def _sinusoid(t, dim=256):
    """cos first; the official code evaluates it in float32 (spec §A.3), so do we."""
    half = dim // 2
    out = torch.zeros(t.shape[0], dim, dtype=torch.float64)
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    for k in range(half):
        arg = t.float() * freqs[k]
        out[:, k] = torch.cos(arg).double()
        out[:, half + k] = torch.sin(arg).double()
    return out


def _mlp_embed(sd, name, t):
    h = _linear(sd, f"{name}.mlp.0", _sinusoid(t))
    return _linear(sd, f"{name}.mlp.2", h * torch.sigmoid(h))


def _attend(q, k, v):
    """q: [Lq, N, K], k/v: [Lk, N, K] -> [Lq, N*K]."""
    scores = torch.einsum("qnk,snk->nqs", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("nqs,snk->qnk", scores.softmax(-1), v).reshape(q.shape[0], -1)


def reference_forward(sd, cfg: DiTConfig, x, t, text, text_mask, fps, x_mask):
    D, N = cfg.hidden_size, cfg.num_heads
    K = D // N
    B, C, T, H, W = x.shape
    pt, ph, pw = cfg.patch_size
    Tp, Hp, Wp = -(-T // pt), -(-H // ph), -(-W // pw)

    # patchify: zero-pad right/bottom/back, gather each patch, project with the conv weight
    xp = torch.zeros(B, C, Tp * pt, Hp * ph, Wp * pw, dtype=torch.float64)
    xp[:, :, :T, :H, :W] = x
    wconv = sd["x_embedder.proj.weight"].reshape(D, -1)
    tokens = torch.zeros(B, Tp * Hp * Wp, D, dtype=torch.float64)
    for f in range(Tp):
        for r in range(Hp):
            for c in range(Wp):
                patch = xp[
                    :, :, f * pt : (f + 1) * pt, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw
                ]
                n = (f * Hp + r) * Wp + c
                tokens[:, n] = patch.reshape(B, -1) @ wconv.T + sd["x_embedder.proj.bias"]

    # conditioning vectors (t and t = 0), fps added, then t_block
    fps_emb = _mlp_embed(sd, "fps_embedder", fps)
    t_vec = _mlp_embed(sd, "t_embedder", t) + fps_emb
    t0_vec = _mlp_embed(sd, "t_embedder", torch.zeros_like(t)) + fps_emb

    def t_block(v):
        return _linear(sd, "t_block.1", v * torch.sigmoid(v))

    t_mlp, t0_mlp = t_block(t_vec), t_block(t0_vec)

    # text embedder
    y = _layer_norm(text, cfg.caption_norm_eps)
    y = _linear(sd, "y_embedder.y_proj.fc2", _gelu_tanh(_linear(sd, "y_embedder.y_proj.fc1", y)))
    y = _layer_norm(y, cfg.caption_norm_eps)

    # sequence with start/end tokens; which tokens use t (generated frames only)
    seq = torch.cat(
        [sd["start_token"].expand(B, 1, D), tokens, sd["end_token"].expand(B, 1, D)], dim=1
    )
    L = seq.shape[1]
    # a token uses t iff one of its real frames is generated; start/end tokens never do
    gen_frame = [
        [bool(x_mask[b, f * pt : (f + 1) * pt].any()) for f in range(Tp)] for b in range(B)
    ]
    uses_t = [[False] + [gen_frame[b][f] for f in range(Tp) for _ in range(Hp * Wp)] + [False]
              for b in range(B)]  # fmt: skip

    # RoPE positions and complex rotations: [h | w | t], shared frequencies per axis
    pos = [(0, 0, 0)] + [(r, c, f + 1) for f in range(Tp) for r in range(Hp) for c in range(Wp)]
    pos.append((Hp - 1, Wp - 1, Tp + 1))
    # theta_j = base^(-2j / (K/3)); angles are float32 products as in the official tables
    n_freq = K // 6
    theta = 1.0 / cfg.rope_theta ** (torch.arange(0, 2 * n_freq, 2).float() / (K // 3))
    angle = torch.tensor(
        [[p for p in (h, w, tt) for _ in range(n_freq)] for (h, w, tt) in pos]
    ).float()
    angle = (angle * theta.repeat(3)).double()
    rot = torch.polar(torch.ones_like(angle), angle)  # [L, K/2]

    def rope(z):  # z: [L, N, K] real -> rotated, interleaved pairs
        zc = torch.complex(z[..., 0::2], z[..., 1::2]) * rot[:, None, :]
        return torch.stack([zc.real, zc.imag], dim=-1).reshape(z.shape)

    for i in range(cfg.depth):
        p = f"blocks.{i}."
        table = sd[p + "scale_shift_table"]
        out = torch.zeros_like(seq)
        for b in range(B):
            mods = [table + t_mlp[b].view(6, D), table + t0_mlp[b].view(6, D)]
            m = torch.stack([mods[0] if uses_t[b][n] else mods[1] for n in range(L)], dim=1)
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = m  # each [L, D]
            xb = seq[b]
            h = _layer_norm(xb, cfg.norm_eps) * (1 + scale_msa) + shift_msa
            qkv = _linear(sd, p + "attn.qkv", h)
            q, k, v = (qkv[:, j * D : (j + 1) * D].view(L, N, K) for j in range(3))
            q = rope(_rms_norm(q, sd[p + "attn.q_norm.weight"], cfg.qk_norm_eps))
            k = rope(_rms_norm(k, sd[p + "attn.k_norm.weight"], cfg.qk_norm_eps))
            xb = xb + gate_msa * _linear(sd, p + "attn.proj", _attend(q, k, v))
            # cross-attention to this sample's valid caption tokens only, no gate
            yb = y[b][text_mask[b]]
            hq = _layer_norm(
                xb, cfg.norm_eps, sd[p + "cross_attn_norm.weight"], sd[p + "cross_attn_norm.bias"]
            )
            q = _rms_norm(_linear(sd, p + "cross_attn.q_linear", hq).view(L, N, K),
                          sd[p + "cross_attn.q_norm.weight"], cfg.qk_norm_eps)  # fmt: skip
            kv = _linear(sd, p + "cross_attn.kv_linear", yb)
            k = _rms_norm(
                kv[:, :D].view(-1, N, K), sd[p + "cross_attn.k_norm.weight"], cfg.qk_norm_eps
            )
            v = kv[:, D:].view(-1, N, K)
            xb = xb + _linear(sd, p + "cross_attn.proj", _attend(q, k, v))
            h = _layer_norm(xb, cfg.norm_eps) * (1 + scale_mlp) + shift_mlp
            mlp = _linear(sd, p + "mlp.fc2", _gelu_tanh(_linear(sd, p + "mlp.fc1", h)))
            out[b] = xb + gate_mlp * mlp
        seq = out

    # final layer: drop start/end, per-token t_vec / t0_vec (pre-t_block) modulation
    table = sd["final_layer.scale_shift_table"]
    P = pt * ph * pw
    Cout = sd["final_layer.linear.weight"].shape[0] // P
    result = torch.zeros(B, Cout, Tp * pt, Hp * ph, Wp * pw, dtype=torch.float64)
    for b in range(B):
        for n in range(L - 2):
            vec = t_vec[b] if uses_t[b][n + 1] else t0_vec[b]
            shift, scale = table[0] + vec, table[1] + vec
            h = _layer_norm(seq[b, n + 1], cfg.norm_eps) * (1 + scale) + shift
            o = _linear(sd, "final_layer.linear", h)
            f, rem = divmod(n, Hp * Wp)
            r, c = divmod(rem, Wp)
            idx = 0
            for i in range(pt):
                for j in range(ph):
                    for k_ in range(pw):
                        for ch in range(Cout):
                            result[b, ch, f * pt + i, r * ph + j, c * pw + k_] = o[idx]
                            idx += 1
    return result[:, :, :T, :H, :W]


@pytest.mark.parametrize(
    ("overrides", "shape"),
    [
        ({}, (2, 3, 5, 7)),  # odd H and W: padding and cropping
        (dict(patch_size=(1, 2, 2), num_heads=1, hidden_size=18), (2, 2, 4, 4)),
        (dict(patch_size=(2, 1, 2), depth=1), (2, 3, 3, 3)),  # temporal patching, padded T
    ],
    ids=["base-odd-hw", "one-head-k18", "patch-2x1x2"],
)
def test_forward_matches_spec_reimplementation(overrides, shape):
    B, T, H, W = shape
    cfg = tiny_config(**overrides)
    model = tiny_model(seed=3, dtype=torch.float64, **overrides)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(B, cfg.in_channels, T, H, W, generator=gen, dtype=torch.float64)
    t = torch.tensor([731.25, 42.0], dtype=torch.float64)
    text = torch.randn(B, 5, cfg.text_dim, generator=gen, dtype=torch.float64)
    text_mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    fps = torch.tensor([30.0, 24.0], dtype=torch.float64)
    x_mask = torch.ones(B, T, dtype=torch.bool)
    x_mask[0, 0] = False  # I2V: first frame of sample 0 is a clean condition
    x_mask[1, -1] = False  # last-frame conditioning for sample 1
    if cfg.patch_size[0] > 1:
        x_mask[:] = True
        x_mask[0, :2] = False  # a whole temporal patch conditioned
    got = model(x, t, text, text_mask, fps=fps, x_mask=x_mask)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    want = reference_forward(sd, cfg, x, t, text, text_mask, fps, x_mask)
    assert got.dtype == torch.float32  # the model returns float32 like the official one
    assert got.shape == (B, cfg.out_channels, T, H, W)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
