"""Training objectives: rectified flow (timestep sampling, noising, masked loss, task mix,
caption dropout) and preference losses (Diffusion-DPO, Diffusion-KTO)."""

from mugv_train.objectives._flow import (
    TASK_LOSS_WEIGHTS,
    TASKS,
    TaskMix,
    add_noise,
    drop_captions,
    flow_matching_loss,
    per_sample_flow_loss,
    sample_tasks,
    sample_timesteps,
    shift_ratio,
    shift_timesteps,
    task_weights,
    task_x_mask,
    velocity_target,
)
from mugv_train.objectives._preference import diffusion_dpo_loss, diffusion_kto_loss

__all__ = [
    "TASKS",
    "TASK_LOSS_WEIGHTS",
    "TaskMix",
    "add_noise",
    "diffusion_dpo_loss",
    "diffusion_kto_loss",
    "drop_captions",
    "flow_matching_loss",
    "per_sample_flow_loss",
    "sample_tasks",
    "sample_timesteps",
    "shift_ratio",
    "shift_timesteps",
    "task_weights",
    "task_x_mask",
    "velocity_target",
]
