"""Euler ancestral sampler (k-diffusion's sample_euler_ancestral), as diffusers'
EulerAncestralDiscreteScheduler.

SD1.5's config with diffusers' defaults: 'linspace' timestep spacing, sigmas linearly interpolated in t,
final sigma 0, init_noise_sigma = max sigma, eta = 1.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


class EulerAncestralSampler:
    """Stochastic: draws fresh noise at every step from the caller's (CPU) generator."""

    stochastic = True

    def __init__(self, num_inference_steps: int):
        if not 1 <= num_inference_steps <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"steps must be in 1..{NUM_TRAIN_TIMESTEPS}, got {num_inference_steps}")
        self.num_inference_steps = n = num_inference_steps
        # SD1.x "scaled_linear" betas: linspace of sqrt(beta), squared (diffusers, float32).
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        train_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).double()

        # 'linspace' spacing as numpy.linspace(0, 999, n) computes it (float64, exact last point) -> float32.
        last = float(NUM_TRAIN_TIMESTEPS - 1)
        steps = torch.arange(n, dtype=torch.float64)
        t = steps * (last / (n - 1)) if n > 1 else steps
        if n > 1:
            t[-1] = last
        self.timesteps = t.flip(0).to(torch.float32)

        # numpy.interp(timesteps, arange(1000), sigmas) in float64: slope * (x - x_lo) + y_lo.
        x = self.timesteps.double()
        lo = x.floor().long().clamp(max=NUM_TRAIN_TIMESTEPS - 2)
        interp = (train_sigmas[lo + 1] - train_sigmas[lo]) * (x - lo) + train_sigmas[lo]
        interp = torch.where(x == last, train_sigmas[-1], interp)
        self.sigmas = torch.cat([interp, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)
        self.init_noise_sigma = float(self.sigmas.max())  # 'linspace': max sigma, not sqrt(sigma^2 + 1)

    def scale_model_input(self, sample: torch.Tensor, i: int) -> torch.Tensor:
        # k-diffusion's c_in = 1 / sqrt(sigma^2 + 1)
        sigma = self.sigmas[i]
        return (sample.float() / ((sigma**2 + 1) ** 0.5)).to(sample.dtype)

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sigma_from, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        x = sample.float()
        pred_original = x - sigma_from * model_output.float()
        # k-diffusion get_ancestral_step (eta 1): split the move to sigma_to into a deterministic part down to
        # sigma_down and fresh noise of size sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2.
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (x - pred_original) / sigma_from
        prev = x + derivative * (sigma_down - sigma_from)
        # Drawn at every step, the last one included (sigma_up is 0 there), like diffusers, so the
        # generator advances identically.
        noise = torch.randn(x.shape, generator=generator, device="cpu", dtype=torch.float32).to(x.device)
        prev = prev + noise * sigma_up
        return prev.to(sample.dtype), pred_original.to(sample.dtype)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        # Variance-exploding forward process: x = x0 + sigma * noise.
        noisy = original.float() + noise.float() * self.sigmas[i]
        return noisy.to(original.dtype)

    def start_index(self, strength: float) -> int:
        # StableDiffusionImg2ImgPipeline.get_timesteps
        init_timestep = min(int(self.num_inference_steps * strength), self.num_inference_steps)
        return max(self.num_inference_steps - init_timestep, 0)
