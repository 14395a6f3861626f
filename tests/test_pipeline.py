"""Whole generations against runs assembled by hand from k-diffusion's own samplers (tests/reference) and the
CompVisDenoiser + CFG maths written out here, plus the engine's promises: A1111's per-image seeds, variation,
ENSD, prompt editing by call count, img2img's step slice, previews, cancel within a step."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from reference.k_diffusion import sampling as kd
from test_models_parity import rel_err

import engine
from engine.brownian import BrownianTreeNoiseSampler
from engine.samplers import unipc
from engine.schedules import ModelSchedule
from engine.testing import write_random_checkpoint

SIZE = {"width": 64, "height": 64}
SHAPE = (4, 8, 8)
SCHEDULE = ModelSchedule.sd1()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("pipe") / "tiny.safetensors", seed=3)


@pytest.fixture(scope="module")
def pipe(ckpt):
    return engine.load_pipeline(ckpt, device="cpu", dtype="fp32")


def hand_denoiser(pipe, conds, uncond, cfg_scale, calls):
    """k-diffusion CompVisDenoiser + A1111 CFGDenoiser, written out: c_in, t = sigma_to_t(sigma) rounded to
    fp16, x0 = x - sigma * eps, uncond + (cond - uncond) * scale; `conds(k)` is the context of call k."""

    def denoise(x, sigma):
        s = sigma.reshape(-1, 1, 1, 1)
        t = SCHEDULE.sigma_to_t(sigma).half().float()
        x_in = x / (s**2 + 1) ** 0.5
        b = x.shape[0]
        cond = conds(len(calls)).expand(b, -1, -1)
        calls.append(t[0].item())
        with torch.no_grad():
            d_cond = x - s * pipe.unet(x_in, t, cond)
            d_uncond = x - s * pipe.unet(x_in, t, uncond.expand(b, -1, -1))
        return d_uncond + (d_cond - d_uncond) * cfg_scale

    return denoise


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def draw(gens):
    """A1111 ImageRNG with the CPU source: each image's own generator, one (4, h, w) draw each."""
    return torch.stack([torch.randn(SHAPE, generator=g) for g in gens])


def uniform_sigmas(n):
    return SCHEDULE.uniform(n)


def karras(n):
    return kd.get_sigmas_karras(n, SCHEDULE.sigma_min, SCHEDULE.sigma_max)


def discard_penultimate(sigmas):
    return torch.cat([sigmas[:-2], sigmas[-1:]])


@pytest.mark.parametrize(
    "sampler, make_sigmas, reference",
    [
        ("dpmpp_2m", lambda n: karras(n), kd.sample_dpmpp_2m),
        ("euler_a", uniform_sigmas, kd.sample_euler_ancestral),
        ("lms", uniform_sigmas, kd.sample_lms),
        # DPM2: Karras with the penultimate sigma dropped (one more computed, then cut)
        ("dpm2", lambda n: discard_penultimate(karras(n + 1)), kd.sample_dpm_2),
        (
            "dpmpp_2m_sde",
            lambda n: kd.get_sigmas_exponential(n, SCHEDULE.sigma_min, SCHEDULE.sigma_max),
            kd.sample_dpmpp_2m_sde,
        ),
    ],
)
def test_txt2img_equals_k_diffusion_run_assembled_by_hand(pipe, sampler, make_sigmas, reference):
    prompt, negative, steps, seeds = "nvinkpunk a fox in a trench coat", "blurry, lowres", 4, [11, 12]
    req = engine.GenerationRequest(
        prompt=prompt,
        negative_prompt=negative,
        steps=steps,
        cfg_scale=7.5,
        sampler=sampler,
        batch_size=2,
        seed=seeds[0],
        **SIZE,
    )
    res = pipe.generate(req)
    assert res.seeds == seeds

    cond, uncond = pipe.encode_prompt([prompt]), pipe.encode_prompt([negative])
    gens = generators(seeds)
    sigmas = make_sigmas(steps)
    x = draw(gens) * sigmas[0]
    kwargs = {"noise_sampler": lambda s, sn: draw(gens)} if sampler == "euler_a" else {}
    if sampler == "dpmpp_2m_sde":  # engine.brownian is checked against k-diffusion + torchsde on its own
        kwargs = {"noise_sampler": BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seeds)}
    calls = []
    expected = reference(hand_denoiser(pipe, lambda k: cond, uncond, 7.5, calls), x, sigmas, **kwargs)
    assert rel_err(res.latents, expected) <= 1e-4
    assert all(t == round(t * 2) / 2 for t in calls if t >= 512)  # fp16 steps of 0.5 above t = 512


