"""Trajectory Consistency Distillation's strategic stochastic sampling (Zheng et al. 2024, eq. 9-10), as
diffusers' `TCDScheduler` runs it (diffusers/schedulers/scheduling_tcd.py: `set_timesteps`, `step`), which is
what the TCD LoRAs were trained against. Works in the variance-preserving scale: x starts as unit noise.

Each step from timestep t to the next t' predicts the sample at s = floor((1 - gamma) * t') along the PF-ODE
(DDIM to s), then, except at the last step, noises it forward to t'. gamma = 0 is deterministic (DDIM on the
distillation grid); gamma = 1 is LCM-like. The grid is LCM's (engine.samplers.lcm.timesteps); the last step
lands on the t = 0 noise level (alpha_bar_0), as diffusers' does.
"""

from __future__ import annotations

import math

import torch

from engine.samplers.common import Denoiser, NoiseFn, StepCallback, step_noise
from engine.samplers.lcm import read_grid, timesteps
from engine.schedules import ModelSchedule

__all__ = ["DEFAULT_GAMMA", "sample_tcd", "timesteps"]  # timesteps: LCM's 50-step distillation grid

DEFAULT_GAMMA = 0.3  # the TCD authors' default (diffusers' TCDScheduler.step eta)


@torch.no_grad()
def sample_tcd(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
               callback: StepCallback | None = None, noise: NoiseFn | None = None,
               gamma: float = DEFAULT_GAMMA, schedule: ModelSchedule | None = None) -> torch.Tensor:
    """`sigmas`: the grid's sigmas descending plus a trailing 0; `x`: VP-scaled (unit noise for txt2img).
    `gamma` in [0, 1]: diffusers' `eta`. `noise()` gives the fresh noise of each step but the last."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be from 0 to 1, got {gamma}")
    draw = step_noise(noise, x)
    ts, alphas = read_grid(sigmas, schedule)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        t, t_next = ts[i], ts[i + 1]  # the trailing sigma 0 reads as diffusers' final prev_timestep 0
        t_s = math.floor((1 - gamma) * t_next)
        a_t, a_next, a_s = alphas[t].item(), alphas[t_next].item(), alphas[t_s].item()
        x_ve = x / a_t**0.5
        pred_x0 = denoiser(x_ve, sigmas[i] * s_in)
        eps = (x_ve - pred_x0) / sigmas[i]
        x = a_s**0.5 * pred_x0 + (1 - a_s) ** 0.5 * eps  # pred_noised_sample at s
        if gamma > 0 and sigmas[i + 1] > 0:
            x = (a_next / a_s) ** 0.5 * x + (1 - a_next / a_s) ** 0.5 * draw()
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": pred_x0})
    return x
