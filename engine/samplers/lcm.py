"""Latent Consistency Model multistep sampling (Luo et al. 2023, Algorithm 1), as diffusers' `LCMScheduler`
runs it (diffusers/schedulers/scheduling_lcm.py: `set_timesteps`, `step`), which is what LCM-LoRA and the LCM
distilled models were trained against. Works in the variance-preserving scale: x starts as unit noise.

Each step denoises to the consistency function's output f(x_t, t) = c_skip(t) * x_t + c_out(t) * x0(x_t, t)
(the boundary-condition scalings, LCM eq. 9 with sigma_data = 0.5 and diffusers' timestep_scaling 10), then
noises that estimate afresh to the next timestep; the last step returns the estimate itself.
"""

from __future__ import annotations

import torch

from engine.samplers.common import Denoiser, NoiseFn, StepCallback, step_noise
from engine.schedules import ModelSchedule

ORIGINAL_STEPS = 50  # diffusers' `original_inference_steps`: the distillation's timestep grid
TRAIN_STEPS = 1000
SIGMA_DATA = 0.5  # LCMScheduler.get_scalings_for_boundary_condition_discrete
TIMESTEP_SCALING = 10.0  # LCMScheduler config default


def timesteps(steps: int) -> list[int]:
    """LCMScheduler.set_timesteps(steps), ascending: `steps` values picked at evenly spaced indices of the
    50-step distillation grid [999, 979, ..., 19]; [259, 499, 759, 999] for 4 steps."""
    if not 1 <= steps <= ORIGINAL_STEPS:
        raise ValueError(f"steps must be from 1 to {ORIGINAL_STEPS} for LCM and TCD (the 50-step grid they were "
                         f"distilled on), got {steps}")
    k = TRAIN_STEPS // ORIGINAL_STEPS
    origin = [(j + 1) * k - 1 for j in range(ORIGINAL_STEPS)][::-1]  # descending: 999, 979, ..., 19
    # np.floor(np.linspace(0, 50, steps, endpoint=False)) in exact integer arithmetic
    picked = [origin[(i * ORIGINAL_STEPS) // steps] for i in range(steps)]
    return picked[::-1]


def boundary_scalings(t: int) -> tuple[float, float]:
    """(c_skip, c_out) at discrete timestep t (LCMScheduler.get_scalings_for_boundary_condition_discrete)."""
    scaled = t * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


def read_grid(sigmas: torch.Tensor, schedule: ModelSchedule | None) -> tuple[list[int], torch.Tensor]:
    """(the training timestep of each sigma, exact for sigmas taken from the schedule, 0 for sigma 0; the
    schedule's alpha_bar table in float64). `schedule` None: SD 1.x's."""
    schedule = schedule if schedule is not None else ModelSchedule.sd1()
    ts = [0 if s <= 0 else int(schedule.sigma_to_t(s.reshape(1)).round().item()) for s in sigmas.float()]
    return ts, schedule.alphas_cumprod.double()


@torch.no_grad()
def sample_lcm(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
               callback: StepCallback | None = None, noise: NoiseFn | None = None,
               schedule: ModelSchedule | None = None) -> torch.Tensor:
    """`sigmas`: the grid's sigmas descending (engine.samplers.lcm.timesteps) plus a trailing 0; `x`: VP-scaled
    (unit noise for txt2img). `noise()` gives the fresh noise of each step but the last. `schedule`: the model's
    noise levels (SD 1.x by default), to read each sigma's timestep and alpha_bar."""
    draw = step_noise(noise, x)
    s_in = x.new_ones([x.shape[0]])
    ts, alphas = read_grid(sigmas, schedule)
    for i in range(len(sigmas) - 1):
        t = ts[i]
        a_t = alphas[t].item()
        # the sigma-space denoiser sees x / sqrt(alpha_bar) (k-diffusion's VE scale); its x0 is diffusers'
        # predicted_original_sample (sample - sqrt(1 - a) * eps) / sqrt(a)
        pred_x0 = denoiser(x / a_t**0.5, sigmas[i] * s_in)
        c_skip, c_out = boundary_scalings(t)
        denoised = c_out * pred_x0 + c_skip * x
        if sigmas[i + 1] > 0:
            a_next = alphas[ts[i + 1]].item()
            x = a_next**0.5 * denoised + (1 - a_next) ** 0.5 * draw()
        else:
            x = denoised
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
    return x
