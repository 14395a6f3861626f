"""Stochastic DPM-Solver++ samplers (k_diffusion/sampling.py `sample_dpmpp_sde`, `sample_dpmpp_2m_sde`,
`sample_dpmpp_3m_sde`). A1111: "DPM++ SDE", "DPM++ 2M SDE" (midpoint; "heun" is "DPM++ 2M SDE Heun"),
"DPM++ 3M SDE". Their noise is `noise(sigma, sigma_next)`, a Brownian-tree sampler seeded per image
(engine.brownian), so the same seed gives the same picture at any step count's shared sigmas.
"""

from __future__ import annotations

import torch

from engine.samplers.common import Denoiser, NoiseFn, StepCallback, ancestral_step, brownian_noise, to_d


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _t(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


@torch.no_grad()
def sample_dpmpp_sde(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                     callback: StepCallback | None = None, noise: NoiseFn | None = None, eta: float = 1.0,
                     s_noise: float = 1.0, r: float = 0.5) -> torch.Tensor:
    """Two ancestral half steps per step (to s = t + r h, then to t_next); Euler at the last step."""
    noise = brownian_noise(noise, "DPM++ SDE")
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        # step 1: to sigma(s)
        sd, su = ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(_sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = denoiser(x_2, _sigma(s) * s_in)
        # step 2: to sigma(t_next) with the blended estimate
        sd, su = ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise(_sigma(t), _sigma(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                        callback: StepCallback | None = None, noise: NoiseFn | None = None, eta: float = 1.0,
                        s_noise: float = 1.0, solver_type: str = "midpoint") -> torch.Tensor:
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    noise = brownian_noise(noise, "DPM++ 2M SDE")
    s_in = x.new_ones([x.shape[0]])
    old_denoised = h_last = h = None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigmas[i + 1] == 0:
            x = denoised  # the last step returns the denoised estimate
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                        callback: StepCallback | None = None, noise: NoiseFn | None = None, eta: float = 1.0,
                        s_noise: float = 1.0) -> torch.Tensor:
    noise = brownian_noise(noise, "DPM++ 3M SDE")
    s_in = x.new_ones([x.shape[0]])
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigmas[i + 1] == 0:
            x = denoised  # the last step returns the denoised estimate
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                d = (denoised - denoised_1) / (h_1 / h)
                x = x + (h_eta.neg().expm1() / h_eta + 1) * d
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x
