"""Every k-diffusion-shaped sampler against k-diffusion 0.0.16 itself (tests/reference/k_diffusion, MIT):
same denoiser, same sigmas, same noise. Two denoisers: a smooth deterministic function, and a tiny
random-weight UNet wrapped as k-diffusion's CompVisDenoiser wraps the real one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference.k_diffusion import sampling as kd

from engine.config import UNetConfig
from engine.samplers import SAMPLERS, get_sampler
from engine.samplers.lms import lms_coefficient
from engine.testing import random_state_dict
from engine.unet import UNet

SHAPE = (2, 4, 8, 8)
# torchsde warns when a query end differs from the tree's end by float32 rounding (k-diffusion passes tensors)
pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")
SIGMA_MIN, SIGMA_MAX = 0.0291675, 14.614642

# engine name -> (reference function, kind); kind: ode, ancestral (noise()), sde (noise(sigma, sigma_next))
REFERENCE = {
    "euler": (kd.sample_euler, "ode"),
    "heun": (kd.sample_heun, "ode"),
    "dpm2": (kd.sample_dpm_2, "ode"),
    "lms": (kd.sample_lms, "ode"),
    "dpmpp_2m": (kd.sample_dpmpp_2m, "ode"),
    "euler_a": (kd.sample_euler_ancestral, "ancestral"),
    "dpm2_a": (kd.sample_dpm_2_ancestral, "ancestral"),
    "dpmpp_2s_a": (kd.sample_dpmpp_2s_ancestral, "ancestral"),
    "dpmpp_sde": (kd.sample_dpmpp_sde, "sde"),
    "dpmpp_2m_sde": (kd.sample_dpmpp_2m_sde, "sde"),
    "dpmpp_3m_sde": (kd.sample_dpmpp_3m_sde, "sde"),
}


def ldm_log_sigmas() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0).float()
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()


LOG_SIGMAS = ldm_log_sigmas()


def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    """k-diffusion external.DiscreteSchedule.sigma_to_t (quantize=False), written out for the test."""
    log_sigma = sigma.log()
    dists = log_sigma - LOG_SIGMAS[:, None]
    low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=LOG_SIGMAS.shape[0] - 2)
    low, high = LOG_SIGMAS[low_idx], LOG_SIGMAS[low_idx + 1]
    w = ((low - log_sigma) / (low - high)).clamp(0, 1)
    return (1 - w) * low_idx + w * (low_idx + 1)


def function_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear D(x, sigma): eps depends on the scaled input, the channel mix and sigma."""
    s = sigma.reshape(-1, 1, 1, 1)
    c_in = 1 / (s**2 + 1) ** 0.5
    mix = torch.tensor(
        [[0.9, 0.1, -0.2, 0.0], [0.1, 0.8, 0.0, 0.3], [-0.2, 0.0, 1.1, 0.1], [0.0, 0.3, 0.1, 0.7]]
    )
    eps = torch.tanh(torch.einsum("bchw,cd->bdhw", x * c_in, mix)) + 0.05 * torch.sin(s)
    return x - s * eps


class UNetDenoiser:
    """A tiny random UNet as k-diffusion's CompVisDenoiser: c_in, continuous t, eps -> x0."""

    def __init__(self) -> None:
        with torch.device("meta"):
            unet = UNet(UNetConfig.tiny())
        unet.load_state_dict(random_state_dict(unet, np.random.default_rng(0), torch.float32), assign=True)
        self.unet = unet.eval()
        self.context = torch.randn((SHAPE[0], 77, 64), generator=torch.Generator().manual_seed(5))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1)
        eps = self.unet(x / (s**2 + 1) ** 0.5, sigma_to_t(sigma), self.context)
        return x - s * eps


def karras(n: int) -> torch.Tensor:
    return kd.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX)


def noise_list(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(n)]


def run_pair(name: str, denoiser, sigmas: torch.Tensor, **kwargs):
    """(ours, reference, our callback steps) from the same start, fed the same noise."""
    ref_fn, kind = REFERENCE[name]
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    ours_kw, ref_kw = dict(kwargs), dict(kwargs)
    if kind == "ancestral":
        ours_kw["noise"] = iter(noise_list(2 * len(sigmas), 2)).__next__
        ref_noise = iter(noise_list(2 * len(sigmas), 2))
        ref_kw["noise_sampler"] = lambda s, sn: next(ref_noise)
    elif kind == "sde":
        sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
        ours_kw["noise"] = kd.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=[11, 12])
        ref_kw["noise_sampler"] = kd.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=[11, 12])
    steps: list[int] = []
    ours = get_sampler(name)(denoiser, x, sigmas, callback=lambda d: steps.append(d["i"]), **ours_kw)
    ref = ref_fn(denoiser, x, sigmas, **ref_kw)
    return ours, ref, steps


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def test_every_k_sampler_has_a_reference():
    """Every sampler in sigma space is checked here; the timestep samplers against their own references
    (DDIM/DDPM/UniPC in test_samplers.py, LCM/TCD against diffusers in test_fast_samplers.py)."""
    from engine.names import TIMESTEP_SAMPLERS

    assert set(REFERENCE) == set(SAMPLERS) - TIMESTEP_SAMPLERS