@pytest.mark.parametrize("sampler, switch_after", [("euler", 1), ("heun", 3)])
def test_prompt_editing_switches_at_a1111s_call(pipe, sampler, switch_after):
    # Euler, 3 calls: "[cat:dog:1]" uses "cat" for calls 0 and 1 (k <= 1, A1111's off-by-one); Heun's schedule
    # is built for 2 * steps = 6 calls (it makes 5), so "[cat:dog:3]" switches after calls 0..3.
    steps = 3
    edit = f"a [cat:dog:{switch_after}]"
    req = engine.GenerationRequest(prompt=edit, steps=steps, seed=4, sampler=sampler, **SIZE)
    res = pipe.generate(req)
    cat, dog, uncond = pipe.encode_prompt(["a cat"]), pipe.encode_prompt(["a dog"]), pipe.encode_prompt([""])
    sigmas = uniform_sigmas(steps)
    x = draw(generators([4])) * sigmas[0]
    calls = []
    ref = {"euler": kd.sample_euler, "heun": kd.sample_heun}[sampler]
    denoiser = hand_denoiser(pipe, lambda k: cat if k <= switch_after else dog, uncond, req.cfg_scale, calls)
    expected = ref(denoiser, x, sigmas)
    assert len(calls) == (5 if sampler == "heun" else 3)
    assert rel_err(res.latents, expected) <= 1e-4
    plain = pipe.generate(
        engine.GenerationRequest(prompt="a cat", steps=steps, seed=4, sampler=sampler, **SIZE)
    )
    assert not torch.allclose(plain.latents, res.latents)


def test_ddim_runs_a1111s_grid(pipe):
    events = []
    req = engine.GenerationRequest(prompt="ink", steps=4, seed=2, sampler="ddim", cfg_scale=1.0, **SIZE)
    res = pipe.generate(req, on_step=events.append)
    assert [e.step for e in events] == [1, 2, 3] and events[0].total == 3  # len(grid) - 1 calls
    cond = pipe.encode_prompt(["ink"])
    x = draw(generators([2]))
    for t_now, t_prev in [(751, 501), (501, 251), (251, 1)]:
        a, a_prev = SCHEDULE.alphas_cumprod[t_now].item(), SCHEDULE.alphas_cumprod[t_prev].item()
        with torch.no_grad():
            eps = pipe.unet(x, torch.tensor([float(t_now)]), cond)
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    assert rel_err(res.latents, x) <= 1e-4


def test_unipc_runs_a1111s_grid(pipe):
    # the solver is checked against diffusers in test_samplers; here the pipeline's grid, start and UNet times
    events, seen = [], []
    req = engine.GenerationRequest(prompt="ink", steps=4, seed=3, sampler="unipc", cfg_scale=1.0, **SIZE)
    res = pipe.generate(req, on_step=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4]  # N = len(DDIM grid) calls
    cond = pipe.encode_prompt(["ink"])

    def denoiser(x, sigma, timestep):
        seen.append(timestep[0].item())
        s = sigma.reshape(-1, 1, 1, 1)
        with torch.no_grad():
            return x - s * pipe.unet(x / (s**2 + 1) ** 0.5, timestep.half().float(), cond)

    sigmas, times = unipc.grid(4, SCHEDULE.alphas_cumprod)
    expected = unipc.sample_unipc(denoiser, draw(generators([3])), sigmas, timesteps=times)
    assert seen == [999.0, 749.25, 499.5, 249.75]
    assert rel_err(res.latents, expected) <= 1e-4


