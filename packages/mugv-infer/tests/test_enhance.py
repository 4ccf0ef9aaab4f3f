"""MUGVEnhancer on tiny random components written in the official file layouts.

The official files (enhancer reference §1.3) are built here: ``enhancer/dit_i2v.safetensors``
from the key table of §2.5 (2 blocks, width 64, 2 heads), ``enhancer/pytorch_model.bin``
with ``pipe.dit.*`` LoRA keys of rank 16 and alpha 4 (scale 1/4, §2.7) plus a
``patch_embedding2`` override, the Wan VAE (base width 8) and umT5 encoder (width 32) in Wan's key names (§4.1, §4.2, renamed here
from the spec's tables), and a word-level tokenizer. They go into a local Hugging Face cache
and are loaded offline. The DiT is checked against ``reference_dit``, a plain-torch forward
written from §2.2-§2.4 over the official keys.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mugv_infer import EnhancerQuirks, MUGVEnhancer, read_mp4, write_mp4
from mugv_infer.enhance import _weights as W
from mugv_infer.enhance.enhancer import WAN_NEGATIVE_PROMPT, build_transformer
from mugv_testing import assert_close, build_hf_cache, offline_hf_cache

REPO, WAN = "MUG-V/MUG-V-inference", "Wan-AI/Wan2.1-T2V-1.3B"
DIM, HEADS, FFN, LAYERS, TEXT, FREQ, RANK, ALPHA = 64, 2, 96, 2, 32, 32, 16, 4.0
HEAD_DIM = DIM // HEADS
FRAMES, H, Wd = 9, 32, 32  # 3 latent frames of 4 x 4 -> 12 tokens
FP32 = {"dtype": torch.float32, "head_dim": HEAD_DIM}
EXACT = EnhancerQuirks(bf16_input=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- official files


def official_dit(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ``dit_i2v.safetensors`` with the §2.5 keys and shapes at tiny widths."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "patch_embedding.weight": (DIM, 16, 1, 2, 2), "patch_embedding.bias": (DIM,),
        "patch_embedding2.weight": (DIM, 16, 1, 2, 2), "patch_embedding2.bias": (DIM,),
        "text_embedding.0.weight": (DIM, TEXT), "text_embedding.0.bias": (DIM,),
        "text_embedding.2.weight": (DIM, DIM), "text_embedding.2.bias": (DIM,),
        "time_embedding.0.weight": (DIM, FREQ), "time_embedding.0.bias": (DIM,),
        "time_embedding.2.weight": (DIM, DIM), "time_embedding.2.bias": (DIM,),
        "time_projection.1.weight": (6 * DIM, DIM), "time_projection.1.bias": (6 * DIM,),
        "head.modulation": (1, 2, DIM), "head.head.weight": (64, DIM), "head.head.bias": (64,),
    }  # fmt: skip
    for n in range(LAYERS):
        p = f"blocks.{n}."
        shapes[p + "modulation"] = (1, 6, DIM)
        for a in ("self_attn", "cross_attn"):
            for m in "qkvo":
                shapes[f"{p}{a}.{m}.weight"], shapes[f"{p}{a}.{m}.bias"] = (DIM, DIM), (DIM,)
            shapes[f"{p}{a}.norm_q.weight"] = shapes[f"{p}{a}.norm_k.weight"] = (DIM,)
        shapes[p + "norm3.weight"] = shapes[p + "norm3.bias"] = (DIM,)
        shapes[p + "ffn.0.weight"], shapes[p + "ffn.0.bias"] = (FFN, DIM), (FFN,)
        shapes[p + "ffn.2.weight"], shapes[p + "ffn.2.bias"] = (DIM, FFN), (DIM,)
    assert set(shapes) == set(W.official_dit_keys(LAYERS))
    out = {}
    for k, s in shapes.items():
        scale = (
            1 / math.sqrt(s[1] * math.prod(s[2:])) if len(s) >= 2 and "modulation" not in k else 0.3
        )
        v = torch.randn(s, generator=g) * scale
        out[k] = 1 + 0.1 * v if "norm" in k and k.endswith("weight") else v
    return out


def official_lora(seed: int = 1, *, prefix: str = "pipe.dit.") -> dict[str, torch.Tensor]:
    """``pytorch_model.bin``: LoRA A/B for every target (§2.7) and a patch_embedding2 override."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in range(LAYERS):
        for t in W.LORA_TARGETS:
            fan_in = FFN if t == "ffn.2" else DIM
            fan_out = FFN if t == "ffn.0" else DIM
            out[f"{prefix}blocks.{n}.{t}.lora_A.default.weight"] = (
                torch.randn(RANK, fan_in, generator=g) * 0.3
            )
            out[f"{prefix}blocks.{n}.{t}.lora_B.default.weight"] = (
                torch.randn(fan_out, RANK, generator=g) * 0.3
            )
    out[prefix + "patch_embedding2.weight"] = torch.randn(DIM, 16, 1, 2, 2, generator=g) * 0.2
    out[prefix + "patch_embedding2.bias"] = torch.randn(DIM, generator=g) * 0.1
    return out  # fmt: skip


def tiny_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(2)
    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                            attn_scales=[], temperal_downsample=[False, True, True]).eval()  # fmt: skip


