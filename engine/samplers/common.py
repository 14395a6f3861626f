"""The two formulas every k-diffusion sampler shares (k_diffusion/sampling.py `to_d`, `get_ancestral_step`).

Samplers here have k-diffusion's shape: `sample_x(denoiser, x, sigmas, *, callback=None, noise=None, ...)`.
`denoiser(x, sigma)` returns the denoised estimate x0 (classifier-free guidance inside); `sigma` is a (B,)
tensor, as k-diffusion passes `sigmas[i] * s_in`. `callback` receives k-diffusion's dict
{'x', 'i', 'sigma', 'sigma_hat', 'denoised'} once per step. `noise` is a callable: for the ancestral samplers
`noise()` returns the next standard normal tensor shaped like x (A1111's `randn_like`, i.e.
engine.rng.ImageNoise.next); for the SDE samplers `noise(sigma, sigma_next)` is a Brownian-tree sampler
(engine.brownian.BrownianTreeNoiseSampler).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Denoiser = Callable[..., torch.Tensor]
StepCallback = Callable[[dict[str, Any]], None]
NoiseFn = Callable[..., torch.Tensor]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The Karras ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (k-diffusion `to_d`)."""
    return (x - denoised) / sigma.reshape(*sigma.shape, *([1] * (x.ndim - sigma.ndim)))  # k-diffusion append_dims


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0):
    """(sigma_down, sigma_up): step deterministically to sigma_down, then add noise of size sigma_up, with
    sigma_down^2 + sigma_up^2 = sigma_to^2 (k-diffusion `get_ancestral_step`)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def step_noise(noise: NoiseFn | None, x: torch.Tensor) -> NoiseFn:
    """The ancestral samplers' noise source: the caller's, or k-diffusion's default torch.randn_like(x)."""
    return noise if noise is not None else (lambda: torch.randn_like(x))


def brownian_noise(noise: NoiseFn | None, name: str) -> NoiseFn:
    if noise is None:
        raise ValueError(f"{name} needs a Brownian-tree noise sampler: pass noise=BrownianTreeNoiseSampler(...) "
                         "(engine.brownian), noise(sigma, sigma_next) -> Tensor")
    return noise