@pytest.mark.parametrize("name", list(REFERENCE))
@pytest.mark.parametrize("steps", [1, 2, 3, 10])
def test_matches_k_diffusion_on_a_function(name, steps):
    sigmas = karras(steps)
    if steps == 1 and name in ("dpmpp_2m_sde", "dpmpp_3m_sde"):
        # k-diffusion 0.0.16 raises UnboundLocalError here (h is only set on non-final steps); a single
        # step to sigma 0 is, by its own rule for the last step, the denoised estimate.
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * sigmas[0]
        ours = get_sampler(name)(function_denoiser, x, sigmas, noise=lambda s, sn: 1 / 0)
        assert torch.equal(ours, function_denoiser(x, sigmas[0] * x.new_ones(SHAPE[0])))
        return
    ours, ref, called = run_pair(name, function_denoiser, sigmas)
    assert torch.isfinite(ours).all()
    assert called == list(range(steps))
    assert relative_error(ours, ref) <= 1e-4


@pytest.mark.parametrize("name", list(REFERENCE))
def test_matches_k_diffusion_on_a_tiny_unet(name):
    # uniform (log-linear t_to_sigma) sigmas for 6 steps, as A1111's get_sigmas would give
    t = torch.linspace(999, 0, 6)
    low, frac = t.floor().long(), t.frac()
    sigmas = ((1 - frac) * LOG_SIGMAS[low] + frac * LOG_SIGMAS[t.ceil().long()]).exp()
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    ours, ref, _ = run_pair(name, UNetDenoiser(), sigmas)
    assert relative_error(ours, ref) <= 1e-4


@pytest.mark.parametrize("name", ["euler", "heun", "dpm2"])
def test_churn_draws_noise_as_k_diffusion(name):
    # With churn both call torch.randn_like (ours by default when no noise is given) once per step.
    sigmas = karras(5)
    torch.manual_seed(3)
    ours = get_sampler(name)(function_denoiser, torch.ones(SHAPE) * sigmas[0], sigmas, s_churn=1.0)
    torch.manual_seed(3)
    ref = REFERENCE[name][0](function_denoiser, torch.ones(SHAPE) * sigmas[0], sigmas, s_churn=1.0)
    assert relative_error(ours, ref) <= 1e-4


@pytest.mark.parametrize("name", ["euler_a", "dpm2_a", "dpmpp_2s_a"])
def test_ancestral_eta_zero_is_deterministic(name):
    sigmas = karras(4)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * sigmas[0]

    def no_noise():
        raise AssertionError("eta 0 must draw no noise")

    ours = get_sampler(name)(function_denoiser, x, sigmas, eta=0.0, noise=no_noise)
    ref = REFERENCE[name][0](function_denoiser, x, sigmas, eta=0.0)
    assert relative_error(ours, ref) <= 1e-4


def test_dpmpp_2m_sde_heun_variant_and_bad_solver():
    sigmas = karras(4)
    ours, ref, _ = run_pair("dpmpp_2m_sde", function_denoiser, sigmas, solver_type="heun")
    assert relative_error(ours, ref) <= 1e-4
    with pytest.raises(ValueError, match="solver_type"):
        get_sampler("dpmpp_2m_sde")(
            function_denoiser, torch.ones(SHAPE), sigmas, noise=lambda a, b: 0, solver_type="euler"
        )


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_sde_samplers_need_a_noise_sampler(name):
    with pytest.raises(ValueError, match="Brownian"):
        get_sampler(name)(function_denoiser, torch.ones(SHAPE), karras(3))


def test_lms_coefficients_are_the_exact_integrals():
    sigmas = [float(s) for s in karras(12)]
    for order in (1, 2, 3, 4):
        for i in range(order - 1, 11):
            for j in range(order):
                exact = lms_coefficient(order, sigmas, i, j)
                assert math.isclose(
                    exact,
                    kd.linear_multistep_coeff(order, np.array(sigmas), i, j),
                    rel_tol=1e-6,
                    abs_tol=1e-9,
                )
    # the basis polynomials sum to 1, so the coefficients sum to the step length
    assert math.isclose(sum(lms_coefficient(4, sigmas, 5, j) for j in range(4)), sigmas[6] - sigmas[5])
    with pytest.raises(ValueError, match="order"):
        lms_coefficient(3, sigmas, 1, 0)