def vae_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKLWan`` keys -> Wan's (reference §4.1 renames, inverted)."""
    res = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
           "conv2": "residual.6", "conv_shortcut": "shortcut"}  # fmt: skip

    def resnet(rest: str) -> str:
        for a, b in res.items():
            if rest.startswith(a):
                return b + rest[len(a) :]
        return rest

    out = {}
    for key, v in state.items():
        parts = key.split(".")
        if parts[0] in ("quant_conv", "post_quant_conv"):
            new = {"quant_conv": "conv1", "post_quant_conv": "conv2"}[parts[0]] + "." + parts[1]
        elif parts[1] == "conv_in":
            new = f"{parts[0]}.conv1.{parts[2]}"
        elif parts[1] == "norm_out":
            new = f"{parts[0]}.head.0.{parts[2]}"
        elif parts[1] == "conv_out":
            new = f"{parts[0]}.head.2.{parts[2]}"
        elif parts[1] == "mid_block":
            idx = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[2:4])]
            rest = ".".join(parts[4:])
            new = f"{parts[0]}.middle.{idx}." + (resnet(rest) if idx != 1 else rest)
        elif parts[1] == "down_blocks":
            new = f"encoder.downsamples.{parts[2]}." + resnet(".".join(parts[3:]))
        elif parts[1] == "up_blocks" and parts[3] == "resnets":
            new = f"decoder.upsamples.{4 * int(parts[2]) + int(parts[4])}." + resnet(
                ".".join(parts[5:])
            )
        elif parts[1] == "up_blocks" and parts[3] == "upsamplers":
            new = f"decoder.upsamples.{4 * int(parts[2]) + 3}." + ".".join(parts[5:])
        else:
            raise AssertionError(f"unhandled VAE key {key}")
        out[new] = v
    return out


def tiny_t5():
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(3)
    config = UMT5Config(vocab_size=40, d_model=TEXT, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                        feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                        layer_norm_epsilon=1e-6, tie_word_embeddings=False)  # fmt: skip
    return UMT5EncoderModel(config).eval()


def t5_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers umT5 encoder keys -> Wan's (reference §4.2 table, inverted)."""
    table = {v: k for k, v in W._T5_BLOCK.items()}
    out = {"token_embedding.weight": state["shared.weight"],
           "norm.weight": state["encoder.final_layer_norm.weight"]}  # fmt: skip
    for key, v in state.items():
        if key.startswith("encoder.block."):
            n, rest = key.split(".", 3)[2:]
            out[f"blocks.{n}.{table[rest]}"] = v
    return out


def tokenizer_files(tmp_path) -> dict[str, bytes]:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [
        "a",
        "red",
        "fox",
        "sharp",
        "video",
        "high",
        "quality,cinema",
        "HD,清晰,运动,电影,高清,high",
    ]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")  # fmt: skip
    folder = tmp_path / "tok"
    fast.save_pretrained(folder)
    return {f"{W.TOKENIZER_DIR}/{p.name}": p.read_bytes() for p in folder.iterdir()}


def _torch_bytes(state) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _safetensors_bytes(state) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("enhancer-files")
    vae, t5 = tiny_vae(), tiny_t5()
    return {
        "dit": official_dit(),
        "lora": official_lora(),
        "vae_model": vae,
        "t5_model": t5,
        "main": {
            W.DIT_FILE: _safetensors_bytes(official_dit()),
            W.LORA_FILE: _torch_bytes(official_lora()),
        },
        "wan": {
            W.VAE_FILE: _torch_bytes(vae_to_official(vae.state_dict())),
            W.T5_FILE: _torch_bytes(t5_to_official(t5.state_dict())),
            **tokenizer_files(tmp),
        },
    }


