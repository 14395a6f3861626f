"""DPM-Solver++(2M) with Karras sigmas (A1111's "DPM++ 2M Karras"), as diffusers' DPMSolverMultistepScheduler
with use_karras_sigmas=True.

The solver is dpmpp_2m's (dpmsolver++, order 2, midpoint, first-order first and last steps, final sigma 0);
only the noise levels differ: N sigmas spaced as Karras et al. 2022 eq. 5 (rho 7) between the smallest and
largest training sigma, each mapped back to a model timestep by interpolating log-sigma between the two
nearest training steps and rounding (diffusers' _sigma_to_t).
"""

from __future__ import annotations

import torch

from engine.samplers.dpmpp_2m import NUM_TRAIN_TIMESTEPS, DPMPP2MSampler


class DPMPP2MKarrasSampler(DPMPP2MSampler):
    """DPM++ 2M's solver on Karras-spaced noise levels."""

    @staticmethod
    def _schedule(n: int, train_sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        sigmas = torch.cat([karras, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)
        return t.round().to(torch.float32), sigmas
