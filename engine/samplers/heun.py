"""Heun's method (k_diffusion/sampling.py `sample_heun`; Karras et al. 2022, Algorithm 2). A1111: "Heun".
Two denoiser calls per step except the last (an Euler step to sigma 0)."""

from __future__ import annotations

import torch

from engine.samplers.common import Denoiser, NoiseFn, StepCallback, step_noise, to_d


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
                noise: NoiseFn | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
    s_in = x.new_ones([x.shape[0]])
    n = len(sigmas) - 1
    for i in range(n):
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = step_noise(noise, x)() * s_noise if s_churn > 0 else None
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = denoiser(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt  # Euler at the last step
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], denoiser(x_2, sigmas[i + 1] * s_in))
            x = x + (d + d_2) / 2 * dt
    return x