@pytest.fixture(scope="module")
def hub(files, tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf")
    build_hf_cache(cache, REPO, files["main"])
    build_hf_cache(cache, WAN, files["wan"])
    return cache


@pytest.fixture(scope="module")
def enhancer(hub):
    with offline_hf_cache(hub):
        return MUGVEnhancer.from_pretrained(quirks=EXACT, **FP32)


def _folder(tmp_path, files, main=None, wan=None):
    """The official files as one local folder (``repo_or_dir``)."""
    for rel, data in {**files["main"], **files["wan"], **(main or {}), **(wan or {})}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path


def _video(b: int = 1, frames: int = FRAMES, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, 1, H, Wd, generator=g) * 1.6 - 0.8
    drift = torch.linspace(0, 0.3, frames).view(1, 1, frames, 1, 1)
    return (base + drift * torch.randn(b, 3, 1, H, Wd, generator=g) * 0.3).clamp(-1, 1)


# --------------------------------------------------------------------------- reference DiT


def reference_dit(sd, x, y, t, context, *, lora=None, alpha=ALPHA):
    """The official enhancer DiT forward in plain fp32 torch, from reference §2.2-§2.4, over
    the official keys. ``t`` [B]; frame-0 tokens use t0 = 0. ``lora``: official name ->
    (A, B), applied unmerged: W x + b + (alpha / r) B (A x)."""
    sd = {k: v.double() for k, v in sd.items()}
    x, y, context = x.double(), y.double(), context.double()

    def lin(name, h):
        out = F.linear(h, sd[name + ".weight"], sd[name + ".bias"])
        if lora is not None and name in lora:
            a, b = (m.double() for m in lora[name])
            out = out + (alpha / a.shape[0]) * F.linear(F.linear(h, a), b)
        return out

    def ln(h, eps=1e-6):
        return F.layer_norm(h, h.shape[-1:], eps=eps)

    def rms(h, w, eps=1e-6):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w

    B = x.shape[0]
    # 1. tokens: both patch embeddings summed, flattened (f, h, w)
    h = F.conv3d(x, sd["patch_embedding.weight"], sd["patch_embedding.bias"], stride=(1, 2, 2))
    h = h + F.conv3d(
        y, sd["patch_embedding2.weight"], sd["patch_embedding2.bias"], stride=(1, 2, 2)
    )
    f, gh, gw = h.shape[2:]
    h = h.flatten(2).transpose(1, 2)
    L = h.shape[1]
    cond = torch.zeros(L, dtype=torch.bool)
    cond[: gh * gw] = True  # x_mask: frame-0 tokens

    # 2. time: sinusoid (cos first, float64), MLP, projection; the same for t0 = 0
    def time(tt):
        half = FREQ // 2
        arg = tt.double()[:, None] * torch.pow(10000.0, -torch.arange(half).double() / half)
        s = torch.cat([torch.cos(arg), torch.sin(arg)], 1)
        e = lin("time_embedding.2", F.silu(lin("time_embedding.0", s)))
        return e, lin("time_projection.1", F.silu(e)).view(B, 6, DIM)

    e, e0 = time(t)
    e_t0, e0_t0 = time(torch.zeros_like(t))
    # 3. text
    ctx = lin("text_embedding.2", F.gelu(lin("text_embedding.0", context), approximate="tanh"))
    # RoPE: consecutive pairs, split t / h / w by d - 4(d // 6), 2(d // 6), 2(d // 6)
    d = HEAD_DIM
    dims = [d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)]
    pos = [torch.arange(f).view(f, 1, 1).expand(f, gh, gw), torch.arange(gh).view(1, gh, 1).expand(f, gh, gw),
           torch.arange(gw).view(1, 1, gw).expand(f, gh, gw)]  # fmt: skip
    angles = torch.cat(
        [p.reshape(L, 1).double() * torch.pow(10000.0, -torch.arange(0, k, 2).double() / k)
         for p, k in zip(pos, dims, strict=True)], dim=1)  # fmt: skip
    rot = torch.polar(torch.ones_like(angles), angles)  # [L, d / 2]

    def rope(q):  # [B, L, N, K]
        c = torch.view_as_complex(q.reshape(*q.shape[:-1], -1, 2))
        return torch.view_as_real(c * rot[None, :, None]).flatten(-2)

    def attention(prefix, q_in, kv_in, use_rope):
        q = rms(lin(prefix + ".q", q_in), sd[prefix + ".norm_q.weight"])
        k = rms(lin(prefix + ".k", kv_in), sd[prefix + ".norm_k.weight"])
        v = lin(prefix + ".v", kv_in)
        q, k, v = (m.view(B, m.shape[1], HEADS, d) for m in (q, k, v))
        if use_rope:
            q, k = rope(q), rope(k)
        w = torch.softmax(torch.einsum("blnk,bsnk->bnls", q, k) / math.sqrt(d), dim=-1)
        return lin(prefix + ".o", torch.einsum("bnls,bsnk->blnk", w, v).flatten(2))

    def per_token(mod, a, b):  # modulation + e, selected per token by the mask
        m, m0 = mod + a, mod + b  # [B, k, D]
        return torch.where(cond[None, :, None, None], m0[:, None], m[:, None])  # [B, L, k, D]

    for n in range(LAYERS):
        p = f"blocks.{n}"
        m = per_token(sd[p + ".modulation"], e0, e0_t0).unbind(2)
        a = ln(h) * (1 + m[1]) + m[0]
        h = h + attention(p + ".self_attn", a, a, True) * m[2]
        c = F.layer_norm(h, (DIM,), sd[p + ".norm3.weight"], sd[p + ".norm3.bias"], 1e-6)
        h = h + attention(p + ".cross_attn", c, ctx, False)
        b = ln(h) * (1 + m[4]) + m[3]
        h = h + lin(p + ".ffn.2", F.gelu(lin(p + ".ffn.0", b), approximate="tanh")) * m[5]
    hm = per_token(sd["head.modulation"], e[:, None], e_t0[:, None]).unbind(2)
    out = lin("head.head", ln(h) * (1 + hm[1]) + hm[0])  # [B, L, 2 * 2 * 16]
    out = out.view(B, f, gh, gw, 1, 2, 2, 16).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return out.reshape(B, 16, f, gh * 2, gw * 2).float()


def _merged_official(files):
    """The official DiT with the .bin's full tensors applied (official load order)."""
    sd = dict(files["dit"])
    for k, v in files["lora"].items():
        if ".lora_" not in k:
            sd[k[len("pipe.dit.") :]] = v
    return sd


def _official_lora_pairs(files):
    pairs = {}
    for k, v in files["lora"].items():
        if ".lora_A." in k:
            name = k[len("pipe.dit.") : k.index(".lora_A.")]
            pairs[name] = (v, files["lora"][k.replace(".lora_A.", ".lora_B.")])
    return pairs


def _inputs(seed=7, b=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, 3, 4, 4, generator=g)
    z = torch.randn(b, 16, 3, 4, 4, generator=g)
    ctx = torch.randn(b, 512, TEXT, generator=g)
    ctx[:, 20:] = 0  # zero-padded rows, as the encoder output
    return x, z, ctx


# --------------------------------------------------------------------------- loading


