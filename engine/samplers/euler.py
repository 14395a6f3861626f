"""Euler sampler (Karras et al. 2022, Algorithm 2 without churn), as diffusers' EulerDiscreteScheduler.

SD1.5's config with diffusers' defaults: 'linspace' timestep spacing (fractional timesteps), sigmas
linearly interpolated in t, final sigma 0, init_noise_sigma = max sigma.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


class EulerSampler:
    """Deterministic (s_churn = 0)."""

    stochastic = False

    def __init__(self, num_inference_steps: int):
        if not 1 <= num_inference_steps <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"steps must be in 1..{NUM_TRAIN_TIMESTEPS}, got {num_inference_steps}")
        self.num_inference_steps = n = num_inference_steps
        # SD1.x "scaled_linear" betas: linspace of sqrt(beta), squared (diffusers, float32).
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        train_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).double()  # VE sigma per train step

        # 'linspace' spacing, computed as numpy.linspace(0, 999, n) does (in float64, last point exact), then
        # cast to float32 like diffusers.
        last = float(NUM_TRAIN_TIMESTEPS - 1)
        steps = torch.arange(n, dtype=torch.float64)
        t = steps * (last / (n - 1)) if n > 1 else steps
        if n > 1:
            t[-1] = last
        self.timesteps = t.flip(0).to(torch.float32)

        # numpy.interp(timesteps, arange(1000), sigmas) in float64: slope * (x - x_lo) + y_lo.
        x = self.timesteps.double()
        lo = x.floor().long().clamp(max=NUM_TRAIN_TIMESTEPS - 2)
        sig = (train_sigmas[lo + 1] - train_sigmas[lo]) * (x - lo) + train_sigmas[lo]
        sig = torch.where(x == last, train_sigmas[-1], sig)
        self.sigmas = torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)
        # 'linspace' spacing: the initial noise scale is max sigma itself (not sqrt(sigma^2 + 1)).
        self.init_noise_sigma = float(self.sigmas.max())

    def scale_model_input(self, sample: torch.Tensor, i: int) -> torch.Tensor:
        # k-diffusion's c_in = 1 / sqrt(sigma^2 + 1): the UNet expects a unit-variance-ish VP input.
        sigma = self.sigmas[i]
        return (sample.float() / ((sigma**2 + 1) ** 0.5)).to(sample.dtype)

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.sigmas[i]
        x = sample.float()
        # Karras et al. Algorithm 2: D = x - sigma * eps; d = (x - D) / sigma; x += d * (sigma_next - sigma)
        pred_original = x - sigma * model_output.float()
        derivative = (x - pred_original) / sigma
        dt = self.sigmas[i + 1] - sigma
        prev = x + derivative * dt
        return prev.to(sample.dtype), pred_original.to(sample.dtype)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        # Variance-exploding forward process: x = x0 + sigma * noise (EulerDiscreteScheduler.add_noise).
        noisy = original.float() + noise.float() * self.sigmas[i]
        return noisy.to(original.dtype)

    def start_index(self, strength: float) -> int:
        # StableDiffusionImg2ImgPipeline.get_timesteps
        init_timestep = min(int(self.num_inference_steps * strength), self.num_inference_steps)
        return max(self.num_inference_steps - init_timestep, 0)
