"""Pipeline.generate with LoRAs, embeddings and an external VAE: what it merges, what it encodes, and the
hashes it reports for the image's metadata (issue 13)."""

from __future__ import annotations

import pytest
import torch
from reference.k_diffusion import sampling as kd
from safetensors.torch import save_file
from test_lora import random_lora
from test_models_parity import rel_err
from test_pipeline import SCHEDULE, SIZE, draw, generators, hand_denoiser

import engine
from engine.lora import apply_loras
from engine.testing import ldm_state_dict, write_random_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("gen_net") / "tiny.safetensors", seed=21)


@pytest.fixture(scope="module")
def pipe(ckpt):
    return engine.load_pipeline(ckpt, device="cpu", dtype="fp32")


def request(**kw):
    base = {"prompt": "a fox <lora:style:0.8>", "negative_prompt": "blurry", "steps": 3, "sampler": "euler",
            "seed": 5, **SIZE}
    return engine.GenerationRequest(**{**base, **kw})


def test_lora_request_merges_and_a_plain_one_restores(ckpt, pipe, tmp_path):
    lora = tmp_path / "style.safetensors"
    save_file(random_lora(pipe.models, "kohya_ldm", seed=4), str(lora))
    plain = pipe.generate(request())
    with_lora = pipe.generate(request(loras=[(lora, 0.8)]))
    assert not torch.equal(plain.latents, with_lora.latents)
    assert with_lora.lora_hashes == {"style": engine.lora_hash(lora)}
    assert plain.lora_hashes == {}

    by_hand = engine.load_pipeline(ckpt, device="cpu", dtype="fp32")
    apply_loras(by_hand.models, [(lora, 0.8)])  # merged by hand; the plain request leaves it
    expected = by_hand.generate(request())
    assert torch.equal(with_lora.latents, expected.latents)

    again = pipe.generate(request())  # an empty list gives the plain weights back exactly
    assert torch.equal(again.latents, plain.latents)
    assert again.lora_hashes == {}


def test_embedding_word_conditions_as_the_conditioner_says(pipe, tmp_path):
    width = pipe.text_encoder.text_model.embeddings.token_embedding.weight.shape[1]
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "inkstyle.safetensors"
    save_file({"emb_params": vectors}, str(path))
    word = pipe.add_embedding(path)
    assert word == "inkstyle"

    prompt, negative, steps, seed = "a fox, inkstyle", "blurry", 3, 9
    res = pipe.generate(request(prompt=prompt, negative_prompt=negative, steps=steps, seed=seed))
    assert res.ti_hashes == {"inkstyle": engine.embedding_hash(path)}

    cond = pipe.conditioner.encode([prompt], embeddings=pipe.embeddings)
    plain_cond = pipe.conditioner.encode([prompt])
    assert not torch.allclose(cond, plain_cond)
    uncond = pipe.conditioner.encode([negative], embeddings=pipe.embeddings)
    sigmas = SCHEDULE.uniform(steps)  # euler: A1111 "Automatic" is uniform
    x = draw(generators([seed])) * sigmas[0]
    expected = kd.sample_euler(hand_denoiser(pipe, lambda k: cond, uncond, 7.5, []), x, sigmas)
    assert rel_err(res.latents, expected) <= 1e-4  # as test_pipeline's hand-assembled runs

    unused = pipe.generate(request(prompt="a fox", negative_prompt=negative, steps=1))
    assert unused.ti_hashes == {}  # A1111 lists only the embeddings a prompt used
    in_negative = pipe.generate(request(prompt="a fox", negative_prompt="inkstyle", steps=1))
    assert in_negative.ti_hashes == {"inkstyle": engine.embedding_hash(path)}


def test_external_vae_is_reported(pipe, tmp_path):
    state = {k: v for k, v in ldm_state_dict(seed=5).items() if k.startswith("first_stage_model.")}
    vae = tmp_path / "my-vae.safetensors"
    save_file(state, str(vae))
    pipe.set_vae(vae)
    try:
        res = pipe.generate(request(steps=1))
        assert (res.vae_name, res.vae_hash) == ("my-vae.safetensors", engine.vae_hash(vae))
    finally:
        pipe.set_vae(None)
    res = pipe.generate(request(steps=1))
    assert (res.vae_name, res.vae_hash) == (None, None)