def test_official_files_load_strictly_and_round_trip(enhancer, files, tmp_path):
    """Every tensor lands where the spec puts it; save_pretrained -> from_pretrained is exact."""
    sd = enhancer.transformer.state_dict()
    dit, lora = files["dit"], files["lora"]
    w2 = lora["pipe.dit.patch_embedding2.weight"]
    assert torch.equal(
        sd["patch_embedding.weight"], torch.cat([dit["patch_embedding.weight"], w2], 1)
    )
    assert torch.equal(sd["patch_embedding.bias"],
                       dit["patch_embedding.bias"] + lora["pipe.dit.patch_embedding2.bias"])  # fmt: skip
    assert torch.equal(sd["blocks.1.norm2.weight"], dit["blocks.1.norm3.weight"])  # the swap
    assert torch.equal(
        sd["blocks.0.attn2.to_out.0.base_layer.weight"], dit["blocks.0.cross_attn.o.weight"]
    )
    assert torch.equal(sd["blocks.1.ffn.net.0.proj.lora_B.default.weight"],
                       lora["pipe.dit.blocks.1.ffn.0.lora_B.default.weight"])  # fmt: skip
    assert torch.equal(sd["scale_shift_table"], dit["head.modulation"])
    assert enhancer.lora_rank == RANK
    n_lora = sum(1 for k in sd if ".lora_" in k)
    assert n_lora == 2 * len(W.LORA_TARGETS) * LAYERS
    vae_ref, t5_ref = files["vae_model"].state_dict(), files["t5_model"].state_dict()
    assert vae_ref.keys() == enhancer.vae.state_dict().keys()
    assert all(torch.equal(v, vae_ref[k]) for k, v in enhancer.vae.state_dict().items())
    assert all(torch.equal(v, t5_ref[k]) for k, v in enhancer.text_encoder.state_dict().items())

    saved = enhancer.save_pretrained(tmp_path / "saved")
    again = MUGVEnhancer.from_pretrained(saved, dtype=torch.float32)
    for a, b in [(enhancer.transformer, again.transformer), (enhancer.vae, again.vae),
                 (enhancer.text_encoder, again.text_encoder)]:  # fmt: skip
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x, z, ctx = _inputs()
    assert torch.equal(
        again.predict_velocity(x, z, 300.0, ctx), enhancer.predict_velocity(x, z, 300.0, ctx)
    )
    # The saved folder as a Hub repo (one folder, resolved offline from the cache).
    cache = tmp_path / "hf"
    build_hf_cache(cache, "me/enhancer", {str(p.relative_to(saved)): p.read_bytes()
                                          for p in saved.rglob("*") if p.is_file()})  # fmt: skip
    with offline_hf_cache(cache):
        hubbed = MUGVEnhancer.from_pretrained("me/enhancer", dtype=torch.float32)
    assert torch.equal(
        hubbed.predict_velocity(x, z, 300.0, ctx), again.predict_velocity(x, z, 300.0, ctx)
    )


def test_vae_constants_are_wans():
    """diffusers' AutoencoderKLWan defaults are the Wan2.1 normalisation of reference §4.1."""
    from diffusers import AutoencoderKLWan

    cfg = AutoencoderKLWan(base_dim=8).config
    assert cfg.latents_mean[:4] == [-0.7571, -0.7089, -0.9113, 0.1075]
    assert cfg.latents_std[-3:] == [1.1253, 2.8251, 1.9160]


def test_official_1_3b_parameter_counts():
    """Reference §2.1 and §2.7 on the meta device: the folded DiT has the MUG count minus the
    merged bias (1,419,096,640 - 1,536); the LoRA adds 349,962,240."""
    from peft import LoraConfig, inject_adapter_in_model

    with torch.device("meta"):
        sd = {k: torch.empty(s) for k, s in _official_1_3b_shapes().items()}
    assert len(sd) == 827
    config = W.dit_config(sd)
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
        assert sum(p.numel() for p in model.parameters()) == 1_419_096_640 - 1_536
        inject_adapter_in_model(
            LoraConfig(r=256, lora_alpha=4.0, target_modules=W.LORA_TARGET_REGEX), model
        )
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert lora == 349_962_240


def _official_1_3b_shapes():
    D, Fd = 1536, 8960
    shapes = {"patch_embedding.weight": (D, 16, 1, 2, 2), "patch_embedding.bias": (D,),
              "patch_embedding2.weight": (D, 16, 1, 2, 2), "patch_embedding2.bias": (D,),
              "text_embedding.0.weight": (D, 4096), "text_embedding.0.bias": (D,),
              "text_embedding.2.weight": (D, D), "text_embedding.2.bias": (D,),
              "time_embedding.0.weight": (D, 256), "time_embedding.0.bias": (D,),
              "time_embedding.2.weight": (D, D), "time_embedding.2.bias": (D,),
              "time_projection.1.weight": (6 * D, D), "time_projection.1.bias": (6 * D,),
              "head.modulation": (1, 2, D), "head.head.weight": (64, D), "head.head.bias": (64,)}  # fmt: skip
    for key in W.official_dit_keys(30)[17:]:
        rest = key.split(".", 2)[2]
        if rest == "modulation":
            shapes[key] = (1, 6, D)
        elif rest.startswith("ffn.0"):
            shapes[key] = (Fd, D) if rest.endswith("weight") else (Fd,)
        elif rest.startswith("ffn.2"):
            shapes[key] = (D, Fd) if rest.endswith("weight") else (D,)
        elif rest.endswith(("q.weight", "k.weight", "v.weight", "o.weight")) and "norm" not in rest:
            shapes[key] = (D, D)
        else:
            shapes[key] = (D,)
    return shapes


