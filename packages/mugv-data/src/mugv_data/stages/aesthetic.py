"""LAION-style aesthetic predictor: CLIP image embedding + MLP head (paper §2.1, >= 4.5).

The head has the layout of the widely used "improved aesthetic predictor":

    layers.0 Linear(D, 1024) - Dropout - layers.2 Linear(1024, 128) - Dropout
    layers.4 Linear(128, 64) - Dropout - layers.6 Linear(64, 16) - layers.7 Linear(16, 1)

applied to the L2-normalised CLIP image embedding (D = the CLIP projection width, 768 for
ViT-L/14). A clip's score is the mean over its sampled frames. Weights come from local
paths or the Hub (``hf://org/repo/path`` for the head; a Hub id for CLIP), through the
Hugging Face cache, so offline mode works once they are cached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mugv_data.config import AestheticConfig


class AestheticHead(nn.Module):
    """The MLP head; ``state_dict`` keys match the LAION predictor's (``layers.N.*``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )  # fmt: skip

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """emb: [B, D] L2-normalised CLIP image embeddings -> scores [B]."""
        return self.layers(emb).squeeze(-1)


def _resolve(path: str) -> Path:
    if path.startswith("hf://"):
        from huggingface_hub import hf_hub_download

        org, repo, *rest = path[len("hf://") :].split("/")
        if not rest:
            raise ValueError(f"head weights {path!r} must look like hf://org/repo/file")
        return Path(hf_hub_download(f"{org}/{repo}", "/".join(rest)))
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"aesthetic head weights not found: {p}")
    return p


def load_head(path: str) -> AestheticHead:
    p = _resolve(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
    if "layers.0.weight" not in state:
        raise ValueError(
            f"{p}: not an aesthetic head (expected keys layers.0.weight ... layers.7.bias)"
        )
    head = AestheticHead(state["layers.0.weight"].shape[1])
    head.load_state_dict(state)
    return head.eval()


class AestheticPredictor:
    """Callable ``frames (list of RGB uint8 [H, W, 3]) -> mean aesthetic score``."""

    def __init__(self, clip_model: str, head_weights: str, *, device: str = "cpu") -> None:
        from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

        self.processor = AutoImageProcessor.from_pretrained(clip_model)
        self.model = CLIPVisionModelWithProjection.from_pretrained(clip_model).to(device).eval()
        self.head = load_head(head_weights).to(device)
        dim = self.model.config.projection_dim
        if self.head.layers[0].in_features != dim:
            raise ValueError(
                f"head expects {self.head.layers[0].in_features}-d embeddings but {clip_model} "
                f"projects to {dim}; use the CLIP model the head was trained on"
            )
        self.device = device

    @classmethod
    def from_config(cls, cfg: AestheticConfig, *, device: str = "cpu") -> AestheticPredictor:
        return cls(cfg.clip_model, cfg.head_weights, device=device)

    @torch.inference_mode()
    def embed(self, frames: list[np.ndarray]) -> torch.Tensor:
        """L2-normalised CLIP image embeddings [B, D]."""
        px = self.processor(images=list(frames), return_tensors="pt")["pixel_values"].to(
            self.device
        )
        emb = self.model(pixel_values=px).image_embeds.float()
        return emb / emb.norm(dim=-1, keepdim=True)

    @torch.inference_mode()
    def __call__(self, frames: list[np.ndarray]) -> float:
        return float(self.head(self.embed(frames)).mean())

    @torch.inference_mode()
    def batch(self, clips: list[list[np.ndarray]]) -> list[float]:
        """Scores of several clips from one CLIP forward over all their frames."""
        flat = [f for frames in clips for f in frames]
        if not flat:
            return [float("nan")] * len(clips)
        scores = self.head(self.embed(flat)).float().cpu()
        out, i = [], 0
        for frames in clips:
            out.append(float(scores[i : i + len(frames)].mean()) if frames else float("nan"))
            i += len(frames)
        return out
