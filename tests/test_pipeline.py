"""Whole generations against diffusers' StableDiffusionPipeline holding the same weights, plus the engine's
own promises: seeds, img2img, long prompts, previews, cancel within a step."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from test_models_parity import reference_models, rel_err
from test_samplers import REFERENCES, SD15_SCHEDULER_CONFIG
from transformers import CLIPTokenizer

import engine
from engine.assets import tokenizer_files
from engine.checkpoint import read_state_dict
from engine.testing import write_random_checkpoint

SIZE = {"width": 64, "height": 64}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("pipe") / "tiny.safetensors", seed=3)


@pytest.fixture(scope="module")
def pipe(ckpt):
    return engine.load_pipeline(ckpt, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def reference(ckpt):
    clip, unet, vae = reference_models(read_state_dict(ckpt))
    vocab, merges = tokenizer_files()
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    return StableDiffusionPipeline(vae=vae, text_encoder=clip, tokenizer=tokenizer, unet=unet,
                                   scheduler=REFERENCES["ddim"][0].from_config(SD15_SCHEDULER_CONFIG),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m", "dpmpp_2m_karras"])
def test_txt2img_matches_diffusers(pipe, reference, sampler):
    cls, overrides = REFERENCES[sampler]
    reference.scheduler = cls.from_config(SD15_SCHEDULER_CONFIG, **overrides)
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    kwargs = dict(prompt="nvinkpunk a fox in a trench coat", negative_prompt="blurry, lowres",
                  num_inference_steps=8, guidance_scale=7.5, num_images_per_prompt=2, **SIZE)
    captured = {}

    def keep_latents(_pipe, _i, _t, callback_kwargs):
        captured["latents"] = callback_kwargs["latents"]
        return callback_kwargs

    with torch.no_grad():
        ref_images = reference(**kwargs, latents=noise.clone(), output_type="np",
                               callback_on_step_end=keep_latents).images
    ref_latents = captured["latents"]
    req = engine.GenerationRequest(prompt=kwargs["prompt"], negative_prompt=kwargs["negative_prompt"], steps=8,
                                   cfg_scale=7.5, sampler=sampler, batch_size=2, seed=1, **SIZE)
    res = pipe.generate(req, noise=noise)
    assert rel_err(res.latents, ref_latents) <= 1e-3
    ours = np.stack([np.asarray(im, dtype=np.float32) / 255 for im in res.images])
    assert np.abs(ours - ref_images).max() <= 2 / 255  # identical up to uint8 rounding


def test_seeds_reproduce_and_differ(pipe):
    req = engine.GenerationRequest(prompt="ink", steps=3, seed=123, sampler="euler_a", batch_size=2, **SIZE)
    first, again = pipe.generate(req), pipe.generate(req)
    assert first.seeds == [123, 124]
    assert torch.equal(first.latents, again.latents)
    other = pipe.generate(engine.GenerationRequest(prompt="ink", steps=3, seed=9, sampler="euler_a", **SIZE))
    assert not torch.allclose(first.latents[:1], other.latents)
    # image k of a batch is the image its own seed makes alone (deterministic samplers)
    batch = pipe.generate(engine.GenerationRequest(prompt="ink", steps=3, seed=50, sampler="ddim", batch_size=2,
                                                   **SIZE))
    single = pipe.generate(engine.GenerationRequest(prompt="ink", steps=3, seed=51, sampler="ddim", **SIZE))
    assert rel_err(batch.latents[1:], single.latents) < 1e-5


def test_random_seed_is_reported(pipe):
    res = pipe.generate(engine.GenerationRequest(prompt="ink", steps=2, sampler="ddpm", **SIZE))
    again = pipe.generate(engine.GenerationRequest(prompt="ink", steps=2, sampler="ddpm", seed=res.seed, **SIZE))
    assert torch.equal(res.latents, again.latents)


def test_img2img_reproducible_and_follows_strength(pipe):
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    init_latents = None

    def run(strength: float, seed: int = 5):
        req = engine.GenerationRequest(prompt="ink", steps=10, seed=seed, init_image=init, strength=strength,
                                       sampler="dpmpp_2m_karras", **SIZE)
        return pipe.generate(req)

    low, low_again, high = run(0.2), run(0.2), run(1.0)
    assert torch.equal(low.latents, low_again.latents)
    with torch.no_grad():
        init_latents = pipe.vae.encode(torch.from_numpy(np.asarray(init, dtype=np.float32) / 127.5 - 1)
                                       .permute(2, 0, 1)[None]) * 0.18215
    # low strength stays near the picture it started from; strength 1 has forgotten it
    assert rel_err(low.latents, init_latents) < rel_err(high.latents, init_latents)
    assert np.isfinite(np.asarray(low.images[0], dtype=np.float32)).all()


def test_long_prompt_is_chunked_not_cut(pipe):
    long_prompt = ", ".join(["nvinkpunk neon ink splash"] * 30)  # ~150 tokens
    n_tokens = pipe.tokenizer.count_tokens(long_prompt)
    assert n_tokens > 150
    context = pipe.encode_prompt([long_prompt, ""])
    assert context.shape[:2] == (2, -(-n_tokens // 75) * 77)
    res = pipe.generate(engine.GenerationRequest(prompt=long_prompt, steps=2, seed=1, **SIZE))
    short = pipe.generate(engine.GenerationRequest(prompt="nvinkpunk neon ink splash", steps=2, seed=1, **SIZE))
    assert not torch.equal(res.latents, short.latents)  # the tail of the prompt mattered


def test_step_events_with_previews(pipe):
    events = []
    pipe.generate(engine.GenerationRequest(prompt="ink", steps=4, seed=2, width=128, height=64), on_step=events.append)
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
        pipe.generate(engine.GenerationRequest(prompt="ink", steps=10, **SIZE), on_step=on_step, cancel=cancel)
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
