"""DPM-Solver++(2M) with Karras sigmas (A1111's "DPM++ 2M Karras"), as diffusers' DPMSolverMultistepScheduler
with use_karras_sigmas=True.

The solver is dpmpp_2m's (dpmsolver++, order 2, midpoint, first-order first and last steps, final sigma 0);
only the noise levels differ: N sigmas spaced as Karras et al. 2022 eq. 5 (rho 7) between the smallest and
largest training sigma, each mapped back to a model timestep by interpolating log-sigma between the two
nearest training steps and rounding (diffusers' _sigma_to_t).
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


class DPMPP2MKarrasSampler:
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

        # Karras et al. eq. 5: sigma_i = (max^(1/rho) + i/(N-1) * (min^(1/rho) - max^(1/rho)))^rho, in float64
        # with the ramp as numpy.linspace(0, 1, n) computes it (diffusers' _convert_to_karras).
        rho = 7.0
        ramp = torch.arange(n, dtype=torch.float64)
        if n > 1:
            ramp = ramp * (1.0 / (n - 1))
            ramp[-1] = 1.0
        min_inv_rho = train_sigmas[0].item() ** (1 / rho)
        max_inv_rho = train_sigmas[-1].item() ** (1 / rho)
        karras = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho

        # diffusers' _sigma_to_t: interpolate log-sigma between the two training steps around it, then round.
        # (low - high) is a float32 difference in numpy, the rest float64; kept so rounding ties match.
        log_sigmas = train_sigmas.log()
        log_sigma = karras.clamp(min=1e-10).log()
        below = (log_sigmas.double()[None, :] <= log_sigma[:, None]).sum(1)  # (n, 1000) -> (n,)
        low_idx = (below - 1).clamp(0, NUM_TRAIN_TIMESTEPS - 2)
        low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
        w = ((low.double() - log_sigma) / (low - high).double()).clamp(0, 1)
        t = (1 - w) * low_idx + w * (low_idx + 1)
        self.timesteps = t.round().to(torch.float32)
        self.sigmas = torch.cat([karras, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)

        self._prev_x0: torch.Tensor | None = None  # model_outputs[-2] in diffusers
        self._lower_order_nums = 0

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
