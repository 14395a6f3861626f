"""The few-step samplers `lcm` and `tcd` against diffusers' LCMScheduler / TCDScheduler (test-only reference):
first on a stand-in eps-model with the very same noise draws, then whole generations of the tiny random-weight
model driven by diffusers' schedulers by hand. Guidance <= 1 runs one UNet pass per step."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import LCMScheduler, TCDScheduler
from test_models_parity import rel_err
from test_samplers import SD15_SCHEDULER_CONFIG, SHAPE, EpsDenoiser, assert_close, fake_eps, start_noise

import engine
from engine import names
from engine.samplers import ENDS_AT_ZERO, TIMESTEPS, get_sampler, lcm, tcd
from engine.schedules import ModelSchedule
from engine.testing import write_random_checkpoint

logging.getLogger("diffusers").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = {"width": 64, "height": 64}


def test_registered_as_timestep_samplers():
    for name in ("lcm", "tcd"):
        assert name in names.SAMPLERS and name in names.TIMESTEP_SAMPLERS and name in ENDS_AT_ZERO
        assert names.resolve_sampler(name, "karras") == (name, "automatic")  # their own grid
        assert TIMESTEPS[name] is lcm.timesteps or TIMESTEPS[name] is tcd.timesteps
    assert get_sampler("lcm") is lcm.sample_lcm and get_sampler("tcd") is tcd.sample_tcd
    assert names.DISPLAY_NAMES["lcm"] == "LCM" and names.DISPLAY_NAMES["tcd"] == "TCD"


@pytest.mark.parametrize("scheduler", [LCMScheduler, TCDScheduler])
def test_grid_is_diffusers(scheduler):
    ref = scheduler.from_config(SD15_SCHEDULER_CONFIG)
    for steps in range(1, 51):
        ref.set_timesteps(steps)
        assert [int(t) for t in ref.timesteps] == lcm.timesteps(steps)[::-1]
    assert lcm.timesteps(4) == [259, 499, 759, 999]
    with pytest.raises(ValueError, match="from 1 to 50"):
        lcm.timesteps(51)


def sigmas_for(denoiser: EpsDenoiser, steps: int) -> torch.Tensor:
    return torch.cat([denoiser.sigmas[lcm.timesteps(steps)[::-1]], torch.zeros(1)])


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_equals_diffusers_with_the_same_noise(steps):
    ref = LCMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    ref.set_timesteps(steps)
    denoiser = EpsDenoiser(ref.alphas_cumprod)
    g_ours, g_ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    seen = []
    ours = lcm.sample_lcm(denoiser, start_noise(), sigmas_for(denoiser, steps),
                          noise=lambda: torch.randn(SHAPE, generator=g_ours),
                          schedule=ModelSchedule(ref.alphas_cumprod), callback=lambda d: seen.append(d["denoised"]))
    assert denoiser.timesteps == lcm.timesteps(steps)[::-1]
    expected, denoised = start_noise(), []
    for t in ref.timesteps:
        out = ref.step(fake_eps(expected, int(t)), t, expected, generator=g_ref)
        expected = out.prev_sample
        denoised.append(out.denoised)
    assert_close(ours, expected)
    for a, b in zip(seen, denoised, strict=True):
        assert_close(a, b)
    # the noise matters: another draw gives another sample (unless one step: no draw at all)
    other = lcm.sample_lcm(EpsDenoiser(ref.alphas_cumprod), start_noise(), sigmas_for(denoiser, steps),
                           noise=lambda: torch.randn(SHAPE), schedule=ModelSchedule(ref.alphas_cumprod))
    assert torch.equal(other, ours) == (steps == 1)


@pytest.mark.parametrize("steps, gamma", [(1, 0.3), (4, 0.3), (8, 0.3), (4, 0.0), (4, 1.0), (6, 0.7)])
def test_tcd_equals_diffusers_with_the_same_noise(steps, gamma):
    ref = TCDScheduler.from_config(SD15_SCHEDULER_CONFIG)
    ref.set_timesteps(steps)
    denoiser = EpsDenoiser(ref.alphas_cumprod)
    g_ours, g_ref = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    kwargs = {} if gamma == 0.3 else {"gamma": gamma}  # 0.3 is the default
    seen = []
    ours = tcd.sample_tcd(denoiser, start_noise(1), sigmas_for(denoiser, steps),
                          noise=lambda: torch.randn(SHAPE, generator=g_ours), schedule=ModelSchedule(ref.alphas_cumprod),
                          callback=lambda d: seen.append(d["x"]), **kwargs)
    expected, xs = start_noise(1), []
    for t in ref.timesteps:
        expected = ref.step(fake_eps(expected, int(t)), t, expected, eta=gamma, generator=g_ref).prev_sample
        xs.append(expected)
    assert_close(ours, expected)
    for a, b in zip(seen, xs, strict=True):
        assert_close(a, b)


def test_tcd_rejects_gamma_out_of_range():
    with pytest.raises(ValueError, match="gamma"):
        tcd.sample_tcd(lambda x, s: x, start_noise(), torch.tensor([1.0, 0.0]), gamma=1.5)


# --- whole generations: our pipeline against diffusers' schedulers driving the same UNet by hand ---------------

@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("fast") / "tiny.safetensors", seed=5)
    return engine.load_pipeline(ckpt, device="cpu", dtype="fp32")


def count_unet_batches(pipe):
    """Records the batch size of every UNet pass (a forward hook: the UNet itself runs for real)."""
    batches = []
    handle = pipe.unet.register_forward_hook(lambda module, args, out: batches.append(out.shape[0]))
    return batches, handle


def hand_run(pipe, scheduler, prompt, negative, cfg_scale, steps, seed, **step_kwargs):
    """diffusers' StableDiffusionPipeline loop, written out around our UNet and text encoder."""
    ref = scheduler.from_config(SD15_SCHEDULER_CONFIG)
    ref.set_timesteps(steps)
    cond, uncond = pipe.encode_prompt([prompt]), pipe.encode_prompt([negative])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 4, 8, 8), generator=g)  # A1111 CPU noise for one image: the seed's own generator
    for t in ref.timesteps:
        tt = torch.tensor([float(t)])
        with torch.no_grad():
            eps = pipe.unet(x, tt, cond)
            if cfg_scale > 1:
                eps_uncond = pipe.unet(x, tt, uncond)
                eps = eps_uncond + cfg_scale * (eps - eps_uncond)
        x = ref.step(eps, t, x, generator=g, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("cfg_scale", [1.0, 0.0, 1.5])
def test_lcm_generation_equals_diffusers_scheduler_run(pipe, cfg_scale):
    req = engine.GenerationRequest(prompt="nvinkpunk a fox", negative_prompt="blurry", steps=4, seed=21,
                                   sampler="lcm", cfg_scale=cfg_scale, **SIZE)
    batches, handle = count_unet_batches(pipe)
    events = []
    try:
        res = pipe.generate(req, on_step=events.append)
    finally:
        handle.remove()
    # guidance <= 1: one UNet pass of batch 1 per step; above 1 the usual cond + uncond batch
    assert batches == ([1] * 4 if cfg_scale <= 1 else [2] * 4)
    assert [e.step for e in events] == [1, 2, 3, 4] and events[0].total == 4
    expected = hand_run(pipe, LCMScheduler, req.prompt, req.negative_prompt, cfg_scale, 4, 21)
    assert rel_err(res.latents, expected) <= 1e-4


def test_tcd_generation_equals_diffusers_scheduler_run(pipe):
    req = engine.GenerationRequest(prompt="nvinkpunk a fox", steps=4, seed=8, sampler="tcd", cfg_scale=1.0, **SIZE)
    res = pipe.generate(req)
    expected = hand_run(pipe, TCDScheduler, req.prompt, "", 1.0, 4, 8, eta=0.3)
    assert rel_err(res.latents, expected) <= 1e-4
    det = hand_run(pipe, TCDScheduler, req.prompt, "", 1.0, 4, 8, eta=0.0)
    assert rel_err(res.latents, det) > 1e-3  # gamma 0.3 did add noise


def test_lcm_img2img_runs_diffusers_img2img_slice(pipe):
    from PIL import Image

    init = Image.new("RGB", (64, 64), (200, 40, 90))
    req = engine.GenerationRequest(prompt="ink", steps=4, seed=3, sampler="lcm", cfg_scale=1.0, init_image=init,
                                   strength=0.5, **SIZE)
    events = []
    pipe.generate(req, on_step=events.append)
    # StableDiffusionImg2ImgPipeline.get_timesteps: the last int(4 * 0.5) = 2 of [999, 759, 499, 259]
    assert [e.step for e in events] == [1, 2] and events[0].total == 2


def test_too_many_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="from 1 to 50"):  # on creation, before any work
        engine.GenerationRequest(prompt="ink", steps=60, seed=3, sampler="lcm", **SIZE)
