"""engine.schedules: SD1's discrete schedule and the sampling sigma schedules, against k-diffusion 0.0.16's
own code (tests/reference, MIT), the values in the research notes, and independent re-computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference.k_diffusion import sampling as kd
from reference.kdiffusion_schedules import DiscreteEpsDDPMDenoiser

from engine import schedules
from engine.schedules import ModelSchedule

SD1 = ModelSchedule.sd1()


@pytest.fixture(scope="module")
def kdiff() -> DiscreteEpsDDPMDenoiser:
    return DiscreteEpsDDPMDenoiser(schedules.sd1_alphas_cumprod(), quantize=False)


def test_alphas_cumprod_is_ldms_float64_schedule_stored_as_float32():
    ac = schedules.sd1_alphas_cumprod()
    assert ac.dtype == torch.float32 and ac.shape == (1000,)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    expected = np.cumprod(1 - betas)
    assert np.allclose(ac.numpy(), expected, rtol=2e-7, atol=0)
    assert ac[0].item() == np.float32(1 - 0.00085)


def test_sigma_range_matches_the_research_notes():
    assert SD1.sigmas.dtype == torch.float32 and torch.all(SD1.sigmas[1:] > SD1.sigmas[:-1])
    assert SD1.sigma_min == pytest.approx(0.029167535, abs=1e-9)
    assert np.float32(SD1.sigma_max) == np.float32(14.614642)
    old = ModelSchedule.sd1(downcast=True)  # A1111 "Downcast alphas_cumprod: True"
    assert (old.sigma_min, old.sigma_max) == (0.03125, 14.609375)


def test_model_schedule_equals_k_diffusion(kdiff):
    assert torch.equal(SD1.sigmas, kdiff.sigmas) and torch.equal(SD1.log_sigmas, kdiff.log_sigmas)
    probe = torch.cat([SD1.sigmas[::37], torch.tensor([0.02, 0.0291676, 0.5, 1.0, 3.3, 14.6146, 20.0])])
    probe = torch.cat([probe, torch.exp(torch.linspace(-4, 3, 101))])
    assert torch.equal(SD1.sigma_to_t(probe), kdiff.sigma_to_t(probe))
    t = torch.cat([torch.linspace(0, 999, 777), torch.tensor([0.0, 0.5, 998.75, 999.0])])
    assert torch.equal(SD1.t_to_sigma(t), kdiff.t_to_sigma(t))
    assert torch.equal(schedules.sigma_to_t(probe), kdiff.sigma_to_t(probe))
    assert torch.equal(schedules.t_to_sigma(t), kdiff.t_to_sigma(t))
    # 0-d in, 0-d out, as the samplers call it
    assert SD1.sigma_to_t(torch.tensor(1.0)).shape == ()


def test_sigma_to_t_is_log_linear_between_training_levels():
    assert torch.equal(SD1.sigma_to_t(SD1.sigmas), torch.arange(1000, dtype=torch.float32))
    mid = torch.exp((SD1.log_sigmas[500] + SD1.log_sigmas[501]) / 2)
    assert SD1.sigma_to_t(mid).item() == pytest.approx(500.5, abs=1e-3)
    assert SD1.sigma_to_t(torch.tensor(100.0)).item() == 999
    assert SD1.sigma_to_t(torch.tensor(1e-3)).item() == 0


@pytest.mark.parametrize("steps", [1, 2, 10, 20, 37])
def test_k_diffusion_schedules_are_equal(kdiff, steps):
    smin, smax = kdiff.sigmas[0].item(), kdiff.sigmas[-1].item()  # what A1111 passes: model range as floats
    assert torch.equal(schedules.sigmas("uniform", steps), kdiff.get_sigmas(steps))
    assert torch.equal(schedules.sigmas("karras", steps), kd.get_sigmas_karras(steps, smin, smax))
    assert torch.equal(schedules.sigmas("exponential", steps), kd.get_sigmas_exponential(steps, smin, smax))
    assert torch.equal(schedules.sigmas("polyexponential", steps),
                       kd.get_sigmas_polyexponential(steps, smin, smax))
    # rho and the sigma range as A1111's "Schedule rho" / "Schedule min/max sigma" pass them
    assert torch.equal(schedules.sigmas("karras", steps, rho=5.0, sigma_min=0.1, sigma_max=10.0),
                       kd.get_sigmas_karras(steps, 0.1, 10.0, rho=5.0))
    assert torch.equal(schedules.sigmas("polyexponential", steps, rho=2.0),
                       kd.get_sigmas_polyexponential(steps, smin, smax, rho=2.0))


def test_karras_20_matches_the_research_notes():
    got = schedules.sigmas("karras", 20)
    assert got.dtype == torch.float32 and got.shape == (21,)
    head = [14.614643, 11.725369, 9.340208, 7.383627, 5.789421]
    tail = [0.048482, 0.029168, 0.0]
    assert got[:5].tolist() == pytest.approx(head, abs=1e-6)
    assert got[-3:].tolist() == pytest.approx(tail, abs=1e-6)
    # and the UNet's continuous timestep for its second sigma (research notes §4.1)
    assert SD1.sigma_to_t(got[1]).item() == pytest.approx(961.733, abs=1e-3)


def _t_to_sigma64(t: float) -> float:
    # independent float64 log-linear interpolation over the training sigmas
    log_sigmas = SD1.log_sigmas.double()
    lo, hi = math.floor(t), math.ceil(t)
    return math.exp((1 - (t - lo)) * log_sigmas[lo].item() + (t - lo) * log_sigmas[hi].item())


@pytest.mark.parametrize("steps", [1, 7, 20])
def test_normal_and_sgm_uniform_space_timesteps_evenly(steps):
    normal, sgm = schedules.sigmas("normal", steps), schedules.sigmas("sgm_uniform", steps)
    assert normal.shape == sgm.shape == (steps + 1,) and normal[-1] == sgm[-1] == 0
    normal_t = np.linspace(999, 0, steps) if steps > 1 else [999.0]
    sgm_t = np.linspace(999, 0, steps + 1)[:-1]
    assert normal[:-1].tolist() == pytest.approx([_t_to_sigma64(t) for t in normal_t], rel=1e-5)
    assert sgm[:-1].tolist() == pytest.approx([_t_to_sigma64(t) for t in sgm_t], rel=1e-5)
    # normal's ends are the model's own levels; with uniform's grid it is the uniform schedule to float32 ulps
    assert torch.allclose(normal, schedules.sigmas("uniform", steps), rtol=1e-6, atol=0)


def test_simple_and_ddim_uniform_pick_training_sigmas():
    simple = schedules.sigmas("simple", 10)
    assert simple[:-1].tolist() == SD1.sigmas[[999 - 100 * k for k in range(10)]].tolist()
    simple3 = schedules.sigmas("simple", 3)  # ss = 333.33: int(x * ss) = 0, 333, 666
    assert simple3[:-1].tolist() == SD1.sigmas[[999, 666, 333]].tolist()
    ddim = schedules.sigmas("ddim_uniform", 10)
    assert ddim[:-1].tolist() == SD1.sigmas[[901 - 100 * k for k in range(10)]].tolist() and ddim[-1] == 0
    # A1111's ddim schedule keeps every 33rd level for 30 steps: 31 sigmas before the 0
    assert len(schedules.sigmas("ddim_uniform", 30)) == 32


def test_kl_optimal_and_align_your_steps():
    kl = schedules.sigmas("kl_optimal", 8)
    a_min, a_max = math.atan(SD1.sigma_min), math.atan(SD1.sigma_max)
    expected = [math.tan(i / 8 * a_min + (1 - i / 8) * a_max) for i in range(9)]
    assert kl.tolist() == pytest.approx(expected, rel=1e-5)  # A1111: ends at sigma_min, no appended 0
    ays = schedules.sigmas("align_your_steps", 11)  # the published 11 sigmas as they are
    published = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
    assert ays.tolist() == pytest.approx([*published, 0.0], rel=1e-6)
    ays5 = schedules.sigmas("align_your_steps", 5)  # 5 values log-linearly resampled from the 11, then 0
    assert ays5.shape == (6,) and ays5[-1] == 0
    assert ays5[0].item() == pytest.approx(14.615) and ays5[4].item() == pytest.approx(0.029)
    assert ays5[2].item() == pytest.approx(1.396, rel=1e-6)  # the middle knot: the 6th value


@pytest.mark.parametrize("name", schedules.SCHEDULES)
def test_every_schedule_is_float32_descending_and_discards_the_penultimate(name):
    full = schedules.sigmas(name, 10)
    assert full.dtype == torch.float32 and full.device.type == "cpu"
    assert torch.all(full[1:] < full[:-1])
    discarded = schedules.sigmas(name, 10, discard_penultimate=True)
    longer = schedules.sigmas(name, 11)
    assert torch.equal(discarded, torch.cat([longer[:-2], longer[-1:]]))
    assert name in schedules.SCHEDULE_LABELS


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "karras_exponential"}, "unknown schedule"),
    ({"name": "Karras"}, "unknown schedule"),
    ({"steps": 0}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"sigma_min": -1.0}, "sigma_min"),
    ({"rho": 0.0}, "rho"),
    ({"sigma_min": 5.0, "sigma_max": 1.0}, "below"),
])
def test_bad_arguments_raise(kwargs, match):
    args = {"name": "karras", "steps": 10} | kwargs
    name, steps = args.pop("name"), args.pop("steps")
    with pytest.raises(ValueError, match=match):
        schedules.sigmas(name, steps, **args)


def test_model_schedule_rejects_a_bad_table():
    with pytest.raises(ValueError, match="1-D"):
        ModelSchedule(torch.ones(2, 3))
    with pytest.raises(ValueError, match="floating"):
        ModelSchedule(torch.arange(10))
