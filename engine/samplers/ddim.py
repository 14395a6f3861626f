"""DDIM sampler, eta = 0 (Song et al. 2020, eq. 12), as diffusers' DDIMScheduler with SD1.5's config.

Settings reproduced: 'leading' timestep spacing with steps_offset 1, set_alpha_to_one False (the step past
the end uses alpha_bar[0]), clip_sample False.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


class DDIMSampler:
    """Deterministic (eta = 0)."""

    stochastic = False
    init_noise_sigma = 1.0

    def __init__(self, num_inference_steps: int):
        if not 1 <= num_inference_steps <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"steps must be in 1..{NUM_TRAIN_TIMESTEPS}, got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        # SD1.x "scaled_linear" betas: linspace of sqrt(beta), squared (diffusers, float32).
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # set_alpha_to_one=False: the "previous" alpha_bar of the last step is alpha_bar[0], not 1.
        self.final_alpha_cumprod = self.alphas_cumprod[0]
        # 'leading' spacing: 0, r, 2r, ... reversed, plus steps_offset 1 (DDIMScheduler.set_timesteps).
        self._step_ratio = NUM_TRAIN_TIMESTEPS // num_inference_steps
        self._int_timesteps = [k * self._step_ratio + 1 for k in reversed(range(num_inference_steps))]
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
        prev_t = t - self._step_ratio  # diffusers steps back by the ratio, not to timesteps[i + 1]
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t

        x = sample.float()
        eps = model_output.float()
        # DDIM eq. 12 with sigma_t = 0: predicted x0, then the "direction pointing to x_t".
        pred_original = (x - beta_prod_t**0.5 * eps) / alpha_prod_t**0.5
        pred_sample_direction = (1 - alpha_prod_t_prev) ** 0.5 * eps
        prev = alpha_prod_t_prev**0.5 * pred_original + pred_sample_direction
        return prev.to(sample.dtype), pred_original.to(sample.dtype)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        # Forward process q(x_t | x0) (DDPM eq. 4), as DDIMScheduler.add_noise.
        alpha_prod = self.alphas_cumprod[self._int_timesteps[i]]
        noisy = alpha_prod**0.5 * original.float() + (1 - alpha_prod) ** 0.5 * noise.float()
        return noisy.to(original.dtype)

    def start_index(self, strength: float) -> int:
        # StableDiffusionImg2ImgPipeline.get_timesteps
        init_timestep = min(int(self.num_inference_steps * strength), self.num_inference_steps)
        return max(self.num_inference_steps - init_timestep, 0)
