"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), as diffusers' DPMSolverMultistepScheduler.

SD1.5's config with diffusers' defaults: algorithm_type "dpmsolver++", solver_order 2, solver_type "midpoint",
lower_order_final True, final_sigmas_type "zero", 'linspace' spacing over N + 1 points (the last dropped).
With a final sigma of 0 diffusers always takes a first-order last step (its `len(timesteps) < 15` rule only
adds a lower-order second-to-last step, which for order 2 is second order anyway): that last step returns
the data prediction x0 itself. The first step is first order too (no history yet).
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


class DPMPP2MSampler:
    """Deterministic multistep sampler; keeps the previous step's x0 prediction."""

    stochastic = False
    init_noise_sigma = 1.0

    def __init__(self, num_inference_steps: int):
        if not 1 <= num_inference_steps <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"steps must be in 1..{NUM_TRAIN_TIMESTEPS}, got {num_inference_steps}")
        self.num_inference_steps = n = num_inference_steps
        # SD1.x "scaled_linear" betas: linspace of sqrt(beta), squared (diffusers, float32).
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        train_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5

        self.timesteps, self.sigmas = self._schedule(n, train_sigmas)

        self._prev_x0: torch.Tensor | None = None  # model_outputs[-2] in diffusers
        self._lower_order_nums = 0

    @staticmethod
    def _schedule(n: int, train_sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps, sigmas with a final 0) for n steps; the Karras variant overrides only this."""
        # 'linspace': numpy.linspace(0, 999, n + 1).round()[::-1][:-1] (numpy's float64 arithmetic, and
        # round-half-to-even like torch.round).
        last = float(NUM_TRAIN_TIMESTEPS - 1)
        t = torch.arange(n + 1, dtype=torch.float64) * (last / n)
        t[-1] = last
        int_timesteps = t.round().long().flip(0)[:-1]
        # Integer timesteps: numpy.interp is plain indexing. Final sigma is zero.
        return int_timesteps.to(torch.float32), torch.cat([train_sigmas[int_timesteps], torch.zeros(1)])

    def scale_model_input(self, sample: torch.Tensor, i: int) -> torch.Tensor:
        return sample

    @staticmethod
    def _alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # VE sigma -> VP (alpha_t, sigma_t): alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t
        alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = sample.float()
        alpha_s0, sigma_s0 = self._alpha_sigma(self.sigmas[i])
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[i + 1])
        # Data prediction (DPM-Solver++ eq. 5 with an eps model): x0 = (x - sigma_t * eps) / alpha_t
        x0 = (x - sigma_s0 * model_output.float()) / alpha_s0
        # lambda = log(alpha / sigma), the half log-SNR; +inf at the final sigma 0.
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        h = lambda_t - lambda_s0
        last_step = i == self.num_inference_steps - 1
        if self._lower_order_nums < 1 or last_step:
            # First-order update (DPM-Solver++(1) = DDIM), DPM-Solver++ eq. 8
            prev = (sigma_t / sigma_s0) * x - (alpha_t * (torch.exp(-h) - 1.0)) * x0
        else:
            # Second-order multistep, "midpoint" form (Algorithm 2; diffusers' solver_type "midpoint")
            alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[i - 1])
            lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
            r0 = (lambda_s0 - lambda_s1) / h
            d0, d1 = x0, (1.0 / r0) * (x0 - self._prev_x0)
            prev = (
                (sigma_t / sigma_s0) * x
                - (alpha_t * (torch.exp(-h) - 1.0)) * d0
                - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
            )
        self._prev_x0 = x0
        self._lower_order_nums = min(self._lower_order_nums + 1, 2)
        return prev.to(sample.dtype), x0.to(sample.dtype)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        # VP forward process at this step's sigma: alpha_t * x0 + sigma_t * noise
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[i])
        noisy = alpha_t * original.float() + sigma_t * noise.float()
        return noisy.to(original.dtype)

    def start_index(self, strength: float) -> int:
        # StableDiffusionImg2ImgPipeline.get_timesteps
        init_timestep = min(int(self.num_inference_steps * strength), self.num_inference_steps)
        return max(self.num_inference_steps - init_timestep, 0)