# --------------------------------------------------------------------------- the DiT


def test_dit_forward_matches_reference(enhancer, files):
    """Folded patch embedding, per-token timesteps (frame 0 at t = 0) and the unmerged LoRA
    at scale alpha / r equal the spec's forward over the official keys, in fp32."""
    x, z, ctx = _inputs(b=2)
    got = enhancer.predict_velocity(x, z, 300.0, ctx)
    want = reference_dit(_merged_official(files), x, z, torch.full((2,), 300.0), ctx,
                         lora=_official_lora_pairs(files))  # fmt: skip
    assert_close(got, want, rtol=1e-4, atol=2e-5, name="velocity")
    # The per-token timesteps matter: t = 300 on every token gives another result.
    plain = enhancer.transformer(torch.cat([x, z], 1), timestep=torch.full((2,), 300.0),
                                 encoder_hidden_states=ctx, return_dict=False)[0]  # fmt: skip
    assert (plain - got).abs().max() > 1e-3


def test_lora_is_exactly_the_merged_weight_difference(enhancer, files):
    """Output with the adapter == output of the base model with W + (alpha / r) B A merged
    by hand; and differs from the base model without the LoRA (the LoRA is active)."""
    from diffusers import WanTransformer3DModel

    x, z, ctx = _inputs()
    with_lora = enhancer.predict_velocity(x, z, 300.0, ctx)
    state = {k.replace(".base_layer.", "."): v for k, v in enhancer.transformer.state_dict().items()
             if ".lora_" not in k}  # fmt: skip
    base = build_transformer(dict(enhancer.transformer.config), state, {}, dtype=torch.float32)
    names = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
             "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
             "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj",
             "ffn.2": "ffn.net.2"}  # fmt: skip
    merged = dict(state)
    for name, (a, b) in _official_lora_pairs(files).items():
        n, target = name.split(".", 2)[1:]
        key = f"blocks.{n}.{names[target]}.weight"
        merged[key] = state[key] + (ALPHA / RANK) * b @ a
    fused = build_transformer(dict(enhancer.transformer.config), merged, {}, dtype=torch.float32)
    assert isinstance(fused, WanTransformer3DModel)

    def run(model):
        return model(torch.cat([x, z], 1), timestep=_steps(), encoder_hidden_states=ctx,
                     return_dict=False)[0]  # fmt: skip

    assert_close(run(fused), with_lora, rtol=1e-4, atol=1e-5, name="merged vs adapter")
    assert (run(base) - with_lora).abs().max() > 1e-2


def _steps():
    t = torch.full((1, 12), 300.0)
    t[:, :4] = 0
    return t


# --------------------------------------------------------------------------- the refinement


def test_one_step_equals_the_spec_loop(enhancer, files):
    """__call__ == the hand-written §1.4 loop: encode (posterior mean, Wan normalisation),
    x = 0.7 z + 0.3 eps with seeded CPU noise, frame 0 pinned, CFG 2.0 against Wan's
    negative prompt through the reference DiT, x - 0.3 v, frame 0 reset, decode."""
    video = _video(b=2)
    out = enhancer(video, ["a red fox", "sharp video"], seed=11, output_type="pt")

    vae, t5, tok = files["vae_model"], files["t5_model"], enhancer.tokenizer
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        z = (vae.encode(video).latent_dist.mode() - mean) / std

        def text(prompts):
            t = tok(
                prompts, padding="max_length", max_length=512, truncation=True, return_tensors="pt"
            )
            return (
                t5(t.input_ids, attention_mask=t.attention_mask).last_hidden_state
                * t.attention_mask[..., None]
            )

        eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(11))
        x = 0.7 * z + 0.3 * eps
        x[:, :, 0] = z[:, :, 0]
        sd, lora, t = _merged_official(files), _official_lora_pairs(files), torch.full((2,), 300.0)
        v_pos = reference_dit(sd, x, z, t, text(["a red fox", "sharp video"]), lora=lora)
        v_neg = reference_dit(sd, x, z, t, text([WAN_NEGATIVE_PROMPT] * 2), lora=lora)
        x = x - 0.3 * (v_neg + 2.0 * (v_pos - v_neg))
        x[:, :, 0] = z[:, :, 0]
        want = vae.decode(x * std + mean).sample.clamp(-1, 1)
    assert_close(out.latents, x, rtol=1e-4, atol=5e-5, name="latents")
    assert_close(out.videos, want, rtol=1e-4, atol=5e-5, name="pixels")
    assert out.videos.shape == (2, 3, FRAMES, H, Wd)
    # Frame 0 is never enhanced: its latent is the input's (reference Q6).
    assert_close(out.latents[:, :, 0], z[:, :, 0], name="frame 0")


