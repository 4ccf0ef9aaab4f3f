"""MUG-DiT on Megatron-Core (reference §G.2): the same function as ``mugv_dit.MUGDiT``
with the blocks built from a layer spec and Megatron's parameter names.

Dimension legend: B batch, C latent channels, T latent frames, H/W latent height/width,
h/w patch-grid height/width, L = T h w + 2 tokens, D hidden, K head dim, S text tokens,
E text dim.

Parameter names (Megatron layout, §G.2): ``x_embedder.proj``, ``timestep_embedder.mlp.{0,2}``,
``fps_embedder.mlp.{0,2}``, ``timestep_block.1``, ``context_embedder.proj.{fc1,fc2}``,
``start_token``, ``end_token``, ``decoder.layers.{i}.*``, ``final_layer.scale_shift_table.bias``,
``final_layer.linear``. :mod:`mugv_train.parallel._convert` maps them to the mugv-dit layout.
"""

from __future__ import annotations

import math
import re
from functools import partial

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from mugv_dit import DiTConfig, Mlp, PatchEmbed3D, TimestepEmbedder
from mugv_train.config import ParallelConfig, check_parallel_divides
from mugv_train.parallel._layers import MUGDiTBlockStack, ScaleShiftTable
from mugv_train.parallel._spec import mugdit_layer_spec


def megatron_transformer_config(
    model: DiTConfig, parallel: ParallelConfig | None = None
) -> TransformerConfig:
    """The Megatron ``TransformerConfig`` of a MUG-DiT size (flags of §G.5, fusions off on CPU)."""
    parallel = parallel or ParallelConfig()
    cuda = torch.cuda.is_available()
    std = model.initializer_range
    config = TransformerConfig(
        num_layers=model.depth,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_heads,
        kv_channels=model.head_dim,
        ffn_hidden_size=model.mlp_hidden_size,
        add_bias_linear=True,
        add_qkv_bias=True,
        normalization="RMSNorm",
        qk_layernorm=True,
        layernorm_epsilon=model.qk_norm_eps,
        activation_func=partial(F.gelu, approximate="tanh"),
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        use_cpu_initialization=not cuda,
        tensor_model_parallel_size=parallel.tensor_parallel,
        sequence_parallel=parallel.sequence_parallel and parallel.tensor_parallel > 1,
        context_parallel_size=parallel.context_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        virtual_pipeline_model_parallel_size=(
            parallel.virtual_pipeline if parallel.virtual_pipeline > 1 else None
        ),
        # hidden states travel between stages in the compute dtype; their [L, B, D] shape
        # changes with the bucket, so the schedule exchanges shapes first
        pipeline_dtype=torch.bfloat16 if parallel.precision == "bf16" else torch.float32,
        variable_seq_lengths=True,
        moe_token_dispatcher_type="alltoall",  # no MoE; the default refuses variable lengths
        init_method=partial(torch.nn.init.normal_, mean=0.0, std=std),
        output_layer_init_method=partial(
            torch.nn.init.normal_, mean=0.0, std=std / math.sqrt(2 * model.depth)
        ),
        recompute_granularity=None if parallel.recompute == "none" else parallel.recompute,
        recompute_method="uniform" if parallel.recompute == "full" else None,
        recompute_num_layers=1 if parallel.recompute == "full" else None,
        fp8="hybrid" if parallel.fp8 else None,
        bf16=parallel.precision == "bf16",
    )
    # the conditioning embedders live on every pipeline stage and virtual stage (as in
    # NeMo's DiT): finalize_model_grads sums the gradients of parameters marked
    # `pipeline_parallel` over the stages when the config has a conditional embedder
    config.has_cond_embedder = True
    return config


