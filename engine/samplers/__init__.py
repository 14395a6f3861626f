"""Samplers with k-diffusion's shape, one small file per family: `fn(denoiser, x, sigmas, *, callback=None,
noise=None, ...) -> x`. See engine/samplers/common.py for the contract of each argument.

The k-diffusion samplers (Euler ... DPM++ 3M SDE) start from `x = noise * sigmas[0]` and end at sigma 0.
The timestep samplers (DDIM, UniPC, DDPM, LCM, TCD; engine.names.TIMESTEP_SAMPLERS) walk their own grid of
training timesteps (`timesteps(steps)` in their module, `grid()` in unipc.py) in the variance-preserving scale:
`x = noise` to start.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.names import DISPLAY_NAMES, TIMESTEP_SAMPLERS
from engine.samplers import ddim, ddpm, lcm, tcd, unipc
from engine.samplers.dpm2 import sample_dpm2, sample_dpm2_a
from engine.samplers.dpmpp import sample_dpmpp_2m, sample_dpmpp_2s_a
from engine.samplers.dpmpp_sde import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_dpmpp_sde
from engine.samplers.euler import sample_euler, sample_euler_a
from engine.samplers.heun import sample_heun
from engine.samplers.lms import sample_lms

SamplerFn = Callable[..., torch.Tensor]

SAMPLERS: dict[str, SamplerFn] = {
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2s_a": sample_dpmpp_2s_a,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "euler_a": sample_euler_a,
    "euler": sample_euler,
    "lms": sample_lms,
    "heun": sample_heun,
    "dpm2": sample_dpm2,
    "dpm2_a": sample_dpm2_a,
    "ddim": ddim.sample_ddim,
    "unipc": unipc.sample_unipc,
    "ddpm": ddpm.sample_ddpm,
    "lcm": lcm.sample_lcm,
    "tcd": tcd.sample_tcd,
}

# Each timestep sampler's grid: steps -> ascending training timesteps (UniPC's continuous grid: unipc.grid).
TIMESTEPS: dict[str, Callable[[int], list[int]]] = {
    "ddim": ddim.timesteps, "ddpm": ddpm.timesteps, "lcm": lcm.timesteps, "tcd": tcd.timesteps}
# Timestep samplers whose sigmas end with a 0 (a last step to the clean sample); DDIM stops at t = 1.
ENDS_AT_ZERO: frozenset[str] = frozenset({"ddpm", "lcm", "tcd"})

# Samplers that take a `noise` argument (ancestral: noise(); SDE: noise(sigma, sigma_next)).
TAKES_NOISE: frozenset[str] = frozenset(
    {"euler_a", "dpm2_a", "dpmpp_2s_a", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddim", "ddpm",
     "euler", "heun", "dpm2", "lcm", "tcd"})


def get_sampler(name: str) -> SamplerFn:
    """The sampler function for an engine name (engine.names.SAMPLERS); ValueError for any other name."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid names: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = ["DISPLAY_NAMES", "ENDS_AT_ZERO", "SAMPLERS", "TAKES_NOISE", "TIMESTEPS", "TIMESTEP_SAMPLERS",
           "get_sampler"]
