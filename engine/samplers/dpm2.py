"""DPM2 and DPM2 ancestral (k_diffusion/sampling.py `sample_dpm_2`, `sample_dpm_2_ancestral`): a midpoint
step in log sigma, after DPM-Solver-2 (Lu et al. 2022). A1111: "DPM2", "DPM2 a" (both with the Karras schedule
and the penultimate sigma discarded by default)."""

from __future__ import annotations

import torch

from engine.samplers.common import Denoiser, NoiseFn, StepCallback, ancestral_step, step_noise, to_d


@torch.no_grad()
def sample_dpm2(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
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
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)  # Euler at the last step
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, denoiser(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm2_a(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                  callback: StepCallback | None = None, noise: NoiseFn | None = None, eta: float = 1.0,
                  s_noise: float = 1.0) -> torch.Tensor:
    draw = step_noise(noise, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])  # Euler at the last step, no noise
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, denoiser(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigma_down - sigmas[i])
            if eta:  # eta 0: sigma_up is 0; k-diffusion draws, unused
                x = x + draw() * s_noise * sigma_up
    return x