class _ContextEmbedder(nn.Module):
    """pre-LN(E, no affine) -> fc1 -> GELU(tanh) -> fc2 -> post-LN(D, no affine) (§A.3).

    mugv-dit's ``Mlp`` under Megatron's name ``proj`` (``context_embedder.proj.fc{1,2}``).
    """

    def __init__(self, text_dim: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.proj = Mlp(text_dim, hidden, hidden)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        y = self.proj(F.layer_norm(text, text.shape[-1:], eps=self.eps))
        return F.layer_norm(y, y.shape[-1:], eps=self.eps)


class _FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_features: int) -> None:
        super().__init__()
        self.scale_shift_table = ScaleShiftTable(2, hidden, torch.float32)
        self.linear = nn.Linear(hidden, out_features)
        self.eps = 1e-6

    def forward(self, x: torch.Tensor, t_vec: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D]; t_vec: [B, N, D] (t or t0 per token) -> [B, N, out]."""
        shift, scale = self.scale_shift_table(t_vec.repeat(1, 1, 2)).unbind(-2)
        y = F.layer_norm(x.float(), x.shape[-1:], eps=self.eps) * (1 + scale) + shift
        return self.linear(y.to(self.linear.weight.dtype))


def rope_angles(
    frame_index: torch.Tensor,
    grid: tuple[int, int],
    head_dim: int,
    theta: float,
    space_max: int,
    time_max: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the 3D RoPE per token (§A.8): [L, B, 1, K/2] each.

    frame_index: [B, T + 2] positions of (start, frames..., end); the start token sits at
    (h 0, w 0, t frame_index[0]) and the end token at (h-1, w-1, t frame_index[T+1]).
    """
    b, t2 = frame_index.shape
    gh, gw = grid
    n_freq = head_dim // 6
    dev = frame_index.device
    inv = theta ** (-6.0 * torch.arange(n_freq, dtype=torch.float32, device=dev) / head_dim)
    t_idx = frame_index.clamp(max=time_max - 1).float()
    rows = torch.arange(gh, device=dev).repeat_interleave(gw).float()
    cols = torch.arange(gw, device=dev).repeat(gh).float()
    t_frames = t2 - 2
    hh = torch.cat([rows.new_zeros(1), rows.repeat(t_frames), rows.new_full((1,), gh - 1)]).clamp(
        max=space_max - 1
    )
    ww = torch.cat([cols.new_zeros(1), cols.repeat(t_frames), cols.new_full((1,), gw - 1)]).clamp(
        max=space_max - 1
    )
    tt = torch.cat(
        [t_idx[:, :1], t_idx[:, 1:-1].repeat_interleave(gh * gw, dim=1), t_idx[:, -1:]], dim=1
    )  # [B, L]
    ang = torch.cat(
        [
            (hh[:, None] * inv).unsqueeze(1).expand(-1, b, -1),
            (ww[:, None] * inv).unsqueeze(1).expand(-1, b, -1),
            tt.t()[:, :, None] * inv,
        ],
        dim=-1,
    )  # [L, B, K/2]
    return ang.cos()[:, :, None, :], ang.sin()[:, :, None, :]


def _groups():
    """The context-parallel group of this rank, or None without CP."""
    from megatron.core import parallel_state as ps

    cp = ps.get_context_parallel_group() if ps.get_context_parallel_world_size() > 1 else None
    return cp


def _local(x: torch.Tensor, shards: int, index: int) -> torch.Tensor:
    """Chunk ``index`` of ``shards`` along dim 0 (a slice: its gradient is this chunk's)."""
    n = x.shape[0] // shards
    return x[index * n : (index + 1) * n]


def stage_layers(depth: int, pp_rank: int, pp_size: int, vp_stage: int, vp_size: int):
    """(first global layer, number of layers) of pipeline rank ``pp_rank``'s virtual stage
    ``vp_stage``: Megatron's interleaved assignment (chunk v of rank p holds the layers of
    model chunk v * PP + p, each of depth / (PP x VPP) layers)."""
    per_chunk = depth // (pp_size * vp_size)
    return (vp_stage * pp_size + pp_rank) * per_chunk, per_chunk


