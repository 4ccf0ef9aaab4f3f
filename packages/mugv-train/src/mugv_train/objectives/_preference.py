"""Preference objectives on flow-matching errors (paper §4.2.3, Appendix A.2).

Both losses work on per-sample velocity errors e = ||v_pred - (x0 - eps)||^2 (masked mean,
see :func:`per_sample_flow_loss`) of the trained model (theta) and a frozen reference (ref),
computed on the same noisy input (same eps and t).

Diffusion-DPO (Wallace et al. 2024) on a preferred (w) / rejected (l) pair:
    d = (e_theta(w) - e_ref(w)) - (e_theta(l) - e_ref(l))
    L = -log sigmoid(-beta / 2 * d)

Diffusion-KTO (Li et al. 2024) on samples labelled desirable (y = 1) or undesirable (y = 0),
with implicit reward r = beta * (e_ref - e_theta) and reference point z0:
    L = lambda_D * (1 - sigmoid(r - z0))   if desirable
    L = lambda_U * (1 - sigmoid(z0 - r))   if undesirable
z0 defaults to max(0, mean r) of the batch, detached (the KL estimate of KTO).

The SFT flow loss stays in as a regulariser (paper §4.2.3); the trainer adds it with
``sft_weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_dpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Diffusion-DPO loss, averaged over pairs. All inputs: per-pair errors [B]."""
    if beta <= 0:
        raise ValueError(f"DPO beta must be > 0, got {beta}")
    d = (model_err_w - ref_err_w.detach()) - (model_err_l - ref_err_l.detach())
    return -F.logsigmoid(-0.5 * beta * d).mean()


def diffusion_kto_loss(
    model_err: torch.Tensor,
    ref_err: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    *,
    lambda_desirable: float = 1.0,
    lambda_undesirable: float = 1.0,
    reference_point: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Diffusion-KTO loss, averaged over samples.

    model_err, ref_err: [B]; desirable: [B] bool (True = good label).
    """
    if beta <= 0:
        raise ValueError(f"KTO beta must be > 0, got {beta}")
    reward = beta * (ref_err.detach() - model_err)
    if reference_point is None:
        z0 = reward.detach().mean().clamp_min(0.0)
    else:
        z0 = torch.as_tensor(reference_point, dtype=reward.dtype)
    good = desirable.to(torch.bool)
    loss = torch.where(
        good,
        lambda_desirable * (1.0 - torch.sigmoid(reward - z0)),
        lambda_undesirable * (1.0 - torch.sigmoid(z0 - reward)),
    )
    return loss.mean()
