"""Hires fix (engine.hires + Pipeline.generate) against A1111's rules (../shared/research/a1111-reproduction.md
§6, §4.5): sizes, the fix-steps rule, and the second pass assembled by hand from the engine's parts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_models_parity import rel_err

import engine
from engine import hires
from engine.denoiser import CFGDenoiser
from engine.hires import HiresFix
from engine.samplers import get_sampler
from engine.schedules import sigmas as schedule_sigmas
from engine.testing import write_random_checkpoint


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("hires") / "tiny.safetensors", seed=5)
    return engine.load_pipeline(ckpt, device="cpu", dtype="fp32")


def test_sizes_as_a1111():
    assert HiresFix(scale=2).sizes(512, 512) == ((1024, 1024), (1024, 1024))
    assert HiresFix(scale=1.3).sizes(512, 512) == ((665, 665), (664, 664))  # latents are 665 // 8
    assert HiresFix(width=1024).sizes(512, 768) == ((1024, 1536), (1024, 1536))  # one side: keep aspect
    assert HiresFix(height=1000).sizes(512, 768) == ((666, 1000), (664, 1000))
    # both sides: cover, then crop centrally in latent space
    assert HiresFix(width=96, height=96).sizes(64, 48) == ((128, 96), (96, 96))
    z = torch.arange(16.0).reshape(1, 1, 1, 16).expand(1, 4, 12, 16)
    cropped = hires.crop_latents(z, (128, 96), (96, 96))
    assert cropped.shape == (1, 4, 12, 12) and cropped[0, 0, 0, 0] == 2 and cropped[0, 0, 0, -1] == 13


def test_fix_steps_rule():
    # §4.5: hires 10 steps at denoise 0.5 -> a schedule of 20 from index 10: exactly 10 sampler steps
    assert hires.fix_steps(10, 0.5) == (20, 9)
    assert hires.fix_steps(7, 1.0) == (7, 6)  # min(denoise, 0.999): int(7 / 0.999) = 7
    assert hires.fix_steps(14, 0.7) == (20, 13)  # int(14 / 0.7) = 20 (not 19.999...)


def test_validation():
    for bad in ({"scale": 0.5}, {"scale": 5}, {"width": 100}, {"steps": -1}, {"denoise": 0},
                {"denoise": 1.5}, {"upscaler": "ESRGAN_4x"}):
        with pytest.raises(ValueError):
            HiresFix(**bad)
    with pytest.raises(ValueError, match="txt2img"):
        from PIL import Image

        engine.GenerationRequest("x", width=64, height=64, init_image=Image.new("RGB", (64, 64)),
                                 hires=HiresFix())
    with pytest.raises(ValueError, match="2048"):
        engine.GenerationRequest("x", width=1536, height=512, hires=HiresFix(scale=1.5))
    with pytest.raises(TypeError):
        engine.GenerationRequest("x", hires={"scale": 2})


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_output_size_and_step_events(pipe, upscaler):
    events = []
    req = engine.GenerationRequest("a lighthouse", width=80, height=64, steps=5, seed=9, batch_size=2,
                                   sampler="dpmpp_2m", hires=HiresFix(width=96, height=96, steps=3,
                                                                      denoise=0.6, upscaler=upscaler))
    result = pipe.generate(req, on_step=events.append)
    assert [im.size for im in result.images] == [(96, 96), (96, 96)]
    assert result.latents.shape == (2, 4, 12, 12)
    assert [e.step for e in events] == list(range(1, 9)) and {e.total for e in events} == {8}  # 5 + 3


def test_second_pass_uses_fresh_noise_from_the_same_seeds(pipe):
    seed, steps, hr_steps, denoise = 40, 4, 3, 0.5
    common = {"width": 64, "height": 64, "steps": steps, "seed": seed, "batch_size": 2, "sampler": "euler"}
    fix = HiresFix(scale=1.5, steps=hr_steps, denoise=denoise, upscaler="Latent (bicubic)")
    result = pipe.generate(engine.GenerationRequest("a lighthouse", hires=fix, **common))
    first = pipe.generate(engine.GenerationRequest("a lighthouse", **common)).latents

    # by hand: bicubic latent upscale; each image's first draw from a new generator seeded with its seed
    # at the new shape; Euler's schedule of int(3 / 0.5) = 6 from index 6 - 2 - 1 = 3; x = latent + noise * sigma
    up = F.interpolate(first, size=(12, 12), mode="bicubic")
    noise = torch.stack([torch.randn((4, 12, 12), generator=torch.Generator().manual_seed(s))
                         for s in (seed, seed + 1)])
    full = schedule_sigmas("uniform", 6)
    run = full[3:]
    assert len(run) - 1 == hr_steps
    cond = pipe.conditioner.schedule("a lighthouse", steps, hires_steps=hr_steps)
    uncond = pipe.conditioner.schedule("", steps, hires_steps=hr_steps)
    denoiser = CFGDenoiser(pipe.unet, pipe.model_schedule, cond, uncond, 7.5, dtype=torch.float32)
    expected = get_sampler("euler")(denoiser, up + noise * run[0], run)
    assert rel_err(result.latents, expected) < 1e-5
    # the rule matters: the first pass's generators continued (their second draws) give another result
    gens = [torch.Generator().manual_seed(s) for s in (seed, seed + 1)]
    for g in gens:
        torch.randn((4, 8, 8), generator=g)
    other_noise = torch.stack([torch.randn((4, 12, 12), generator=g) for g in gens])
    other = get_sampler("euler")(CFGDenoiser(pipe.unet, pipe.model_schedule, cond, uncond, 7.5,
                                             dtype=torch.float32), up + other_noise * run[0], run)
    assert rel_err(other, expected) > 1e-2
