"""`MUGDiT`: the MUG-V diffusion transformer, state-dict compatible with the official `dit.pt`.

Dimension legend: B batch, C latent channels, T/H/W latent frames/height/width,
T'/H'/W' patch grid, N = T'H'W' video tokens, L = N + 2 tokens (start/end), D hidden,
S text tokens, E text dim, P = pt*ph*pw patch volume.

The forward follows reference §A: patchify, conditioning (AdaLN-single with a per-token
choice of t or t0), text embedding, start/end tokens, 3D RoPE, blocks, final layer,
unpatchify with cropping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mugv_dit._attention import check_attention_backend
from mugv_dit._checkpoint import require_diffusers
from mugv_dit.config import DiTConfig
from mugv_dit.kernels import resolve_kernel_backend
from mugv_dit.layers.blocks import MUGDiTBlock
from mugv_dit.layers.embedders import (
    CaptionEmbedder,
    FinalLayer,
    PatchEmbed3D,
    TimestepEmbedder,
)
from mugv_dit.layers.rope import RotaryEmbedding3D

require_diffusers(feature="MUGDiT")

from diffusers import ConfigMixin, ModelMixin  # noqa: E402  (after the version check)
from diffusers.loaders import PeftAdapterMixin  # noqa: E402

_FIELDS = tuple(f.name for f in dataclasses.fields(DiTConfig))
_raw_config = threading.local()


@contextlib.contextmanager
def _diffusers_config_view() -> Iterator[None]:
    """Inside diffusers' own loading code ``model.config`` is diffusers' dict: its quantizers
    write attributes onto it (``model.config.quantization_config = ...``), which a frozen
    `DiTConfig` refuses. Everywhere else ``model.config`` is the typed `DiTConfig`."""
    before = getattr(_raw_config, "on", False)
    _raw_config.on = True
    try:
        yield
    finally:
        _raw_config.on = before


def _as_config(config: DiTConfig | Mapping[str, Any] | None, fields: dict[str, Any]) -> DiTConfig:
    if isinstance(config, DiTConfig):
        return config.replace(**fields) if fields else config
    if isinstance(config, Mapping):  # diffusers' config dict, e.g. MUGDiT(other.config)
        data = {k: v for k, v in config.items() if not k.startswith("_")}
        return DiTConfig.from_dict({**data, **fields})
    if config is not None:
        raise TypeError(f"config must be a DiTConfig or a dict, got {type(config).__name__}")
    return DiTConfig.from_dict(fields)


class MUGDiT(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """MUG-DiT. ``MUGDiT(DiTConfig.preset("10b"))`` builds the official 10B architecture.

    A diffusers model: ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub``, LoRA
    adapters (``load_lora_adapter``), quantization configs, group offloading. Module names
    and state-dict keys equal the official ``dit.pt`` (reference §A.2), so
    ``load_state_dict(official, strict=True)`` works; ``from_single_file`` reads that file.
    ``MUGDiT(config)`` takes a `DiTConfig` (or its fields as keywords: ``MUGDiT(depth=2,
    ...)``, which is how diffusers' ``from_config`` builds it); ``model.config`` is that
    `DiTConfig`, and ``config.json`` holds its fields.
    """

    config_name = "config.json"
    _supports_group_offloading = True
    _no_split_modules: tuple[str, ...] = ("MUGDiTBlock",)
    _skip_layerwise_casting_patterns: tuple[str, ...] = (
        "x_embedder", "t_embedder", "fps_embedder", "norm",
    )  # fmt: skip

    def __init__(self, config: DiTConfig | Mapping[str, Any] | None = None, **fields: Any) -> None:
        super().__init__()
        config = _as_config(config, fields)
        check_attention_backend(config.attention_backend)
        resolve_kernel_backend(config.kernel_backend, torch.device("cpu"))
        self.register_to_config(**config.to_dict())
        self._typed_config = config
        D = config.hidden_size
        self.x_embedder = PatchEmbed3D(config.patch_size, config.in_channels, D)
        self.t_embedder = TimestepEmbedder(D, config.frequency_embedding_size)
        self.fps_embedder = TimestepEmbedder(D, config.frequency_embedding_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.y_embedder = CaptionEmbedder(config.text_dim, D, config.caption_norm_eps)
        self.start_token = nn.Parameter(torch.empty(D))
        self.end_token = nn.Parameter(torch.empty(D))
        self.blocks = nn.ModuleList(MUGDiTBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(D, config.patch_volume, config.out_channels, config.norm_eps)
        self.rope = RotaryEmbedding3D(
            config.head_dim,
            config.rope_theta,
            config.rope_space_positions,
            config.rope_time_positions,
        )
        self.initialize_weights()

    # -- initialisation -----------------------------------------------------------------
    @torch.no_grad()
    def initialize_weights(self) -> None:
        """PixArt-style initialisation (the official training starts from these choices):
        xavier linears with zero bias, N(0, std) embedders and start/end tokens, tables
        ~ N(0, 1/D), zero cross-attention output and final projection."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for linear in (
            self.t_embedder.mlp[0], self.t_embedder.mlp[2],
            self.fps_embedder.mlp[0], self.fps_embedder.mlp[2],
            self.t_block[1], self.y_embedder.y_proj.fc1, self.y_embedder.y_proj.fc2,
        ):  # fmt: skip
            nn.init.normal_(linear.weight, std=std)
        nn.init.normal_(self.start_token, std=std)
        nn.init.normal_(self.end_token, std=std)
        D = self.config.hidden_size
        for block in self.blocks:
            nn.init.normal_(block.scale_shift_table, std=D**-0.5)
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.bias)
            for norm in (
                block.attn.q_norm,
                block.attn.k_norm,
                block.cross_attn.q_norm,
                block.cross_attn.k_norm,
            ):
                nn.init.ones_(norm.weight)
            nn.init.ones_(block.cross_attn_norm.weight)
            nn.init.zeros_(block.cross_attn_norm.bias)
        nn.init.normal_(self.final_layer.scale_shift_table, std=D**-0.5)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # -- config ---------------------------------------------------------------------------
    @staticmethod
    def _get_init_keys(input_class: type) -> set[str]:
        # ConfigMixin matches config.json keys against __init__'s parameters; ours are the
        # DiTConfig fields (taken as **fields), so from_config(config.json) builds the model.
        if isinstance(input_class, type) and issubclass(input_class, MUGDiT):
            return {"self", *_FIELDS}
        return ConfigMixin._get_init_keys(input_class)

    @property
    def config(self) -> DiTConfig:  # type: ignore[override]
        """The model's `DiTConfig` (settable: runtime fields such as backends)."""
        if getattr(_raw_config, "on", False):
            return self._internal_dict
        return self._typed_config

    @config.setter
    def config(self, value: DiTConfig) -> None:
        if not isinstance(value, DiTConfig):
            raise TypeError(f"config must be a DiTConfig, got {type(value).__name__}")
        self.register_to_config(**value.to_dict())
        self._typed_config = value

    # -- properties -----------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.x_embedder.proj.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- input checks ---------------------------------------------------------------------
    def _check_inputs(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        fps: torch.Tensor | float | None,
        x_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        cfg = self.config
        if not torch.is_tensor(x) or x.ndim != 5:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must be a latent video [B, C, T, H, W], got {shape}")
        B, C, T = x.shape[:3]
        if cfg.in_channels != C:
            raise ValueError(
                f"x has {C} latent channels but the model expects in_channels={cfg.in_channels}"
            )
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
        offloaded = getattr(self, "_hf_hook", None) is not None  # accelerate moves weights
        if x.device != self.device and not offloaded:
            raise ValueError(
                f"x is on {x.device} but the model is on {self.device}; move one of them"
            )
        if x.device.type != "cuda" and cfg.attention_backend != "sdpa":
            raise ValueError(
                f"attention_backend={cfg.attention_backend!r} runs only on CUDA; the model is on "
                f"{x.device.type}: use attention_backend='sdpa' there"
            )
        timestep = torch.as_tensor(timestep, device=x.device)
        if timestep.shape != (B,):
            raise ValueError(
                f"timestep must have shape [B] = [{B}] (one value per sample on the 0-1000 "
                f"scale), got {tuple(timestep.shape)}"
            )
        if text.ndim == 4 and text.shape[1] == 1:
            text = text[:, 0]  # the official [B, 1, S, E] layout
        if text.ndim != 3:
            raise ValueError(f"text must be [B, S, E] (or [B, 1, S, E]), got {tuple(text.shape)}")
        if text.shape[0] != B:
            raise ValueError(f"text batch {text.shape[0]} does not match the latent batch {B}")
        if text.shape[2] != cfg.text_dim:
            raise ValueError(
                f"text width {text.shape[2]} does not match the model's text_dim={cfg.text_dim}; "
                "use the text encoder the model was trained with"
            )
        S = text.shape[1]
        if text_mask is not None:
            if text_mask.shape != (B, S):
                raise ValueError(
                    f"text_mask must be [B, S] = [{B}, {S}], got {tuple(text_mask.shape)}"
                )
            text_mask = text_mask.to(device=x.device, dtype=torch.bool)
            if not bool(text_mask.any(1).all()):
                empty = (~text_mask.any(1)).nonzero().flatten().tolist()
                raise ValueError(
                    f"samples {empty} have no valid text token in text_mask; every caption "
                    "needs at least one token (T5 always keeps its EOS)"
                )
            # Caption positions that are padding in every sample, at the end, are dropped:
            # cross-attention gives a masked key weight exactly 0, so the output and every
            # gradient are unchanged, and the text MLP (E = 4096 wide), the k/v projections
            # and the cross-attention skip them (T5 pads captions to 300 tokens).
            last = int(text_mask.any(0).nonzero().max()) + 1
            if last < S:
                text, text_mask = text[:, :last], text_mask[:, :last]
            if bool(text_mask.all()):
                text_mask = None  # nothing to mask: take the unmasked attention path
        if fps is None:
            fps = cfg.default_fps
        fps = torch.as_tensor(fps, device=x.device)
        if fps.ndim == 2 and fps.shape[1] == 1:
            fps = fps[:, 0]  # the official [B, 1] layout
        if fps.ndim == 0 or fps.shape == (1,):
            fps = fps.reshape(1).expand(B)  # one fps for the batch, as the official code allows
        if fps.shape != (B,):
            raise ValueError(f"fps must be a number, [1] or [B] = [{B}], got {tuple(fps.shape)}")
        if x_mask is None:
            x_mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
        if x_mask.shape != (B, T):
            raise ValueError(
                f"x_mask must be [B, T] = [{B}, {T}] (True = frame to generate), got "
                f"{tuple(x_mask.shape)}"
            )
        if x_mask.dtype != torch.bool:
            raise ValueError(f"x_mask must be a bool tensor (True = generate), got {x_mask.dtype}")
        return timestep, text, text_mask, fps, x_mask.to(x.device)

    def _frame_indices(
        self, frame_indices: torch.Tensor | None, B: int, T: int, device
    ) -> torch.Tensor:
        if frame_indices is None:
            return torch.arange(T + 2, device=device)[None]
        frame_indices = torch.as_tensor(frame_indices, device=device)
        if frame_indices.ndim == 1:
            frame_indices = frame_indices[None]
        if frame_indices.ndim != 2 or frame_indices.shape[0] not in (1, B):
            raise ValueError(
                f"frame_indices must be [T + 2] or [1 or B, T + 2] with B = {B}, got "
                f"{tuple(frame_indices.shape)}"
            )
        if frame_indices.is_floating_point():
            raise ValueError("frame_indices must be integers")
        return frame_indices.long()

    # -- forward ------------------------------------------------------------------------
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
        """Predict the velocity (and the unused learned-sigma channels).

        x: [B, C, T, H, W] noisy latents (any size; padded to the patch internally).
        timestep: [B] on the official 0-1000 scale (1000 = pure noise).
        text: [B, S, E] text embeddings (the official [B, 1, S, E] too).
        text_mask: [B, S] bool/int, True for valid caption tokens; None = all valid.
        fps: number, [1], [B] or [B, 1]; None = ``config.default_fps`` (30, as the official
            pipeline passes).
        x_mask: [B, T] bool, True = frame to generate (timestep t), False = clean
            conditioning frame (timestep 0, for I2V/TI2V); None = every frame generated.
            Start and end tokens always use timestep 0.
        frame_indices: [T' + 2] or [1 or B, T' + 2] temporal RoPE positions of start
            token, frames, end token; None = 0 .. T' + 1.
        Returns float32 [B, 2C, T, H, W] (channels :C are the velocity x0 - noise).
        """
        cfg = self.config
        timestep, text, text_mask, fps, x_mask = self._check_inputs(
            x, timestep, text, text_mask, fps, x_mask
        )
        B, _, T, H, W = x.shape
        dtype = self.dtype
        kernel_backend = resolve_kernel_backend(cfg.kernel_backend, x.device)

        # 1. patchify: [B, C, T, H, W] -> [B, N, D], t-major then h, w
        tokens = self.x_embedder(x.to(dtype))
        Tp, Hp, Wp = tokens.shape[2:]
        tokens = tokens.flatten(2).transpose(1, 2)

        # 2. conditioning: t and t0 (timestep cast to the model dtype before the sinusoid,
        #    reference §A.3), plus the fps embedding, then the shared t_block (AdaLN-single)
        t_both = torch.cat([timestep.to(dtype), torch.zeros_like(timestep, dtype=dtype)])
        t_vec = self.t_embedder(t_both).view(2, B, -1).transpose(0, 1)  # [B, 2, D]
        t_vec = t_vec + self.fps_embedder(fps.to(dtype))[:, None]
        t_mlp = self.t_block(t_vec)  # [B, 2, 6D]

        # 3. text embedding (padding tokens are masked out in cross-attention; trailing
        #    padding common to the batch was cut in _check_inputs)
        y = self.y_embedder(text.to(dtype))

        # 4. start/end tokens; per-token choice of t (generated) or t0 (clean, start/end)
        start = self.start_token.to(dtype).expand(B, 1, -1)
        end = self.end_token.to(dtype).expand(B, 1, -1)
        tokens = torch.cat([start, tokens, end], dim=1)
        pt = cfg.patch_size[0]
        # a temporal patch (pt > 1; the official pt is 1) is generated if any of its frames is
        frame_mask = nn.functional.pad(x_mask, (0, (-T) % pt), value=False).view(B, Tp, pt).any(-1)
        edge = frame_mask.new_zeros(B, 1)
        use_t = torch.cat([edge, frame_mask.repeat_interleave(Hp * Wp, dim=1), edge], dim=1)

        # 5. 3D RoPE angles for every token
        fi = self._frame_indices(frame_indices, B, Tp, x.device)
        self.rope.check((Tp, Hp, Wp), fi)
        cos, sin = self.rope((Tp, Hp, Wp), fi)

        # 6. blocks
        for block in self.blocks:
            args = (tokens, t_mlp, use_t, cos, sin, y, text_mask)
            kwargs = {"attention_backend": cfg.attention_backend, "kernel_backend": kernel_backend}
            if cfg.gradient_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, *args, use_reentrant=False, **kwargs)
            else:
                tokens = block(*args, **kwargs)

        # 7. final layer on the video tokens (pre-t_block vectors, per-token t/t0)
        out = self.final_layer(
            tokens[:, 1:-1], t_vec, use_t[:, 1:-1], kernel_backend=kernel_backend
        )

        # 8. unpatchify: [B, N, (pt ph pw C_out)] -> [B, C_out, T, H, W], crop the padding
        return self.unpatchify(out, (Tp, Hp, Wp))[:, :, :T, :H, :W].float()

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """x: [B, N, P * C_out] ordered (pt, ph, pw, C_out fastest) -> [B, C_out, T'pt, H'ph, W'pw]."""
        B = x.shape[0]
        Tp, Hp, Wp = grid
        pt, ph, pw = self.config.patch_size
        c = self.config.out_channels
        x = x.view(B, Tp, Hp, Wp, pt, ph, pw, c)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, c, Tp * pt, Hp * ph, Wp * pw)

    # -- checkpoints and the Hub ----------------------------------------------------------
    @classmethod
    def from_official(
        cls,
        path: str | os.PathLike[str],
        *,
        config: DiTConfig | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **config_overrides: Any,
    ) -> MUGDiT:
        """Load the official ``dit.pt`` (a plain state dict; read with ``weights_only=True``).

        The architecture is inferred from the tensor shapes unless ``config`` is given, in
        which case every key and shape must match it. ``config_overrides`` change runtime
        fields (e.g. ``attention_backend="flash"``).
        """
        from mugv_dit._checkpoint import load_official_state_dict

        state = load_official_state_dict(path)
        return cls._from_state_dict(
            state, config, dtype, device, config_overrides, source=str(path)
        )

    @classmethod
    def from_single_file(
        cls,
        path: str | os.PathLike[str],
        *,
        config: DiTConfig | None = None,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **config_overrides: Any,
    ) -> MUGDiT:
        """diffusers-style name for `from_official`: one official ``dit.pt`` (or a
        ``.safetensors`` file with the same keys), strict keys, no pickled code executed."""
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
            return cls._from_state_dict(
                state, config, torch_dtype, device, config_overrides, source=str(path)
            )
        return cls.from_official(
            path, config=config, dtype=torch_dtype, device=device, **config_overrides
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        endpoint: str | None = None,
        **kwargs: Any,
    ) -> MUGDiT:
        """Load from a local folder or a Hub repo: a diffusers folder, or the official one.

        Diffusers folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``
        (`save_pretrained`), loaded by diffusers' ``ModelMixin.from_pretrained`` (every
        keyword of it works: ``torch_dtype``, ``quantization_config``, ``subfolder``,
        ``revision``, ``local_files_only``, ...) and checked strictly. Official: a repo or
        folder holding ``dit.pt`` (e.g. ``MUG-V/MUG-V-inference``, of which only ``dit.pt``
        is downloaded), or a path to a ``.pt`` file. Downloads go through the Hugging Face
        cache and honour offline mode (``HF_HUB_OFFLINE=1``). ``dtype`` is ``torch_dtype``;
        `DiTConfig` fields among ``kwargs`` override runtime fields (backends, gradient
        checkpointing).
        """
        from mugv_dit._checkpoint import (
            check_loading_info,
            config_from_json,
            dtype_keyword,
            load_legacy,
            read_config_json,
            resolve_pretrained,
            stored_dtype,
        )

        dtype = dtype if dtype is not None else kwargs.pop("dtype", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        dtype = dtype if dtype is not None else torch_dtype
        hub = {k: kwargs.pop(k, None) for k in ("subfolder", "revision", "cache_dir", "token")}
        local_files_only = bool(kwargs.pop("local_files_only", False))
        kind, paths = resolve_pretrained(
            pretrained_model_name_or_path,
            endpoint=endpoint,
            local_files_only=local_files_only,
            **hub,
        )
        overrides = {k: kwargs.pop(k) for k in _FIELDS if k in kwargs}
        if kind != "diffusers":
            if kwargs.get("quantization_config") is not None:
                raise ValueError(
                    "quantization_config needs a diffusers folder (save_pretrained); convert "
                    "the official dit.pt first: mugv_dit.convert_official_checkpoint(...)"
                )
            if kind == "official":
                return cls.from_official(paths[0], dtype=dtype, device=device, **overrides)
            config, state = load_legacy(paths[0], paths[1])
            return cls._from_state_dict(
                state, config, dtype, device, overrides, source=str(paths[1])
            )
        kwargs.pop("output_loading_info", None)
        # config.json checked before any weights are read: a clear error naming the field
        config_from_json(read_config_json(Path(paths[0]) / "config.json"))
        if dtype is None and kwargs.get("quantization_config") is None:
            dtype = stored_dtype(paths[0])  # keep the saved dtype (diffusers: float32)
        kwargs[dtype_keyword()] = dtype
        with _diffusers_config_view():
            model, info = super().from_pretrained(
                paths[0], output_loading_info=True, local_files_only=True, **overrides, **kwargs
            )
        check_loading_info(info, source=paths[0], cls_name=cls.__name__)
        if device is not None:
            model.to(device)
        return model.eval()

    @classmethod
    def _from_state_dict(
        cls,
        state: dict[str, torch.Tensor],
        config: DiTConfig | None,
        dtype: torch.dtype | None,
        device: torch.device | str | None,
        config_overrides: dict[str, Any],
        *,
        source: str,
    ) -> MUGDiT:
        from mugv_dit._checkpoint import check_state_dict, infer_config

        if config is None:
            config = infer_config(state)
        if config_overrides:
            config = config.replace(**config_overrides)
        with torch.device("meta"):
            model = cls(config)
        check_state_dict(model, state, source=source)
        model.load_state_dict(state, strict=True, assign=True)
        if dtype is not None or device is not None:
            model.to(device=device, dtype=dtype)
        return model.eval()

    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | os.PathLike[str],
        *,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> Path:
        """diffusers' ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model
        .safetensors``, sharded past ``max_shard_size``), written to a temporary folder and
        moved into place file by file. ``dtype`` casts the saved tensors (not the model).
        Returns the folder."""
        from mugv_dit._checkpoint import atomic_save_folder

        def save(tmp: Path) -> None:
            if dtype is None:
                ModelMixin.save_pretrained(self, tmp, **kwargs)
                return
            # Cast while saving, leaving the model untouched: diffusers reads state_dict().
            full = self.state_dict
            self.state_dict = lambda *a, **k: {n: t.to(dtype) for n, t in full(*a, **k).items()}
            try:
                ModelMixin.save_pretrained(self, tmp, **kwargs)
            finally:
                del self.state_dict

        return atomic_save_folder(save, save_directory)

    def push_to_hub(  # type: ignore[override]
        self,
        repo_id: str,
        *,
        token: str | None = None,
        endpoint: str | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str = "Upload MUG-DiT",
        create_pr: bool = False,
        dtype: torch.dtype | None = None,
        **save_kwargs: Any,
    ) -> str:
        """`save_pretrained` and upload to the Hub repo ``repo_id`` (created if missing) in
        one commit; ``endpoint`` selects a private Hub. Returns the commit URL."""
        from mugv_dit._checkpoint import push_folder_to_hub

        return push_folder_to_hub(
            lambda tmp: self.save_pretrained(tmp, dtype=dtype, **save_kwargs),
            repo_id,
            token=token,
            endpoint=endpoint,
            private=private,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
        )