class MegatronMUGDiT(MegatronModule):
    """MUG-DiT with Megatron-Core blocks, split over tensor, sequence, context and pipeline
    parallel ranks as set up by :func:`mugv_train.parallel.init_distributed`.

    ``forward`` has the signature and semantics of ``mugv_dit.MUGDiT.forward``:
    x [B, C, T, H, W], timestep [B] on 0-1000, text [B, S, E], text_mask [B, S], fps [B],
    x_mask [B, T] bool (True = generate), frame_indices [B, T + 2] -> float32 [B, 2C, T, H, W].

    Pipeline parallel (reference §G.2): this module is one model chunk, ``vp_stage`` of
    this pipeline rank (Megatron's interleaved layout, :func:`stage_layers`). The
    conditioning embedders (timestep, fps, timestep_block, caption) are on every chunk
    (marked ``pipeline_parallel``: Megatron's ``finalize_model_grads`` sums them over the
    stages), ``x_embedder`` and the start/end tokens on the first, ``final_layer`` on the
    last. A chunk that is not the first reads its hidden state from
    :meth:`set_input_tensor`; one that is not the last returns its hidden state
    [L_local, B, D]. Megatron's ``get_forward_backward_func`` schedules the chunks.

    Context parallel (CP) and sequence parallel (SP, with TP): the token sequence
    [start, video tokens, end] (L = T h w + 2, zero-padded to a multiple of CP x SP and the
    padding masked out of attention) is cut into CP chunks and each chunk into TP
    sub-chunks. Every rank computes its own tokens' embedding, modulation, blocks and final
    layer, so every parameter's gradient is this rank's part of the whole (summed by
    Megatron: over CP by DDP, which averages over DP x CP and so needs the loss times CP,
    as the schedule's loss scaling does; over TP for parameters marked
    ``sequence_parallel``). Self-attention all-gathers K/V over CP with the global 3D-RoPE
    positions of each chunk; under SP, Megatron's linears gather and reduce-scatter the
    tokens and the caption is split over TP like them. The velocity is gathered from all
    sub-chunks at the end. The start and end tokens are ordinary positions of the global
    sequence, so they are never duplicated.
    """

    def __init__(
        self,
        model: DiTConfig,
        parallel: ParallelConfig | None = None,
        vp_stage: int = 0,
        *,
        init_weights: bool = True,
    ) -> None:
        from megatron.core import parallel_state as ps
        from megatron.core.enums import ModelType

        from mugv_train.parallel._checks import check_backend, check_layout

        parallel = parallel or ParallelConfig()
        check_backend(parallel)
        check_layout(model, parallel, world_size=parallel.model_parallel)
        config = megatron_transformer_config(model, parallel)
        # init_weights=False: the weights are loaded right after (train()); Megatron then
        # allocates each rank's shards without initialising them (no full master weight
        # per linear, as its CPU initialisation would build)
        config.perform_initialization = init_weights
        super().__init__(config=config)
        self.model_type = ModelType.encoder_or_decoder
        self.share_embeddings_and_output_weights = False  # no word embedding to tie
        self.dit_config = model
        self.parallel = parallel
        pp_rank = ps.get_pipeline_model_parallel_rank()
        pp_size = ps.get_pipeline_model_parallel_world_size()
        vp_size = max(1, parallel.virtual_pipeline)
        check_parallel_divides(model.num_heads, model.depth, 1, pp_size, vp_size)
        if not 0 <= vp_stage < vp_size:
            raise ValueError(f"vp_stage must be in [0, {vp_size}), got {vp_stage}")
        self.vp_stage = vp_stage
        self.pre_process = pp_rank == 0 and vp_stage == 0
        self.post_process = pp_rank == pp_size - 1 and vp_stage == vp_size - 1
        self.layer_offset, self.num_local_layers = stage_layers(
            model.depth, pp_rank, pp_size, vp_stage, vp_size
        )
        self.input_tensor: torch.Tensor | None = None
        d = model.hidden_size
        if self.pre_process:
            self.x_embedder = PatchEmbed3D(model.patch_size, model.in_channels, d)
        self.timestep_embedder = TimestepEmbedder(d, model.frequency_embedding_size)
        self.fps_embedder = TimestepEmbedder(d, model.frequency_embedding_size)
        self.timestep_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.context_embedder = _ContextEmbedder(model.text_dim, d, model.caption_norm_eps)
        if self.pre_process:
            self.start_token = nn.Parameter(torch.randn(d) * model.initializer_range)
            self.end_token = nn.Parameter(torch.randn(d) * model.initializer_range)
        self.decoder = MUGDiTBlockStack(
            config,
            mugdit_layer_spec(parallel.transformer_impl, parallel.cp_comm_type),
            self.layer_offset,
            self.num_local_layers,
        )
        if self.post_process:
            self.final_layer = _FinalLayer(d, model.patch_volume * model.out_channels)
        self._mark_parameters()

    def _mark_parameters(self) -> None:
        """Gradient bookkeeping attributes read by Megatron's DDP, finalize and clip."""
        first_chunk = self.pre_process  # pipeline rank 0, virtual stage 0
        for name, p in self.named_parameters():
            if name.startswith(_SHARED):
                p.pipeline_parallel = True  # summed over stages (has_cond_embedder)
                if not first_chunk:
                    p.shared = True  # counted once by the gradient norm
            if not name.startswith(("decoder.", "context_embedder.")):
                # computed per token chunk under SP: partial over TP (the caption is
                # split and re-gathered by Megatron's mappings, its gradient is whole)
                p.sequence_parallel = self.config.sequence_parallel

    def sharded_state_dict(
        self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None
    ) -> dict:
        """Megatron ``dist_checkpointing`` (torch_dist) view of this rank's parameters.

        Keys are the Megatron names with the layers stacked (``decoder.layers.<name>`` of
        leading size ``depth``); TP-split linears carry their TP axis. The conditioning
        embedders exist on every pipeline stage: their replica id carries the stage so
        that exactly one rank (stage 0, TP 0, DP 0) writes them (reference §G.2).
        """
        from megatron.core import parallel_state as ps

        sd = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        pp_rank = ps.get_pipeline_model_parallel_rank()
        stage = pp_rank * max(1, self.parallel.virtual_pipeline) + self.vp_stage
        if stage:
            shared = tuple(f"{prefix}{name}" for name in _SHARED)
            for key, value in sd.items():
                if key.startswith(shared) and hasattr(value, "replica_id"):
                    rid = value.replica_id
                    rid = (rid,) if isinstance(rid, int) else tuple(rid)
                    value.replica_id = (stage, *rid[1:]) if rid and rid[0] == 0 else rid
        return sd

    def set_input_tensor(self, input_tensor) -> None:
        """The hidden state received from the previous pipeline stage (not the first)."""
        if isinstance(input_tensor, list | tuple):
            input_tensor = input_tensor[0] if input_tensor else None
        self.input_tensor = input_tensor

    def _grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        pt, ph, pw = self.dit_config.patch_size
        t, h, w = x.shape[2:]
        return -(-t // pt), -(-h // ph), -(-w // pw)

    def _shards(self) -> tuple[int, int, int, int]:
        """(CP size, CP rank, SP size, SP rank): how this rank's tokens are cut."""
        from megatron.core import parallel_state as ps

        sp = ps.get_tensor_model_parallel_world_size() if self.config.sequence_parallel else 1
        sp_rank = ps.get_tensor_model_parallel_rank() if sp > 1 else 0
        return (
            ps.get_context_parallel_world_size(),
            ps.get_context_parallel_rank(),
            sp,
            sp_rank,
        )

    def _fp8_rows(self) -> int:
        """Row multiple of FP8 GEMM inputs (TE: 16), 1 without FP8."""
        return _FP8_ALIGN if self.config.fp8 else 1

    def padded_length(self, x: torch.Tensor) -> int:
        """Tokens [start, video, end] of input x, padded to a multiple of CP x SP (x 16
        with FP8, so that every rank's rows fit TE's FP8 GEMMs)."""
        gt, gh, gw = self._grid(x)
        cp, _, sp, _ = self._shards()
        unit = cp * sp * self._fp8_rows()
        return -(-(gt * gh * gw + 2) // unit) * unit

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        fps: torch.Tensor | float | None = None,
        x_mask: torch.Tensor | None = None,
        frame_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from megatron.core.tensor_parallel import (
            gather_from_sequence_parallel_region,
            scatter_to_sequence_parallel_region,
        )

        cfg = self.dit_config
        b, c, t, hgt, wid = x.shape
        if c != cfg.in_channels or text.shape[-1] != cfg.text_dim:
            raise ValueError(
                f"input has {c} latent channels and text dim {text.shape[-1]}; the model expects "
                f"{cfg.in_channels} and {cfg.text_dim}"
            )
        cp_group = _groups()
        cp, cp_rank, sp, sp_rank = self._shards()
        dtype = self.timestep_embedder.mlp[0].weight.dtype
        gt, gh, gw = self._grid(x)
        length = gt * gh * gw + 2
        padded = self.padded_length(x)
        # 1. conditioning: t and t0 embeddings plus fps (§A.3), on every pipeline stage
        fps_t = torch.as_tensor(
            cfg.default_fps if fps is None else fps, device=x.device, dtype=torch.float32
        )
        fps_t = fps_t.reshape(-1).expand(b) if fps_t.numel() == 1 else fps_t.reshape(b)
        fps_emb = self.fps_embedder(fps_t.to(dtype))
        # the timestep is cast to the model dtype before the sinusoid, as in the official code
        t_vec = self.timestep_embedder(timestep.reshape(b).to(dtype)) + fps_emb
        t0_vec = self.timestep_embedder(torch.zeros(b, device=x.device, dtype=dtype)) + fps_emb
        t_mlp, t0_mlp = self.timestep_block(t_vec), self.timestep_block(t0_vec)
        # 2. caption: embed, keep padded with a key mask (equivalent to the packed varlen form)
        s = text.shape[1]
        tmask = (
            torch.ones(b, s, dtype=torch.bool, device=x.device)
            if text_mask is None
            else text_mask.bool()
        )
        context = self.context_embedder(text.to(dtype)).transpose(0, 1)  # [S, B, D]
        s_pad = (-s) % (sp * self._fp8_rows())  # masked caption padding (SP split, FP8 rows)
        if s_pad:
            context = F.pad(context, (0, 0, 0, 0, 0, s_pad))
            tmask = F.pad(tmask, (0, s_pad), value=False)
        if sp > 1:  # split over TP like the tokens; Megatron's kv linear gathers it back
            context = scatter_to_sequence_parallel_region(context)
        # 3. per-token choice of t / t0 modulation (§A.4) and the 3D RoPE angles
        frame_mask = (
            torch.ones(b, t, dtype=torch.bool, device=x.device) if x_mask is None else x_mask.bool()
        )
        if frame_mask.shape != (b, t):
            raise ValueError(f"x_mask must be [B, T] = {(b, t)}, got {tuple(frame_mask.shape)}")
        pt = cfg.patch_size[0]  # a temporal patch is generated if any of its frames is
        frame_mask = F.pad(frame_mask, (0, (-t) % pt), value=False).view(b, gt, pt).any(-1)
        tok_mask = frame_mask.repeat_interleave(gh * gw, dim=1)
        tok_mask = F.pad(tok_mask, (1, 1), value=False).t()  # [L, B]
        if frame_indices is None:
            frame_indices = torch.arange(gt + 2, device=x.device).expand(b, -1)
        elif frame_indices.dim() == 1:
            frame_indices = frame_indices.expand(b, -1)
        cos, sin = rope_angles(
            frame_indices,
            (gh, gw),
            cfg.head_dim,
            cfg.rope_theta,
            cfg.rope_space_positions,
            cfg.rope_time_positions,
        )
        pad = padded - length
        key_mask = None
        if pad:  # zero tokens at the end, masked out as attention keys
            tok_mask = F.pad(tok_mask, (0, 0, 0, pad), value=False)
            cos, sin = (F.pad(a, (0, 0, 0, 0, 0, 0, 0, pad)) for a in (cos, sin))
            key_mask = torch.arange(padded, device=x.device) < length
            key_mask = key_mask.expand(b, -1)
        # this rank's tokens: CP chunk, then its SP sub-chunk. RoPE covers the CP chunk
        # (attention runs on it after the linears' SP gather), the modulation the sub-chunk.
        rope = (_local(cos, cp, cp_rank), _local(sin, cp, cp_rank))
        own = _local(_local(tok_mask, cp, cp_rank), sp, sp_rank)  # [L_local, B]
        mod = torch.where(own[..., None], t_mlp[None], t0_mlp[None])  # [L_local, B, 6D]
        # 4. hidden state: [start, tokens, end] on the first stage, else from the previous one
        if self.pre_process:
            tokens = self.x_embedder(x.to(self.x_embedder.proj.weight.dtype))
            tokens = tokens.flatten(2).transpose(1, 2)  # [B, N, D], N = T h w (t-major)
            seq = torch.cat(
                [self.start_token.expand(b, 1, -1), tokens, self.end_token.expand(b, 1, -1)],
                dim=1,
            ).transpose(0, 1)  # [L, B, D]
            seq = F.pad(seq, (0, 0, 0, 0, 0, pad)) if pad else seq
            seq = _local(_local(seq, cp, cp_rank), sp, sp_rank)
        else:
            if self.input_tensor is None:
                raise RuntimeError(
                    "a pipeline stage other than the first needs set_input_tensor() before "
                    "forward (Megatron's pipeline schedule sets it)"
                )
            seq = self.input_tensor
        # 5. blocks
        seq = self.decoder(seq, mod, context, tmask, rope, key_mask)
        if not self.post_process:
            return seq.contiguous()  # sent to the next stage as is
        # 6. final layer on this rank's tokens, t / t0 chosen per token, then all tokens'
        # velocities gathered (backward: each rank keeps its own tokens' gradient)
        vec = torch.where(own[..., None], t_vec[None], t0_vec[None]).transpose(0, 1)
        out = self.final_layer(seq.transpose(0, 1), vec).float().transpose(0, 1)
        if sp > 1:
            out = gather_from_sequence_parallel_region(out, tensor_parallel_output_grad=False)
        if cp > 1:
            out = gather_from_sequence_parallel_region(out, False, group=cp_group)
        out = out[1 : length - 1].transpose(0, 1)  # [B, N, p * 2C]: the video tokens
        # 7. unpatchify: per token (pt, ph, pw, C_out) with C_out fastest (§A.9), then crop
        pt, ph, pw = cfg.patch_size
        co = cfg.out_channels
        out = out.reshape(b, gt, gh, gw, pt, ph, pw, co).permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = out.reshape(b, co, gt * pt, gh * ph, gw * pw)
        return out[:, :, :t, :hgt, :wid]


_FP8_ALIGN = 16  # TE's FP8 GEMMs take inputs whose rows are a multiple of 16
_SHARED = ("timestep_embedder.", "fps_embedder.", "timestep_block.", "context_embedder.")
_STAGE_KEYS = ("x_embedder.", "start_token", "end_token", "final_layer.")


def _to_stage(key: str, offset: int, count: int) -> str | None:
    """Global layer key -> this stage's local key (None if the layer is on another stage)."""
    m = re.match(r"decoder\.layers\.(\d+)\.(.*)", key)
    if not m:
        return key
    i = int(m.group(1)) - offset
    return f"decoder.layers.{i}.{m.group(2)}" if 0 <= i < count else None


def _to_global(key: str, offset: int) -> str:
    m = re.match(r"decoder\.layers\.(\d+)\.(.*)", key)
    return key if not m else f"decoder.layers.{int(m.group(1)) + offset}.{m.group(2)}"


def _chunks(model) -> list[MegatronMUGDiT]:
    """The model chunks of this rank (one, or one per virtual pipeline stage), unwrapped."""
    chunks = list(model) if isinstance(model, list | tuple) else [model]
    out = []
    for chunk in chunks:
        while not isinstance(chunk, MegatronMUGDiT) and isinstance(
            getattr(chunk, "module", None), nn.Module
        ):
            chunk = chunk.module
        out.append(chunk)
    return out


def load_full_state_dict(model, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load a full (TP 1, all layers) Megatron state dict into this rank's part of ``model``
    (a chunk or the list of this rank's virtual-stage chunks: their tensor-parallel shard of
    their layers). Strict: missing or unexpected tensors raise ``ValueError`` naming them."""
    from megatron.core import parallel_state

    from mugv_train.parallel._convert import shard_for_tensor_parallel

    rank = parallel_state.get_tensor_model_parallel_rank()
    size = parallel_state.get_tensor_model_parallel_world_size()
    for chunk in _chunks(model):
        own = chunk.state_dict()
        staged = {}
        for key, value in state.items():
            if key.endswith("_extra_state"):
                continue
            local = _to_stage(key, chunk.layer_offset, chunk.num_local_layers)
            if local is None or (local not in own and key.startswith(_STAGE_KEYS)):
                continue  # held by another pipeline stage
            staged[local] = value
        shard = shard_for_tensor_parallel(staged, rank, size)
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in shard.items()
            if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
        ]
        if mismatched:
            raise ValueError(
                "checkpoint does not fit this model (different DiTConfig?): "
                + "; ".join(mismatched[:5])
            )
        missing, unexpected = chunk.load_state_dict(shard, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if strict and (missing or unexpected):
            raise ValueError(
                f"checkpoint does not match the model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )


def stage_state_dict(model) -> dict[str, torch.Tensor]:
    """This rank's tensors of all its chunks, layers under their global numbers (the
    conditioning embedders, identical in every chunk, once)."""
    out: dict[str, torch.Tensor] = {}
    for chunk in _chunks(model):
        for k, v in chunk.state_dict().items():
            if not k.endswith("_extra_state"):
                out.setdefault(_to_global(k, chunk.layer_offset), v)
    return out


def load_stage_state_dict(model, state: dict[str, torch.Tensor]) -> tuple[list, list]:
    """Inverse of :func:`stage_state_dict`; returns (missing, unexpected) global names."""
    used: set[str] = set()
    missing: list[str] = []
    for chunk in _chunks(model):
        own = chunk.state_dict()
        local = {}
        for k in own:
            if k.endswith("_extra_state"):
                continue
            g = _to_global(k, chunk.layer_offset)
            if g in state:
                local[k] = state[g]
                used.add(g)
            else:
                missing.append(g)
        if not missing:
            chunk.load_state_dict(local, strict=False)
    return sorted(set(missing)), sorted(set(state) - used)


def _layer_group(key: str) -> int:
    """The global layer of a key (-1 for the parts outside the decoder)."""
    m = re.match(r"decoder\.layers\.(\d+)\.", key)
    return int(m.group(1)) if m else -1


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The full (TP 1) Megatron state dict with global layer numbers, on global rank 0's
    CPU; every other rank gets ``{}`` (collective: every rank calls it).

    Streamed, never gathered onto every device: on the ranks of data-parallel and context
    -parallel rank 0, each tensor's TP shards are gathered onto TP rank 0 one tensor at a
    time and moved to its CPU there (device memory: one tensor x TP); each later pipeline
    stage then sends its tensors to the first stage's rank one layer at a time
    (point-to-point). Only rank 0 ever holds the whole model, in CPU memory.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from mugv_train.parallel._convert import merge_tensor_parallel

    local = stage_state_dict(model)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return {k: v.detach().cpu().clone() for k, v in local.items()}
    if ps.get_data_parallel_rank() != 0 or ps.get_context_parallel_rank() != 0:
        return {}  # replicas of what DP rank 0, CP rank 0 holds
    tp_size = ps.get_tensor_model_parallel_world_size()
    tp_rank = ps.get_tensor_model_parallel_rank()
    merged: dict[str, torch.Tensor] = {}
    if tp_size == 1:
        merged = {k: v.detach().cpu().clone() for k, v in local.items()}
    else:
        group = ps.get_tensor_model_parallel_group()
        dst = dist.get_global_rank(group, 0)
        for key, value in local.items():  # same keys, same order on every TP rank
            value = value.detach().contiguous()
            parts = [torch.empty_like(value) for _ in range(tp_size)] if tp_rank == 0 else None
            dist.gather(value, parts, dst=dst, group=group)
            if tp_rank == 0:
                shards = [{key: part.cpu()} for part in parts]
                merged[key] = merge_tensor_parallel(shards)[key]
    if tp_rank != 0:
        return {}
    pp_size = ps.get_pipeline_model_parallel_world_size()
    if pp_size == 1:
        return merged
    group = ps.get_pipeline_model_parallel_group()
    pp_rank = ps.get_pipeline_model_parallel_rank()
    first = dist.get_global_rank(group, 0)
    layers = sorted({_layer_group(k) for k in merged})
    if pp_rank != 0:  # send this stage's layers, one message per layer
        dist.send_object_list([layers], dst=first, group=group)
        for layer in layers:
            part = {k: v for k, v in merged.items() if _layer_group(k) == layer}
            dist.send_object_list([part], dst=first, group=group)
        return {}
    full = dict(merged)
    for stage in range(1, pp_size):
        src = dist.get_global_rank(group, stage)
        box: list = [None]
        dist.recv_object_list(box, src=src, group=group)
        for _ in box[0]:
            part: list = [None]
            dist.recv_object_list(part, src=src, group=group)
            for k, v in part[0].items():
                full.setdefault(k, v)  # the conditioning embedders: stage 0's copy
    return full
