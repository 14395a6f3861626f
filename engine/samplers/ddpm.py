"""DDPM ancestral sampler (Ho et al. 2020, Algorithm 2), as diffusers' DDPMScheduler with SD1.5's config.

Settings reproduced: variance_type "fixed_small" (posterior variance, DDPM eq. 7), clip_sample False,
'leading' timestep spacing with steps_offset 1. This was the seed project's only sampler.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


class DDPMSampler:
    """Stochastic: draws fresh noise at every step from the caller's (CPU) generator."""

    stochastic = True
    init_noise_sigma = 1.0

    def __init__(self, num_inference_steps: int):
        if not 1 <= num_inference_steps <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"steps must be in 1..{NUM_TRAIN_TIMESTEPS}, got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        # SD1.x "scaled_linear" betas: linspace of sqrt(beta), squared (diffusers, float32).
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # 'leading' spacing: 0, r, 2r, ... reversed, plus steps_offset 1 (DDPMScheduler.set_timesteps).
        step_ratio = NUM_TRAIN_TIMESTEPS // num_inference_steps
        self._int_timesteps = [k * step_ratio + 1 for k in reversed(range(num_inference_steps))]
        self.timesteps = torch.tensor(self._int_timesteps, dtype=torch.float32)

    def scale_model_input(self, sample: torch.Tensor, i: int) -> torch.Tensor:
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = self._int_timesteps[i]
        # The previous timestep is the next one in the schedule; past the end alpha_bar is 1 ("self.one").
        prev_t = self._int_timesteps[i + 1] if i + 1 < self.num_inference_steps else -1
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        x = sample.float()
        eps = model_output.float()
        # DDPM eq. 15: x0 = (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)
        pred_original = (x - beta_prod_t**0.5 * eps) / alpha_prod_t**0.5
        # DDPM eq. 7: mean of q(x_{t-1} | x_t, x0)
        pred_original_coeff = (alpha_prod_t_prev**0.5 * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t
        prev = pred_original_coeff * pred_original + current_sample_coeff * x
        if t > 0:
            # "fixed_small" variance, clamped as diffusers does (it is 0 at the last step: sqrt gives 1e-10).
            variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
            noise = torch.randn(x.shape, generator=generator, device="cpu", dtype=torch.float32).to(x.device)
            prev = prev + variance**0.5 * noise
        return prev.to(sample.dtype), pred_original.to(sample.dtype)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        # Forward process q(x_t | x0), DDPM eq. 4.
        alpha_prod = self.alphas_cumprod[self._int_timesteps[i]]
        noisy = alpha_prod**0.5 * original.float() + (1 - alpha_prod) ** 0.5 * noise.float()
        return noisy.to(original.dtype)

    def start_index(self, strength: float) -> int:
        # StableDiffusionImg2ImgPipeline.get_timesteps
        init_timestep = min(int(self.num_inference_steps * strength), self.num_inference_steps)
        return max(self.num_inference_steps - init_timestep, 0)
