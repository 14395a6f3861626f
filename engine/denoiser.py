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
  default fp16 UNet (e.g. t = 961.733 -> 961.5): the same t reaches the sinusoidal embedding on every device;
- A1111's two options that skip the uncond pass on some calls (`CFGDenoiser.forward`, v1.10), see
  `skips_uncond`: "Skip Early CFG" (opts.skip_early_cond) and "NGMS" (opts.s_min_uncond, PR #9177, with
  opts.s_min_uncond_all). On a skipped call only the cond rows go through the UNet and the result is the
  cond estimate: A1111 puts the cond output where the uncond one goes and combines with scale 1.0, which
  gives u + (c - u) * 1 = c + 0 = c exactly.
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
        s_min_uncond: float = 0.0,
        s_min_uncond_all: bool = False,
        skip_early_cond: float = 0.0,
        total_steps: int | None = None,
        timestep_sampler: bool = False,
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
        # --- A1111's uncond skips (skips_uncond); all off by default ---
        if skip_early_cond and not total_steps:
            raise ValueError("skip_early_cond needs total_steps (A1111's CFGDenoiser.total_steps)")
        self.s_min_uncond = float(s_min_uncond)
        self.s_min_uncond_all = bool(s_min_uncond_all)
        self.skip_early_cond = float(skip_early_cond)
        self.total_steps = total_steps
        self.timestep_sampler = timestep_sampler
        # what A1111 writes into p.extra_generation_params when a call skips ("Skip Early CFG", "NGMS",
        # "NGMS all steps"): the infotext has these keys only if some call skipped
        self.cfg_skips: dict[str, float | bool] = {}

    def skips_uncond(self, sigma: torch.Tensor, t: torch.Tensor) -> bool:
        """Whether this call (number `self.step`) skips the uncond pass, as A1111 v1.10's
        `CFGDenoiser.forward` decides (and records in `cfg_skips` what it writes into the infotext):

        - Skip Early CFG: while step / total_steps <= skip_early_cond (not at 0). total_steps is A1111's
          `launch_sampling` count: the steps (img2img: t_enc + 1), doubled for second-order samplers;
        - else NGMS: on odd calls (every call with s_min_uncond_all) while sigma[0] < s_min_uncond. A1111's
          DDIM/PLMS/UniPC (sd_samplers_timesteps) pass the model timestep where k-diffusion passes sigma, so
          there the timestep (e.g. 51.0, before fp16 rounding) is compared; `timestep_sampler` says which.
        It applies whatever the CFG scale (at <= 1 the uncond pass is skipped anyway, see __call__).
        """
        if self.skip_early_cond != 0.0 and self.step / self.total_steps <= self.skip_early_cond:
            self.cfg_skips["Skip Early CFG"] = self.skip_early_cond
            return True
        level = t if self.timestep_sampler else sigma
        if (self.step % 2 or self.s_min_uncond_all) and self.s_min_uncond > 0 and bool(
            level[0].float() < self.s_min_uncond
        ):
            self.cfg_skips["NGMS"] = self.s_min_uncond
            if self.s_min_uncond_all:
                self.cfg_skips["NGMS all steps"] = True
            return True
        return False

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
            t_raw = self.schedule.sigma_to_t(sigma.detach().float().cpu())
        else:
            t_raw = torch.as_tensor(timestep, dtype=torch.float32).detach().cpu().reshape(-1).expand(batch)
        t = t_raw.half().float() if self.round_t_fp16 else t_raw  # the UNet's time, fp16-rounded (module doc)
        skip = self.skips_uncond(sigma, t_raw)
        cond = self.cond.at(self.step).expand(batch, -1, -1)
        if self.cfg_scale <= 1.0 or skip:
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