def test_seed_batch_and_outputs(enhancer, tmp_path):
    video = _video()
    a = enhancer(video, seed=3, output_type="latent").latents
    assert torch.equal(enhancer(video, seed=3, output_type="latent").latents, a)
    assert not torch.equal(enhancer(video, seed=4, output_type="latent").latents, a)
    # Batch of two == each alone (noise drawn for the batch in one call: sample 0 matches).
    pair = enhancer(torch.cat([video, _video(seed=9)]), seed=3, output_type="latent").latents
    assert_close(pair[:1], a, rtol=1e-5, atol=1e-6)
    # uint8: truncation by default, rounding as the option.
    pt = enhancer(video, seed=3, output_type="pt").videos
    trunc = enhancer(video, seed=3, output_type="np").videos
    x = (pt.clamp(-1, 1) + 1) * 127.5
    assert np.array_equal(
        trunc[0], x.floor().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 3, 0).numpy()
    )
    rounded = MUGVEnhancer(
        **enhancer.components, quirks=EnhancerQuirks(bf16_input=False, truncate_uint8=False)
    )
    rnd = rounded(video, seed=3, output_type="np").videos
    assert np.array_equal(
        rnd[0], (x + 0.5).floor().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 3, 0).numpy()
    )
    # MP4 in, MP4 out at the input's fps and size.
    src = write_mp4(((video[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy(),
                    tmp_path / "in.mp4", fps=24)  # fmt: skip
    res = enhancer(src, seed=1, output_type="mp4", output_path=tmp_path / "out")
    assert res.paths == [tmp_path / "out" / "0000_in_enhance.mp4"]
    clip = read_mp4(res.paths[0])
    assert (clip.num_frames, clip.size, clip.fps) == (FRAMES, (H, Wd), 24.0)


def test_padding_keeps_the_frame_count(enhancer):
    video = _video(frames=11)
    with pytest.raises(ValueError, match=r"11 frames.*4k \+ 1.*pad_frames=True"):
        enhancer(video)
    out = enhancer(video, pad_frames=True, seed=0, output_type="pt")
    assert out.videos.shape[2] == 11 and out.latents.shape[2] == 4
    padded = torch.cat([video, video[:, :, -1:].expand(-1, -1, 2, -1, -1)], 2)
    assert_close(out.videos, enhancer(padded, seed=0, output_type="pt").videos[:, :, :11])


def test_offload_gives_the_same_result(enhancer, hub):
    video = _video()
    ref = enhancer(video, seed=2, output_type="latent").latents
    again = MUGVEnhancer(**enhancer.components, quirks=EXACT).enable_model_offload()
    assert torch.equal(again(video, seed=2, output_type="latent").latents, ref)
    with offline_hf_cache(hub):
        blocks = MUGVEnhancer.from_pretrained(quirks=EXACT, offload="block", **FP32)
    assert torch.equal(blocks(video, seed=2, output_type="latent").latents, ref)
    assert blocks._block_offload.max_resident <= 2


def test_official_bf16_precision_stays_close(hub, enhancer):
    """The default (official) precision: bf16 input, VAE, encoder and DiT."""
    with offline_hf_cache(hub):
        bf16 = MUGVEnhancer.from_pretrained(head_dim=HEAD_DIM)
    assert bf16.dtype == torch.bfloat16 and bf16.quirks == EnhancerQuirks()
    assert bf16.transformer.scale_shift_table.dtype == torch.float32  # diffusers keeps it fp32
    video = _video()
    a = bf16(video, seed=2, output_type="pt").videos
    b = enhancer(video, seed=2, output_type="pt").videos
    assert_close(a, b, dtype=torch.bfloat16, atol=0.1, rtol=0.1)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: torch.zeros(1, 3, 1, H, Wd), ValueError, "one frame: that is an image"),
        (lambda: torch.zeros(1, 3, 10, H, Wd), ValueError, "10 frames.*4k \\+ 1"),
        (lambda: torch.zeros(1, 3, 9, 40, 32), ValueError, "40 x 32 is not a multiple of 16"),
        (lambda: torch.zeros(1, 3, H, Wd), ValueError, "looks like an image"),
        (lambda: "ref.png", ValueError, "is an image"),
        (lambda: np.zeros((9, H, Wd, 3), np.float32), ValueError, "must be uint8"),
        (lambda: 3, TypeError, "unsupported video type"),
    ],
    ids=["one-frame", "frames", "size", "4d", "png", "float-array", "int"],
)
def test_bad_videos(enhancer, make, error, match):
    with pytest.raises(error, match=match):
        enhancer(make())


def test_bad_call_arguments(enhancer):
    with pytest.raises(ValueError, match="3 prompts for 1 videos"):
        enhancer(_video(), ["a", "b", "c"])
    with pytest.raises(ValueError, match="output_path"):
        enhancer(_video(), output_type="mp4")
    with pytest.raises(ValueError, match="output_type"):
        enhancer(_video(), output_type="gif")
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        enhancer(_video(), guidance=float("nan"))
    with pytest.raises(ValueError, match="seed must be an integer"):
        enhancer(_video(), seed="42")
    with pytest.raises(ValueError, match=r"sigma must be in \(0, 1\]"):
        enhancer(_video(), sigma=0.0)
    with pytest.raises(TypeError, match=r"floating torch\.dtype"):
        MUGVEnhancer.from_pretrained(dtype="bf16")


