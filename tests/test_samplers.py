"""The sampler registry and names, and the timestep samplers (DDIM as A1111 >= 1.6 runs it, DDPM as the
seed project ran it) against diffusers' schedulers (test-only reference) on the same eps-model.

The k-diffusion samplers are checked against k-diffusion itself in test_ksamplers.py.
"""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from engine import names
from engine.samplers import SAMPLERS, TIMESTEPS, ddim, ddpm, get_sampler

# SD1.5's scheduler_config.json (runwayml/stable-diffusion-v1-5/scheduler).
SD15_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "trained_betas": None,
}
SHAPE = (2, 4, 8, 8)

logging.getLogger("diffusers").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def fake_eps(x: torch.Tensor, t: float) -> torch.Tensor:
    """A stand-in for the UNet: eps depends on the input and the timestep, smoothly."""
    pattern = torch.linspace(-1.0, 1.0, x[0].numel()).reshape(x.shape[1:])
    return 0.1 * x + torch.sin(torch.tensor(t / 100.0)) * pattern + 0.01 * t / 1000.0


class EpsDenoiser:
    """fake_eps as a sigma-space denoiser (k-diffusion CompVisDenoiser's algebra) on diffusers' table; each
    sigma it is called with must be one of the table's, so the timestep is exact."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.timesteps: list[int] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma[0]
        t = int((self.sigmas - s).abs().argmin())
        assert torch.isclose(self.sigmas[t], s, rtol=1e-6)
        self.timesteps.append(t)
        return x - s * fake_eps(x / (s**2 + 1) ** 0.5, t)


def start_noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def assert_close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5) -> None:
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    err = (ours - ref).norm() / ref.norm().clamp(min=1e-12)
    assert err <= rtol, f"relative error {err:.3g}"


def test_registry_matches_the_torch_free_names():
    assert set(SAMPLERS) == set(names.SAMPLERS) == set(names.DISPLAY_NAMES) == set(names.DEFAULT_SCHEDULE)
    assert names.SAMPLERS[0] == "dpmpp_2m" and names.DEFAULT_SCHEDULE["dpmpp_2m"] == "karras"
    assert [names.DISPLAY_NAMES[n] for n in ("dpmpp_2s_a", "dpm2_a", "euler_a", "dpmpp_3m_sde", "lms")] == [
        "DPM++ 2S a", "DPM2 a", "Euler a", "DPM++ 3M SDE", "LMS"]
    flags = names.SECOND_ORDER | names.DISCARD_PENULTIMATE | names.USES_ENSD | names.BROWNIAN
    assert flags <= set(names.SAMPLERS) and set(TIMESTEPS) <= names.TIMESTEP_SAMPLERS
    assert set(names.SCHEDULE_LABELS) == set(names.SCHEDULE_NAMES) and names.SCHEDULE_NAMES[0] == "automatic"
    for legacy, (base, schedule) in names.LEGACY_NAMES.items():
        assert base in SAMPLERS and schedule in names.SCHEDULE_NAMES and legacy not in SAMPLERS
    with pytest.raises(ValueError, match="euler_a"):
        get_sampler("k_lms")


@pytest.mark.parametrize(
    "sampler, schedule, expected",
    [
        ("dpmpp_2m", "automatic", ("dpmpp_2m", "karras")),
        ("dpmpp_2m_karras", "automatic", ("dpmpp_2m", "karras")),
        ("dpmpp_2m_karras", "karras", ("dpmpp_2m", "karras")),
        ("dpmpp_2m_sde", "automatic", ("dpmpp_2m_sde", "exponential")),
        ("dpmpp_2m_sde_karras", "automatic", ("dpmpp_2m_sde", "karras")),
        ("euler_a", "automatic", ("euler_a", "uniform")),
        ("euler_a", "karras", ("euler_a", "karras")),
        ("dpm2", "automatic", ("dpm2", "karras")),
        ("ddim", "karras", ("ddim", "automatic")),
    ],
)
def test_resolve_sampler(sampler, schedule, expected):
    assert names.resolve_sampler(sampler, schedule) == expected


def test_resolve_sampler_rejects_contradictions_and_unknown_names():
    with pytest.raises(ValueError, match="already means the karras schedule"):
        names.resolve_sampler("dpmpp_2m_karras", "exponential")
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        names.resolve_sampler("plms")
    with pytest.raises(ValueError, match="unknown schedule 'Karras'"):
        names.resolve_sampler("euler", "Karras")


def test_timestep_grids():
    assert ddim.timesteps(20) == list(range(1, 1000, 50))
    assert len(ddim.timesteps(30)) == 31 and ddim.timesteps(30)[-1] == 991  # 1000 // 30 = 33
    assert ddim.timesteps(3) == [1, 334, 667, 999]  # clipped to 999
    assert ddim.timesteps(1) == [1]
    assert ddpm.timesteps(30) == [1 + 33 * k for k in range(30)]
    with pytest.raises(ValueError, match="steps"):
        ddpm.timesteps(0)


@pytest.mark.parametrize("steps", [2, 5, 20, 25])
def test_ddim_is_a1111s_loop_the_first_len_minus_one_diffusers_steps(steps):
    ref = DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    ref.set_timesteps(steps)
    grid = ddim.timesteps(steps)
    assert [int(t) for t in ref.timesteps] == grid[::-1]  # steps that divide 1000: the same grid
    denoiser = EpsDenoiser(ref.alphas_cumprod)
    x = start_noise()
    seen = []
    ours = ddim.sample_ddim(denoiser, x, denoiser.sigmas[grid[::-1]],
                            callback=lambda d: seen.append(d["denoised"]))
    assert denoiser.timesteps == grid[::-1][:-1]  # len(grid) - 1 calls, the t = 1 level never evaluated
    expected, x0s = x, []
    for t in ref.timesteps[:-1]:
        out = ref.step(fake_eps(expected, int(t)), t, expected, eta=0.0)
        expected = out.prev_sample
        x0s.append(out.pred_original_sample)
    assert_close(ours, expected)
    for a, b in zip(seen, x0s, strict=True):
        assert_close(a, b)


def test_ddim_eta_adds_the_given_noise():
    ref = DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    ref.set_timesteps(10)
    denoiser = EpsDenoiser(ref.alphas_cumprod)
    sigmas = denoiser.sigmas[ddim.timesteps(10)[::-1]]
    draws = [start_noise(k) for k in range(10)]
    ours = ddim.sample_ddim(denoiser, start_noise(), sigmas, eta=0.5, noise=iter(draws).__next__)
    expected = start_noise()
    for k, t in enumerate(ref.timesteps[:-1]):
        expected = ref.step(fake_eps(expected, int(t)), t, expected, eta=0.5, variance_noise=draws[k]).prev_sample
    assert_close(ours, expected)


@pytest.mark.parametrize("steps", [1, 8, 25])
def test_ddpm_matches_diffusers_with_the_same_noise(steps):
    ref = DDPMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    ref.set_timesteps(steps)
    assert [int(t) for t in ref.timesteps] == ddpm.timesteps(steps)[::-1]
    denoiser = EpsDenoiser(ref.alphas_cumprod)
    sigmas = torch.cat([denoiser.sigmas[ddpm.timesteps(steps)[::-1]], torch.zeros(1)])
    g_ours, g_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ours = ddpm.sample_ddpm(denoiser, start_noise(), sigmas, noise=lambda: torch.randn(SHAPE, generator=g_ours))
    expected = start_noise()
    for t in ref.timesteps:
        expected = ref.step(fake_eps(expected, int(t)), t, expected, generator=g_ref).prev_sample
    # diffusers also adds sqrt(1e-20) * noise at the last step; nothing else differs
    assert_close(ours, expected)