def test_seeds_variation_rng_and_ensd(pipe):
    def run(**kw):
        base = {"prompt": "ink", "steps": 3, "seed": 123, "sampler": "euler_a", **SIZE}
        return pipe.generate(engine.GenerationRequest(**{**base, **kw})).latents

    first = run(batch_size=2)
    assert torch.equal(first, run(batch_size=2))
    assert rel_err(first[1:], run(seed=124)) < 1e-5  # image k of a batch is its own seed's image
    assert not torch.allclose(first[:1], run(seed=9))
    assert not torch.allclose(run(), run(ensd=31337))
    assert not torch.allclose(run(), run(rng="nv")) and torch.equal(run(rng="nv"), run(rng="nv"))
    assert torch.equal(run(), run(variation_seed=5, variation_strength=0.0))
    assert not torch.allclose(run(), run(variation_seed=5, variation_strength=0.3))
    # deterministic sampler: strength 1 is the variation seed's own noise (A1111 slerp at 1)
    full = run(sampler="dpmpp_2m", variation_seed=5, variation_strength=1.0)
    assert rel_err(full, run(sampler="dpmpp_2m", seed=5)) < 1e-4
    assert torch.equal(run(sampler="dpmpp_2m"), run(sampler="dpmpp_2m", ensd=31337))


def test_random_seed_is_reported(pipe):
    res = pipe.generate(engine.GenerationRequest(prompt="ink", steps=2, sampler="ddpm", **SIZE))
    again = pipe.generate(
        engine.GenerationRequest(prompt="ink", steps=2, sampler="ddpm", seed=res.seed, **SIZE)
    )
    assert torch.equal(res.latents, again.latents)