def test_out_of_memory_suggests_offload_and_tiling(enhancer, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")

    small = MUGVEnhancer(**enhancer.components, quirks=EXACT)
    monkeypatch.setattr(small, "predict_velocity", oom)
    with pytest.raises(torch.OutOfMemoryError, match=r"enable_model_offload.*enable_vae_tiling"):
        small(_video())


def test_faulty_files_fail_before_building(files, tmp_path):
    good = files["main"]
    # Missing file
    folder = _folder(tmp_path / "missing", files)
    (folder / W.LORA_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin"):
        MUGVEnhancer.from_pretrained(folder, **FP32)
    # Truncated safetensors and .bin
    for name in (W.DIT_FILE, W.LORA_FILE):
        folder = _folder(
            tmp_path / f"trunc-{name[9:12]}", files, main={name: good[name][: len(good[name]) // 2]}
        )
        with pytest.raises(ValueError, match="truncated or corrupt"):
            MUGVEnhancer.from_pretrained(folder, **FP32)
    # LoRA keys that do not map: a wrong prefix, an unknown target, a missing tensor
    bad = official_lora(prefix="model.dit.")
    folder = _folder(tmp_path / "prefix", files, main={W.LORA_FILE: _torch_bytes(bad)})
    with pytest.raises(ValueError, match=r"pipe\.dit\.<name>.*'model\.dit\.blocks\.0\."):
        MUGVEnhancer.from_pretrained(folder, **FP32)
    extra = official_lora() | {
        "pipe.dit.blocks.0.self_attn.qkv.lora_A.default.weight": torch.zeros(RANK, DIM)
    }
    folder = _folder(tmp_path / "target", files, main={W.LORA_FILE: _torch_bytes(extra)})
    with pytest.raises(ValueError, match=r"1 keys do not map.*self_attn\.qkv\.lora_A"):
        MUGVEnhancer.from_pretrained(folder, **FP32)
    partial = {k: v for k, v in official_lora().items() if "blocks.1.ffn.2.lora_B" not in k}
    folder = _folder(tmp_path / "partial", files, main={W.LORA_FILE: _torch_bytes(partial)})
    with pytest.raises(
        ValueError, match=r"1 of the 40 LoRA tensors are missing.*blocks\.1\.ffn\.2\.lora_B"
    ):
        MUGVEnhancer.from_pretrained(folder, **FP32)
    # A DiT without patch_embedding2 (the stock Wan model) is not the enhancer
    stock = {k: v for k, v in files["dit"].items() if not k.startswith("patch_embedding2")}
    folder = _folder(tmp_path / "stock", files, main={W.DIT_FILE: _safetensors_bytes(stock)})
    with pytest.raises(ValueError, match=r"missing 'patch_embedding2\.bias'"):
        MUGVEnhancer.from_pretrained(folder, **FP32)

    # Code in a weight file is refused
    class Boom:
        def __reduce__(self):
            return (print, ("executed",))

    folder = _folder(
        tmp_path / "pickle", files, main={W.LORA_FILE: _torch_bytes({"pipe.dit.x": Boom()})}
    )
    with pytest.raises(ValueError, match="refused"):
        MUGVEnhancer.from_pretrained(folder, **FP32)


def test_offline_without_cache_says_how_to_download(tmp_path):
    with offline_hf_cache(tmp_path / "empty"), pytest.raises(FileNotFoundError) as err:
        MUGVEnhancer.from_pretrained(**FP32)
    assert "hf download MUG-V/MUG-V-inference" in str(err.value)
    assert "offline mode is on" in str(err.value)  # told apart from the network (issue 19)


# --------------------------------------------------------------------------- chaining and CLI


def _mp4(path, frames=FRAMES, size=(H, Wd), fps=24.0):
    video = _video(frames=frames) if size == (H, Wd) else torch.zeros(1, 3, frames, *size)
    u8 = ((video[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    return write_mp4(u8, path, fps=fps)


class _FixedText:
    """Fixed random text embeddings for the generator (no encoder weights needed)."""

    dim = 16

    def __call__(self, prompts):
        g = torch.Generator().manual_seed(0)
        return torch.randn(len(prompts), 8, 16, generator=g), torch.ones(
            len(prompts), 8, dtype=torch.bool
        )


def _generator_models():
    import mugv_dit
    import mugv_vae

    torch.manual_seed(0)
    dit = mugv_dit.MUGDiT(mugv_dit.DiTConfig.preset("debug", text_dim=16))
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return dit.eval(), mugv_vae.VideoVAE(mugv_vae.VAEConfig.preset("debug")).eval()


def test_pipeline_enhance_chains_generation(enhancer, tmp_path):
    """pipe.enhance(output) == the enhancer on the generated pixels (tensor and MP4 outputs)."""
    from mugv_infer import MUGVPipeline

    pipe = MUGVPipeline(*_generator_models(), _FixedText())
    kwargs = dict(duration=17, height=H, width=Wd, steps=2, progress=False, seed=1)
    out = pipe("a fox", output_type="pt", **kwargs)
    enhanced = pipe.enhance(out, "a red fox", enhancer=enhancer, seed=5)
    assert pipe.enhancer is enhancer
    assert torch.equal(enhanced.videos, enhancer(out.videos, "a red fox", seed=5).videos)
    assert enhanced.videos.shape == out.videos.shape == (1, 3, 17, H, Wd)
    files = pipe("a fox", output_type="mp4", output_path=tmp_path / "gen.mp4", **kwargs)
    res = pipe.enhance(files, seed=5, output_type="mp4", output_path=tmp_path / "enh")
    assert res.paths == [tmp_path / "enh" / "0000_gen_enhance.mp4"]
    assert read_mp4(res.paths[0]).fps == files.write_fps


def test_cli_enhance_single_batch_and_errors(hub, tmp_path, capsys):
    from mugv_infer.cli import main

    common = ["--device", "cpu", "--dtype", "fp32", "--head-dim", str(HEAD_DIM), "--seed", "3"]
    src = _mp4(tmp_path / "clip.mp4")
    out = tmp_path / "sharp.mp4"
    with offline_hf_cache(hub):
        assert main(["enhance", str(src), "--prompt", "a red fox", "--out", str(out), *common]) == 0
        assert capsys.readouterr().out.split() == [str(out)]
        clip = read_mp4(out)
        assert (clip.num_frames, clip.size, clip.fps) == (FRAMES, (H, Wd), 24.0)
        # The same through the API (default quirks: bf16 input, truncation), written alike.
        with offline_hf_cache(hub):
            api = MUGVEnhancer.from_pretrained(**FP32)
        want = api(src, "a red fox", seed=3, output_type="np").videos[0]
        again = read_mp4(write_mp4(want, tmp_path / "api.mp4", fps=24.0, crf=5))
        assert np.array_equal(clip.frames, again.frames)

        _mp4(tmp_path / "in" / "b.mp4")
        sheet = tmp_path / "sample.csv"
        sheet.write_text("file_name,text\nclip.mp4,a red fox\nb.mp4,sharp video\n")
        (tmp_path / "in" / "clip.mp4").write_bytes(src.read_bytes())
        assert main(["enhance", "--batch", str(sheet), "--video-dir", str(tmp_path / "in"),
                     "--out-dir", str(tmp_path / "o"), *common]) == 0  # fmt: skip
        printed = capsys.readouterr().out.split()
        assert printed == [str(tmp_path / "o" / "0000_clip_enhance.mp4"),
                           str(tmp_path / "o" / "0001_b_enhance.mp4")]  # fmt: skip
        assert read_mp4(printed[1]).num_frames == FRAMES

    # Bad input: one error line, exit 2, before any model loads (the model repo is bogus).
    bogus = ["--model", str(tmp_path / "no-such-model"), *common]
    _mp4(tmp_path / "ten.mp4", frames=10)
    _mp4(tmp_path / "odd.mp4", size=(40, 32))
    bad_sheet = tmp_path / "bad.csv"
    bad_sheet.write_text("video,prompt\nclip.mp4,x\n")
    cases = [
        ([str(tmp_path / "ten.mp4"), "--out", str(out)], r"10 frames, not 4k \+ 1.*--pad-frames"),
        ([str(tmp_path / "odd.mp4"), "--out", str(out)], r"40 x 32, not a multiple of 16"),
        ([str(tmp_path / "ref.png"), "--out", str(out)], r"is an image"),
        ([str(tmp_path / "none.mp4"), "--out", str(out)], r"does not exist"),
        ([str(src), str(src), "--out", str(out)], r"--out takes one video"),
        (
            ["--batch", str(bad_sheet), "--out-dir", str(tmp_path)],
            r"columns must be file_name,text",
        ),
    ]
    for argv, message in cases:
        assert main(["enhance", *argv, *bogus]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mugv enhance: error: ") and len(err.strip().splitlines()) == 1
        assert __import__("re").search(message, err), err
    with offline_hf_cache(tmp_path / "empty"):
        assert main(["enhance", str(src), "--out", str(out), *common]) == 2
    err = capsys.readouterr().err
    assert "hf download MUG-V/MUG-V-inference" in err and "offline mode is on" in err


def test_cli_generate_then_enhance(files, tmp_path, capsys):
    """mugv generate --enhance: the generated clip and <clip>_enhance.mp4 next to it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    from mugv_infer.cli import main

    dit, vae = _generator_models()
    folder = _folder(tmp_path / "models", files, main={"dit.pt": _torch_bytes(dit.state_dict()),
                                                       "vae.pt": _torch_bytes(vae.state_dict())})  # fmt: skip
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "fox": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    t5_dir = tmp_path / "t5"
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(t5_dir)  # fmt: skip
    T5EncoderModel(T5Config(vocab_size=5, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                            decoder_start_token_id=0)).save_pretrained(t5_dir)  # fmt: skip
    out = tmp_path / "gen.mp4"
    argv = ["generate", "--prompt", "a fox", "--model", str(folder), "--text-encoder", str(t5_dir),
            "--vae-preset", "debug", "--device", "cpu", "--dtype", "fp32", "--height", str(H),
            "--width", str(Wd), "--duration", "17", "--steps", "2", "--no-progress", "--out", str(out),
            "--enhance", "--enhancer-model", str(folder), "--head-dim", str(HEAD_DIM)]  # fmt: skip
    assert main(argv) == 0
    enhanced = tmp_path / "gen_enhance.mp4"
    assert capsys.readouterr().out.split() == [str(out), str(enhanced)]
    a, b = read_mp4(out), read_mp4(enhanced)
    assert a.frames.shape == b.frames.shape == (17, H, Wd, 3) and a.fps == b.fps


def test_clean_prompt_is_wans_cleaning():
    """ftfy repairs mojibake, HTML is unescaped twice and whitespace collapsed (ref §4.2)."""
    from mugv_infer.enhance.enhancer import clean_prompt

    assert clean_prompt("  a\tcat &amp;amp; a   dog\n") == "a cat & a dog"
    assert clean_prompt("cafÃ©  au lait") == "café au lait"
