"""DDIM as AUTOMATIC1111 >= 1.6 runs it (modules/sd_samplers_timesteps.py, sd_samplers_timesteps_impl.py
`ddim`; Song et al. 2020, eq. 12), in the variance-preserving scale: x starts as unit noise.

Quirks kept (research notes §4.7): the grid is `clip(range(0, 1000, 1000 // steps) + 1, 0, 999)` (31 values
for 30 steps), the loop makes len(grid) - 1 denoiser calls (19 for 20 steps) and stops at the t = 1 noise
level, with no final step to alpha_bar_0; the returned latent is that t = 1 sample, which A1111 decodes.
"""

from __future__ import annotations

import torch

from engine.samplers.common import Denoiser, NoiseFn, StepCallback, step_noise


def timesteps(steps: int) -> list[int]:
    """A1111's DDIM/UniPC grid, ascending: [1, 51, ..., 951] for 20 steps."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return [min(t + 1, 999) for t in range(0, 1000, max(1000 // steps, 1))]


@torch.no_grad()
def sample_ddim(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                callback: StepCallback | None = None, noise: NoiseFn | None = None,
                eta: float = 0.0) -> torch.Tensor:
    """`sigmas`: the sigmas of the grid's timesteps, descending (no trailing 0); `x`: VP-scaled, i.e. unit
    noise for txt2img. The sigma-space denoiser sees x / sqrt(alpha_bar) as k-diffusion's wrapper would, so
    its UNet input x * c_in is x itself: eps = (x_ve - D) / sigma."""
    s_in = x.new_ones([x.shape[0]])
    alphas = 1.0 / (1.0 + sigmas.double() ** 2)  # alpha_bar = 1 / (1 + sigma^2)
    for i in range(len(sigmas) - 1):
        a_t, a_prev = alphas[i].item(), alphas[i + 1].item()
        sigma_t = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        x_ve = x / a_t**0.5
        e_t = (x_ve - denoiser(x_ve, sigmas[i] * s_in)) / sigmas[i]
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
        x = a_prev**0.5 * pred_x0 + (1.0 - a_prev - sigma_t**2) ** 0.5 * e_t
        if sigma_t > 0:
            x = x + sigma_t * step_noise(noise, x)()
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": pred_x0})
    return x