def test_img2img_runs_a1111s_slice(pipe):
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))

    def run(strength, sampler="dpmpp_2m"):
        events = []
        req = engine.GenerationRequest(
            prompt="ink", steps=10, seed=5, init_image=init, strength=strength, sampler=sampler, **SIZE
        )
        return pipe.generate(req, on_step=events.append), events

    (low, events), (again, _), (high, _) = run(0.2), run(0.2), run(1.0)
    assert torch.equal(low.latents, again.latents)
    assert len(events) == int(0.2 * 10) + 1 == 3  # t_enc + 1 sampler steps
    with torch.no_grad():
        pixels = torch.from_numpy(np.asarray(init, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        init_latents = pipe.vae.encode(pixels, generator=torch.Generator().manual_seed(5)) * 0.18215
    # the hand run: sigmas[steps - t_enc - 1:], x = init + noise * sigma_start
    sigmas = kd.get_sigmas_karras(10, SCHEDULE.sigma_min, SCHEDULE.sigma_max)[10 - 2 - 1 :]
    x = init_latents + draw(generators([5])) * sigmas[0]
    cond, uncond = pipe.encode_prompt(["ink"]), pipe.encode_prompt([""])
    expected = kd.sample_dpmpp_2m(hand_denoiser(pipe, lambda k: cond, uncond, 7.5, []), x, sigmas)
    assert rel_err(low.latents, expected) <= 1e-4
    assert rel_err(low.latents, init_latents) < rel_err(high.latents, init_latents)
    # DDIM: t_enc - 1 calls; UniPC: t_enc; DDPM: int(steps * strength)
    for sampler, n_events in (("ddim", 1), ("unipc", 2), ("ddpm", 2)):
        assert len(run(0.2, sampler)[1]) == n_events


def test_long_prompt_is_chunked_and_run_apart_from_a_short_negative(pipe):
    long_prompt = ", ".join(["nvinkpunk neon ink splash"] * 30)  # ~150 tokens
    context = pipe.encode_prompt([long_prompt, ""])
    chunks = context.shape[1] // 77
    assert chunks >= 2 and context.shape[:2] == (2, chunks * 77)  # "" padded with empty chunks in one batch
    res = pipe.generate(
        engine.GenerationRequest(prompt=long_prompt, steps=2, seed=1, sampler="euler", **SIZE)
    )
    cond, uncond = pipe.encode_prompt([long_prompt]), pipe.encode_prompt([""])
    assert cond.shape[1] == chunks * 77 and uncond.shape[1] == 77  # different lengths: two UNet passes
    sigmas = uniform_sigmas(2)
    x = draw(generators([1])) * sigmas[0]
    expected = kd.sample_euler(hand_denoiser(pipe, lambda k: cond, uncond, 7.5, []), x, sigmas)
    assert rel_err(res.latents, expected) <= 1e-4


def test_step_events_with_previews(pipe):
    events = []
    pipe.generate(
        engine.GenerationRequest(prompt="ink", steps=4, seed=2, width=128, height=64), on_step=events.append
    )
    assert [e.step for e in events] == [1, 2, 3, 4] and {e.total for e in events} == {4}
    assert all(e.preview.shape == (8, 16, 3) and e.preview.dtype == np.uint8 for e in events)
    assert events[-1].elapsed >= events[0].elapsed > 0


def test_cancel_between_steps_returns_nothing(pipe):
    cancel = threading.Event()
    seen = []

    def on_step(event):
        seen.append(event.step)
        if event.step == 2:
            cancel.set()

    with pytest.raises(engine.Cancelled):
        pipe.generate(
            engine.GenerationRequest(prompt="ink", steps=10, **SIZE), on_step=on_step, cancel=cancel
        )
    assert seen == [1, 2]


def test_cancel_takes_effect_inside_a_unet_pass(pipe):
    """Set the event while the UNet is in its down path: the up path of that same pass never runs."""
    cancel = threading.Event()
    ran_output_blocks = []
    hooks = [
        pipe.unet.input_blocks[1].register_forward_hook(lambda *_: cancel.set()),
        pipe.unet.output_blocks[-1].register_forward_hook(lambda *_: ran_output_blocks.append(1)),
    ]
    try:
        with pytest.raises(engine.Cancelled):
            pipe.generate(engine.GenerationRequest(prompt="ink", steps=5, **SIZE), cancel=cancel)
    finally:
        for hook in hooks:
            hook.remove()
    assert ran_output_blocks == []


def test_bf16_close_to_fp32(ckpt, pipe):
    bf16 = engine.load_pipeline(ckpt, device="cpu", dtype="bf16")
    req = engine.GenerationRequest(prompt="ink", steps=4, seed=4, sampler="dpmpp_2m", **SIZE)
    assert rel_err(bf16.generate(req).latents, pipe.generate(req).latents) < 0.1


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(engine.CheckpointError, match="no checkpoint file"):
        engine.load_pipeline(tmp_path / "missing.ckpt")


def test_cond_and_uncond_share_a_unet_pass_only_when_their_lengths_match(pipe):
    batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        pipe.generate(engine.GenerationRequest(prompt="ink", steps=2, seed=1, sampler="euler", **SIZE))
        assert batches == [2, 2]  # [cond, uncond] rows in one pass per step
        batches.clear()
        long_prompt = ", ".join(["nvinkpunk neon ink splash"] * 30)
        pipe.generate(engine.GenerationRequest(prompt=long_prompt, steps=2, seed=1, sampler="euler", **SIZE))
        assert batches == [1, 1, 1, 1]  # 77 * k tokens against 77: two passes per step, as A1111
        batches.clear()
        pipe.generate(engine.GenerationRequest(prompt="ink", steps=2, seed=1, sampler="heun", cfg_scale=1.0,
                                               **SIZE))
        assert batches == [1, 1, 1]  # cfg 1: no uncond pass; Heun: 2 calls per step, 1 on the last
    finally:
        hook.remove()


def test_images_are_quantised_as_a1111_truncates() -> None:
    """A1111 writes uint8(255 * x) (truncation), not diffusers' rounding: 0.999/255 above a level stays on it."""
    from engine.pipeline import _tensor_to_images

    levels = torch.tensor([0.0, 10.25, 10.9, 127.5, 254.9, 255.0]) / 255.0
    x = (levels * 2 - 1).view(1, 1, 1, -1).expand(1, 3, 1, -1)
    pixels = np.asarray(_tensor_to_images(x)[0])[0, :, 0]
    assert pixels.tolist() == [0, 10, 10, 127, 254, 255]
    expected = (255.0 * ((x[0, 0, 0].numpy() + 1.0) / 2.0).clip(0, 1)).astype(np.uint8)  # A1111's formula
    assert pixels.tolist() == expected.tolist()
