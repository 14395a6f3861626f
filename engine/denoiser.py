"""The UNet as a k-diffusion denoiser D(x, sigma) -> x0, with classifier-free guidance inside.

Follows k-diffusion's `external.CompVisDenoiser` (`DiscreteEpsDDPMDenoiser.forward`):
c_in = 1/sqrt(sigma^2+1), the UNet's timestep is the continuous `sigma_to_t(sigma)` (log-sigma interpolation),
eps -> x0 = x - sigma*eps;
and A1111's `modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward`:
- the conditioning is picked per call from the prompt schedules with A1111's call counter (call k uses the
  first schedule entry with k <= end_at_step; the counter goes up once per denoiser call, so second-order
  samplers' schedules are built for 2 * steps calls);
- cond and uncond run as one batch [cond rows, uncond rows] when their token lengths match, as two UNet
  passes when they do not (A1111's default without "pad conds");
- guidance on the x0 estimates: uncond + (cond - uncond) * cfg_scale. At cfg_scale <= 1 the uncond pass is
  skipped and the cond estimate used: at 1 it is that either way; below 1 as diffusers' pipelines do
  (`do_classifier_free_guidance = guidance_scale > 1`) and the few-step LoRAs (LCM, TCD) expect;
- the timestep is rounded to float16 before the UNet, as A1111's `sd_hijack_unet.apply_model` does for its
  default fp16 UNet (e.g. t = 961.733 -> 961.5): the same t reaches the sinusoidal embedding on every device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.conditioning import PromptSchedule
from engine.schedules import ModelSchedule


class CFGDenoiser:
    """Callable D(x, sigma) for the samplers in engine.samplers; one per generation (it counts calls).

    unet: engine.unet.UNet; schedule: the model's noise levels (sigma_to_t); cond, uncond: the prompt and
    negative prompt schedules (each `.at(k)` -> (1, T, D)); interrupt: called by the UNet between blocks
    (raises to cancel within a step).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        schedule: ModelSchedule,
        cond: PromptSchedule,
        uncond: PromptSchedule,
        cfg_scale: float,
        *,
        dtype: torch.dtype,
        interrupt: Callable[[], None] | None = None,
        round_t_fp16: bool = True,
    ):
        self.unet = unet
        self.schedule = schedule
        self.cond = cond
        self.uncond = uncond
        self.cfg_scale = float(cfg_scale)
        self.dtype = dtype
        self.interrupt = interrupt
        self.round_t_fp16 = round_t_fp16
        self.step = 0  # A1111's CFGDenoiser.step: denoiser calls so far

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """(B,) sigmas -> the UNet's (B,) continuous timesteps, fp16-rounded as A1111 (see module doc)."""
        t = self.schedule.sigma_to_t(sigma.detach().float().cpu())
        return t.half().float() if self.round_t_fp16 else t

    def eps(self, x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The UNet's noise prediction in float32 for an already scaled input."""
        out = self.unet(
            x_in.to(self.dtype),
            t.to(x_in.device),
            context.to(x_in.device, self.dtype),
            interrupt=self.interrupt,
        )
        return out.float()

    @torch.inference_mode()
    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, timestep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x0 for x at noise level sigma; `timestep` (UniPC) overrides the UNet time sigma_to_t(sigma)."""
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).expand(batch)
        s = sigma.to(x.device).reshape(batch, 1, 1, 1)
        x_in = x / (s**2 + 1) ** 0.5  # c_in
        if timestep is None:
            t = self.timestep(sigma)
        else:
            t = torch.as_tensor(timestep, dtype=torch.float32).detach().cpu().reshape(-1).expand(batch)
            t = t.half().float() if self.round_t_fp16 else t
        cond = self.cond.at(self.step).expand(batch, -1, -1)
        if self.cfg_scale <= 1.0:
            eps = self.eps(x_in, t, cond)
            denoised = x - s * eps
        else:
            uncond = self.uncond.at(self.step).expand(batch, -1, -1)
            if cond.shape[1] == uncond.shape[1]:
                # (B, 4, h, w) -> (2B, 4, h, w): cond rows then uncond rows in one pass
                eps = self.eps(torch.cat([x_in, x_in]), torch.cat([t, t]), torch.cat([cond, uncond]))
                eps_cond, eps_uncond = eps.chunk(2)
            else:
                eps_cond = self.eps(x_in, t, cond)
                eps_uncond = self.eps(x_in, t, uncond)
            denoised_cond, denoised_uncond = x - s * eps_cond, x - s * eps_uncond
            denoised = denoised_uncond + (denoised_cond - denoised_uncond) * self.cfg_scale
        self.step += 1
        return denoised
