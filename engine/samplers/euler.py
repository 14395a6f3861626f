"""Euler and Euler ancestral (k_diffusion/sampling.py `sample_euler`, `sample_euler_ancestral`; Karras et al.
2022, Algorithm 2). A1111 labels: "Euler", "Euler a"."""

from __future__ import annotations

import torch

from engine.samplers.common import Denoiser, NoiseFn, StepCallback, ancestral_step, step_noise, to_d


@torch.no_grad()
def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
                 noise: NoiseFn | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
    """Euler steps; with s_churn > 0, Karras' stochastic churn. k-diffusion draws `randn_like` at every step
    even without churn (unused then); we draw only when churn is on, so the values are the same."""
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
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_a(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                   callback: StepCallback | None = None, noise: NoiseFn | None = None, eta: float = 1.0,
                   s_noise: float = 1.0) -> torch.Tensor:
    """Euler steps down to sigma_down, then fresh noise up to the next sigma (one draw per step but the last)."""
    draw = step_noise(noise, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0 and eta:  # eta 0: sigma_up is 0; k-diffusion draws, unused
            x = x + draw() * s_noise * sigma_up
    return x
