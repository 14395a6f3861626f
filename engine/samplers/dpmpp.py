"""DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095): the 2S ancestral and 2M samplers
(k_diffusion/sampling.py `sample_dpmpp_2s_ancestral`, `sample_dpmpp_2m`). A1111: "DPM++ 2S a", "DPM++ 2M".

Both work in t = -log(sigma); the data-prediction update is x' = (sigma'/sigma) x - expm1(-h) D.
"""

from __future__ import annotations

import torch

from engine.samplers.common import Denoiser, NoiseFn, StepCallback, ancestral_step, step_noise, to_d


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _t(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


@torch.no_grad()
def sample_dpmpp_2s_a(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                      callback: StepCallback | None = None, noise: NoiseFn | None = None, eta: float = 1.0,
                      s_noise: float = 1.0) -> torch.Tensor:
    """Single-step second order down to sigma_down (midpoint r = 1/2), then ancestral noise."""
    draw = step_noise(noise, x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])  # Euler at the last step
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = denoiser(x_2, _sigma(s) * s_in)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0 and eta:  # eta 0: sigma_up is 0; k-diffusion draws, unused
            x = x + draw() * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                    callback: StepCallback | None = None) -> torch.Tensor:
    """Multistep second order: D' = (1 + 1/2r) D_i - (1/2r) D_{i-1}, r = h_{i-1}/h; first order at the first
    and the last step."""
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x
