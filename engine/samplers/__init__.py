"""Samplers: one small file each (timesteps + step()), after diffusers' single-file scheduler policy.

Every sampler reproduces the diffusers scheduler of the same kind built from SD1.5's scheduler config.
The pipeline drives them by absolute step index::

    sampler = make_sampler("dpmpp_2m_karras", steps)
    x = noise * sampler.init_noise_sigma          # img2img: x = sampler.add_noise(x0, noise, start)
    for i in range(start, len(sampler.timesteps)):
        eps = unet(sampler.scale_model_input(x, i), sampler.timesteps[i], context)
        x, denoised = sampler.step(eps, i, x, generator)

A sampler object holds per-run state (the DPM++ history) and is used for one generation only.
"""

from __future__ import annotations

from typing import Protocol

import torch

from engine.names import DISPLAY_NAMES
from engine.samplers.ddim import DDIMSampler
from engine.samplers.ddpm import DDPMSampler
from engine.samplers.dpmpp_2m import DPMPP2MSampler
from engine.samplers.dpmpp_2m_karras import DPMPP2MKarrasSampler
from engine.samplers.euler import EulerSampler
from engine.samplers.euler_a import EulerAncestralSampler


class Sampler(Protocol):
    stochastic: bool
    timesteps: torch.Tensor
    init_noise_sigma: float

    def scale_model_input(self, sample: torch.Tensor, i: int) -> torch.Tensor: ...

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor: ...

    def start_index(self, strength: float) -> int: ...


SAMPLERS: dict[str, type] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "euler": EulerSampler,
    "euler_a": EulerAncestralSampler,
    "dpmpp_2m": DPMPP2MSampler,
    "dpmpp_2m_karras": DPMPP2MKarrasSampler,
}


def make_sampler(name: str, num_inference_steps: int) -> Sampler:
    """A fresh sampler for one generation; ValueError for an unknown name or a step count outside 1..1000."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid names: {', '.join(SAMPLERS)}")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
        raise TypeError(f"steps must be an integer, got {num_inference_steps!r}")
    return SAMPLERS[name](num_inference_steps)


__all__ = ["DISPLAY_NAMES", "SAMPLERS", "Sampler", "make_sampler"]
