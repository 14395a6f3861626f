"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2; DDPM eq. 7 posterior with the "fixed_small"
variance), as diffusers' DDPMScheduler runs it with SD1.5's config: 'leading' timesteps with offset 1 and a
last step to alpha_bar = 1. This was the seed project's only sampler. Works in the variance-preserving scale.
"""

from __future__ import annotations

import torch

from engine.samplers.common import Denoiser, NoiseFn, StepCallback, step_noise


def timesteps(steps: int) -> list[int]:
    """diffusers' 'leading' grid with steps_offset 1, ascending: [1, 51, ..., 951] for 20 steps."""
    if not 1 <= steps <= 1000:
        raise ValueError(f"steps must be in 1..1000, got {steps}")
    ratio = 1000 // steps
    return [k * ratio + 1 for k in range(steps)]


@torch.no_grad()
def sample_ddpm(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                callback: StepCallback | None = None, noise: NoiseFn | None = None) -> torch.Tensor:
    """`sigmas`: the grid's sigmas descending plus a trailing 0 (alpha_bar = 1); `x`: VP-scaled (unit noise)."""
    draw = step_noise(noise, x)
    s_in = x.new_ones([x.shape[0]])
    alphas = 1.0 / (1.0 + sigmas.double() ** 2)
    for i in range(len(sigmas) - 1):
        a_t, a_prev = alphas[i].item(), alphas[i + 1].item()
        beta_t = 1 - a_t / a_prev
        x_ve = x / a_t**0.5
        eps = (x_ve - denoiser(x_ve, sigmas[i] * s_in)) / sigmas[i]
        pred_x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5  # DDPM eq. 15
        # DDPM eq. 7: mean of q(x_{t-1} | x_t, x0)
        x = (a_prev**0.5 * beta_t / (1 - a_t)) * pred_x0 + ((1 - beta_t) ** 0.5 * (1 - a_prev) / (1 - a_t)) * x
        if sigmas[i + 1] > 0:
            x = x + ((1 - a_prev) / (1 - a_t) * beta_t) ** 0.5 * draw()
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": pred_x0})
    return x
