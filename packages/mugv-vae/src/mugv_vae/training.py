"""`TrainConfig` and `VAETrainer`: single-node VAE training (CPU, one GPU, or DDP via torchrun).

Recipe (paper §3.1.2, §4.1): every latent comes from its own 8 frames; the decoder window
R is drawn per step from ``decode_windows`` (paper: {1, 4, 8}); loss = l1 (adaptive l1 from
``adaptive_start``) + MSE + LPIPS (with weights from a path) + lambda KL, plus a small hinge
GAN term with a 3D patch discriminator from ``gan_start`` (the final stage).

Outputs in ``output_dir``: ``metrics.jsonl`` (one JSON object per logged step),
``checkpoints/step_XXXXXXX/`` (model folder + ``trainer.pt`` with optimiser and
discriminator state), ``final/`` (a ``save_pretrained`` folder). Resuming picks the newest
checkpoint; every random draw is a function of (seed, step, rank), so a resumed run
reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mugv_vae._checkpoint import load_state_dict_strict
from mugv_vae._video_io import ClipSource, _generator
from mugv_vae.config import VAEConfig, check_fields
from mugv_vae.losses import (
    LPIPS,
    LossWeights,
    PatchDiscriminator3D,
    VAELoss,
    hinge_d_loss,
)
from mugv_vae.model import VideoVAE

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a VAE training run needs; JSON-serialisable."""

    output_dir: str
    """Where metrics, checkpoints and the final model go."""
    vae: VAEConfig = field(default_factory=lambda: VAEConfig.preset("debug"))
    """Model topology (ignored when ``init_from`` is given)."""
    init_from: str | None = None
    """A ``save_pretrained`` folder, Hub repo id or official ``vae.pt`` to start from."""
    sdxl_trunk: str | None = None
    """An SDXL VAE in diffusers format (folder or Hub repo) to initialise the 2D trunk."""
    data: str | None = None
    """A folder of videos; ``None`` trains on deterministic synthetic clips."""
    num_frames: int = 16
    """Frames per training clip (a multiple of 8: the latent count is num_frames / 8)."""
    height: int = 32
    width: int = 32
    batch_size: int = 2
    """Clips per step and per rank."""
    steps: int = 100
    lr: float = 1e-3
    warmup_steps: int = 0
    """Linear learning-rate warmup from lr / warmup_steps to lr over the first steps (the
    discriminator's too); 0 = none."""
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    decode_windows: tuple[int, ...] = (1, 4, 8)
    """Decoder windows R drawn per step (capped at the clip's latent count)."""
    loss: LossWeights = field(default_factory=LossWeights)
    lpips_path: str | None = None
    """LPIPS weights file; without it the perceptual term is off."""
    lpips_widths: tuple[int, ...] | None = None
    """Feature-net widths of a non-VGG16 LPIPS file (tests)."""
    adaptive_start: int | None = None
    """Step from which adaptive l1 replaces l1 (``None``: never)."""
    posterior_logvar_init: float | None = None
    """From-scratch runs only: start the encoder's posterior log-variance near this value
    (the bias of ``quant_conv``'s log-variance half). A fresh encoder predicts logvar ~ 0,
    i.e. posterior noise of std 1 against means of std ~0.1, and Adam moves that bias by
    about ``lr`` per step, so short runs decode mostly noise; -6 (std 0.05) fixes that.
    ``None`` keeps the default initialisation (long runs, fine-tuning)."""
    trunk_steps: int = 0
    """The first ``trunk_steps`` of ``steps`` train the 2D trunk alone, as an image
    autoencoder (l1 + MSE with the ``loss`` weights) on ``trunk_frames`` random frames of
    the clips per step; the video steps follow. The paper starts the VAE from a trained
    image VAE (SDXL's); this stands in for it when there is none (``sdxl_trunk`` loads
    one). Single process only."""
    trunk_frames: int = 16
    """Frames per trunk step (each from a randomly drawn clip)."""
    freeze_trunk: bool = False
    """Video steps train the temporal stage only; the 2D trunk stays as it is after the
    trunk steps (or as loaded). Single process only."""
    gan_start: int | None = None
    """Step from which the discriminator trains and the GAN term is on (``None``: never)."""
    disc_lr: float = 1e-4
    disc_channels: int = 32
    bf16: bool = False
    """bf16 autocast for forward passes (weights and optimiser stay fp32)."""
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    device: str = "auto"
    """"auto" (cuda if available, else cpu), "cpu" or "cuda"."""

    def __post_init__(self) -> None:
        check_fields(self)
        check_fields(self.loss)
        if not self.output_dir:
            raise ValueError("TrainConfig.output_dir must name a folder, got ''")
        for name, value in dataclasses.asdict(self.loss).items():
            if value < 0:
                raise ValueError(f"TrainConfig.loss.{name} must be >= 0, got {value}")
        for name in ("lr", "disc_lr", "grad_clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be in [0, 1), got {self.betas}")
        for name in ("weight_decay", "seed", "adaptive_start", "gan_start"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {value}")
        for name in ("disc_channels", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lpips_widths is not None and min(self.lpips_widths, default=0) < 1:
            raise ValueError(f"TrainConfig.lpips_widths must be positive, got {self.lpips_widths}")
        if not _DEVICE.fullmatch(self.device):
            raise ValueError(
                f"TrainConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )
        if self.num_frames < 8 or self.num_frames % 8:
            raise ValueError(f"num_frames must be a positive multiple of 8, got {self.num_frames}")
        if self.height % 8 or self.width % 8 or min(self.height, self.width) < 8:
            raise ValueError(
                f"height/width must be multiples of 8 (>= 8), got {self.height}x{self.width}"
            )
        if not self.decode_windows or min(self.decode_windows) < 1:
            raise ValueError(f"decode_windows must be positive, got {self.decode_windows}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.batch_size < 1 or self.steps < 0:
            raise ValueError("batch_size must be >= 1 and steps >= 0")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")
        if self.trunk_steps < 0 or self.trunk_steps > self.steps:
            raise ValueError(
                f"trunk_steps must be in [0, steps={self.steps}] (they are the first steps "
                f"of the run), got {self.trunk_steps}"
            )
        if self.trunk_frames < 1:
            raise ValueError(f"trunk_frames must be >= 1, got {self.trunk_frames}")
        if self.loss.feature < 0:
            raise ValueError(f"loss.feature must be >= 0, got {self.loss.feature}")
        if self.posterior_logvar_init is not None and self.init_from is not None:
            raise ValueError(
                "posterior_logvar_init initialises a new encoder; it cannot apply with "
                "init_from (a trained encoder already predicts its log-variance)"
            )

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["vae"] = self.vae.to_dict()
        d["loss"] = dataclasses.asdict(self.loss)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise TypeError(f"a TrainConfig must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(names)}")
        if isinstance(data.get("vae"), dict):
            data["vae"] = VAEConfig.from_dict(data["vae"])
        elif isinstance(data.get("vae"), str):
            data["vae"] = VAEConfig.preset(data["vae"])
        if isinstance(data.get("loss"), dict):
            known = {f.name for f in dataclasses.fields(LossWeights)}
            unknown = sorted(set(data["loss"]) - known)
            if unknown:
                raise ValueError(
                    f"unknown TrainConfig.loss fields {unknown}; known: {sorted(known)}"
                )
            data["loss"] = LossWeights(**data["loss"])
        for k in ("betas", "decode_windows", "lpips_widths"):
            if isinstance(data.get(k), list):
                data[k] = tuple(data[k])
        return cls(**data)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of tensors in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


class VAETrainer:
    """Train a `VideoVAE` from a `TrainConfig`. ``train()`` runs (or resumes) to ``steps``."""

    def __init__(self, config: TrainConfig, model: VideoVAE | None = None) -> None:
        self.config = c = config
        self.rank, self.world = _dist_info()
        if c.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(c.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        self.out = Path(c.output_dir)
        torch.manual_seed(c.seed)  # identical initial weights on every rank
        if model is None:
            model = VideoVAE.from_pretrained(c.init_from) if c.init_from else VideoVAE(c.vae)
            if c.sdxl_trunk:
                model.load_diffusers_trunk(c.sdxl_trunk)
            if c.posterior_logvar_init is not None:
                quant = model.temporal_vae.quant_conv.conv
                with torch.no_grad():
                    quant.bias[model.latent_channels :] = c.posterior_logvar_init
        self.model = model.to(self.device).train()
        # parameters the forward never uses (kept for the official layout): frozen, so DDP
        # sees only parameters that receive gradients
        trunk = self.model.spatial_vae.module
        for unused in (
            self.model.logvar,
            *trunk.encoder.conv_norm_out.parameters(),
            *trunk.encoder.conv_out.parameters(),
            *trunk.decoder.conv_in.parameters(),
        ):
            unused.requires_grad_(False)
        frozen = {id(p) for p in self.model.parameters() if not p.requires_grad}
        self._trunk_params = [p for p in trunk.parameters() if id(p) not in frozen]
        self._temporal_params = [p for p in self.model.temporal_vae.parameters()]
        self._frames: ClipSource | None = None  # single frames for the trunk steps
        if self.world > 1 and (c.trunk_steps or c.freeze_trunk or c.loss.feature):
            raise ValueError(
                "trunk_steps, freeze_trunk and loss.feature are single-process only for now; "
                "run them without torchrun (or pre-train the trunk in a single process and "
                "pass the result as init_from)"
            )
        self.ddp: torch.nn.Module = self.model
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
        lpips = (
            LPIPS.from_file(c.lpips_path, c.lpips_widths).to(self.device) if c.lpips_path else None
        )
        self.loss = VAELoss(c.loss, lpips)
        self.disc: PatchDiscriminator3D | None = None
        self.disc_opt: torch.optim.Optimizer | None = None
        if c.gan_start is not None:
            self.disc = PatchDiscriminator3D(c.disc_channels).to(self.device)
            self.disc_opt = torch.optim.AdamW(
                self.disc.parameters(), lr=c.disc_lr, betas=(0.5, 0.9)
            )
        self.data = ClipSource(c.num_frames, c.height, c.width, c.seed, c.data)
        self.step = 0
        self._resume()

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def checkpoints(self) -> list[Path]:
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoint_dir.glob("step_*") if (p / "trainer.pt").is_file())

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_XXXXXXX`` atomically (temp folder + rename)."""
        final = self.checkpoint_dir / f"step_{self.step:07d}"
        if self.rank == 0:
            tmp = self.checkpoint_dir / f".tmp_step_{self.step:07d}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                self.model.save_pretrained(tmp)
                state = {
                    "step": self.step,
                    "optimizer": self.opt.state_dict(),
                    "disc": self.disc.state_dict() if self.disc else None,
                    "disc_optimizer": self.disc_opt.state_dict() if self.disc_opt else None,
                    "train_config": self.config.to_dict(),
                }
                torch.save(state, tmp / "trainer.pt")
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
            except BaseException:  # full disk, Ctrl-C, SIGTERM: no half-written folder
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            for old in self.checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        if self.world > 1:
            dist.barrier()
        return final

    def _resume(self) -> None:
        ckpts = self.checkpoints()
        if not ckpts:
            return
        path = ckpts[-1]
        from safetensors.torch import load_file

        weights = path / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():  # written before VideoVAE was a diffusers model
            weights = path / "model.safetensors"
        try:
            tensors = load_file(weights)
        except Exception as exc:  # safetensors raises its own error type for bad files
            raise ValueError(
                f"cannot resume from {weights}: not a readable safetensors file ({exc}); "
                f"delete the damaged checkpoint folder {path} to resume from an older one"
            ) from exc
        load_state_dict_strict(self.model, tensors, str(path))
        state = load_trainer_state(path / "trainer.pt", self.device)
        self.opt.load_state_dict(state["optimizer"])
        if self.disc is not None and state["disc"] is not None:
            self.disc.load_state_dict(state["disc"])
            assert self.disc_opt is not None
            self.disc_opt.load_state_dict(state["disc_optimizer"])
        self.step = int(state["step"])

    # -- one step -------------------------------------------------------------------------
    def window_for(self, step: int) -> int:
        """Decoder window R of ``step`` (same on every rank), capped at the latent count."""
        c = self.config
        g = _generator(c.seed, step, 7919)
        r = c.decode_windows[int(torch.randint(0, len(c.decode_windows), (1,), generator=g))]
        return min(r, c.num_frames // 8)

    def lr_scale(self, step: int) -> float:
        """Warmup factor of ``step`` (0-based): (step + 1) / warmup_steps, capped at 1."""
        w = self.config.warmup_steps
        return 1.0 if w == 0 else min(1.0, (step + 1) / w)

    def _set_trainable(self, trunk: bool, temporal: bool) -> None:
        for p in self._trunk_params:
            p.requires_grad_(trunk)
        for p in self._temporal_params:
            p.requires_grad_(temporal)

    def _generator_update(self, total: torch.Tensor, step: int) -> tuple[float, torch.Tensor]:
        """Warmup lr of ``step``, backward of ``total``, clipping and one optimiser step:
        (lr scale, gradient norm before clipping)."""
        scale = self.lr_scale(step)
        for group in self.opt.param_groups:
            group["lr"] = self.config.lr * scale
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.opt.step()
        return scale, grad_norm

    def _trunk_step(self) -> dict[str, float]:
        """One step of the 2D trunk alone on single frames (see ``trunk_steps``)."""
        c = self.config
        if self._frames is None:
            self._frames = ClipSource(1, c.height, c.width, c.seed + 1, c.data)
        frames = self._frames.batch(self.step, self.rank, c.trunk_frames).to(self.device)
        self._set_trainable(trunk=True, temporal=False)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=c.bf16):
            recon = self.model.trunk_roundtrip(frames)
        l1 = (recon.float() - frames).abs().mean()
        mse = ((recon.float() - frames) ** 2).mean()
        total = c.loss.l1 * l1 + c.loss.mse * mse
        scale, grad_norm = self._generator_update(total, self.step)
        self.step += 1
        return {"l1": float(l1.detach()), "mse": float(mse.detach()),
                "total": float(total.detach()), "step": self.step, "trunk": 1.0,
                "psnr": psnr(recon.detach().clamp(-1, 1), frames),
                "grad_norm": float(grad_norm), "lr": c.lr * scale}  # fmt: skip

    def train_step(self) -> dict[str, float]:
        c = self.config
        if self.step < c.trunk_steps:
            return self._trunk_step()
        if c.trunk_steps or c.freeze_trunk:
            self._set_trainable(trunk=not c.freeze_trunk, temporal=True)
        step = self.step
        video = self.data.batch(step, self.rank, c.batch_size).to(self.device)
        window = self.window_for(step)
        noise_gen = _generator(c.seed, step, self.rank, 31)
        adaptive = c.adaptive_start is not None and step >= c.adaptive_start
        gan = self.disc is not None and c.gan_start is not None and step >= c.gan_start
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=c.bf16)
        with autocast:
            recon, mean, logvar = self.ddp(video, window=window, generator=noise_gen)
            logits_fake = self.disc(recon) if gan else None  # type: ignore[misc]
        total, parts = self.loss(
            recon, video, mean, logvar, adaptive=adaptive, logits_fake=logits_fake
        )
        if c.loss.feature > 0:
            with torch.no_grad():
                target = self.model.trunk_features(video)
            with autocast:
                pred = self.model.decode_features(mean)
            feature = ((pred.float() - target.float()) ** 2).mean()
            total = total + c.loss.feature * feature
            parts["feature"] = float(feature.detach())
            parts["total"] = float(total.detach())
        scale, grad_norm = self._generator_update(total, step)
        if self.disc_opt is not None:
            for group in self.disc_opt.param_groups:
                group["lr"] = c.disc_lr * scale
        if gan:
            assert self.disc is not None and self.disc_opt is not None
            with autocast:
                d_loss = hinge_d_loss(self.disc(video), self.disc(recon.detach()))
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            if self.world > 1:
                for p in self.disc.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= self.world
            self.disc_opt.step()
            parts["disc"] = float(d_loss.detach())
        self.step += 1
        parts.update(
            step=self.step,
            window=window,
            psnr=psnr(recon.detach().clamp(-1, 1), video),
            grad_norm=float(grad_norm),
            lr=c.lr * scale,
            adaptive=float(adaptive),
        )
        return parts

    # -- loop -----------------------------------------------------------------------------
    def train(self, steps: int | None = None) -> list[dict[str, float]]:
        """Train until ``steps`` (default ``config.steps``) total steps; returns the metrics
        of the steps run now (also appended to ``metrics.jsonl`` by rank 0)."""
        target = self.config.steps if steps is None else steps
        history: list[dict[str, float]] = []
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            _atomic_json(self.out / "train_config.json", self.config.to_dict())
        while self.step < target:
            t0 = time.perf_counter()
            m = self.train_step()
            m["seconds"] = time.perf_counter() - t0
            history.append(m)
            if self.rank == 0 and (self.step % self.config.log_every == 0 or self.step == target):
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(m) + "\n")
            if self.step % self.config.checkpoint_every == 0 or self.step == target:
                self.save_checkpoint()
        if self.rank == 0:
            tmp = self.out / ".tmp_final"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                self.model.save_pretrained(tmp)
                shutil.rmtree(self.out / "final", ignore_errors=True)
                os.replace(tmp, self.out / "final")
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return history


#: Keys every ``trainer.pt`` holds.
_TRAINER_KEYS = ("step", "optimizer", "disc", "disc_optimizer", "train_config")


def load_trainer_state(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a ``trainer.pt`` with ``torch.load(weights_only=True)``: tensors, numbers,
    strings and containers only, so no code in the file can run. Raises ValueError naming
    the file when it holds anything else, is damaged, or lacks a key."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" ({detail.group(1)})" if detail else ""
        raise ValueError(
            f"refusing to load {path}: it holds pickled Python objects{what}, not only "
            "tensors, and loading it could run code; use a trainer state written by VAETrainer"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(
            f"cannot read trainer state {path} ({exc}); the checkpoint is damaged: delete "
            f"{path.parent} to resume from an older checkpoint"
        ) from exc
    if not isinstance(state, dict) or any(k not in state for k in _TRAINER_KEYS):
        raise ValueError(
            f"{path} is not a VAETrainer state: it needs the keys {list(_TRAINER_KEYS)}"
        )
    if not isinstance(state["step"], int) or isinstance(state["step"], bool) or state["step"] < 0:
        raise ValueError(f"{path}: 'step' must be a non-negative int, got {state['step']!r}")
    return state


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # launched by torchrun: join the process group
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
