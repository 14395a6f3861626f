"""Inpainting against diffusers' StableDiffusionInpaintPipeline on random weights, 4- and 9-channel UNets.

Both sides run the same maths: diffusers' EulerDiscreteScheduler with "trailing" spacing (integer
timesteps, so our sigma_to_t gives the UNet the same t; no fp16 rounding of t on our side), strength 0.75,
CFG 7.5, the conditioning our text encoder made (passed to diffusers as prompt_embeds), the same initial
noise (diffusers' second draw from its generator: the first samples the init image's posterior), and a VAE
whose posterior std is ~3e-7 (quant_conv's log-variance rows set to -30) so diffusers' posterior samples
equal our posterior means. Our side is the engine's CFGDenoiser + engine.inpaint + sample_euler.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
from PIL import Image
from test_models_parity import reference_models, rel_err
from transformers import CLIPTokenizer

import engine
from engine import inpaint
from engine.assets import tokenizer_files
from engine.denoiser import CFGDenoiser
from engine.samplers import get_sampler
from engine.testing import ldm_state_dict
from engine.vae import SCALING_FACTOR

W, H, STEPS, STRENGTH, CFG, SEED = 80, 64, 8, 0.75, 7.5, 21


def state(channels: int) -> dict[str, torch.Tensor]:
    s = ldm_state_dict("tiny", seed=7)
    s["first_stage_model.quant_conv.weight"][4:] = 0  # posterior log-variance -30: std 3e-7
    s["first_stage_model.quant_conv.bias"][4:] = -30.0
    if channels == 9:
        key = "model.diffusion_model.input_blocks.0.0.weight"
        g = torch.Generator().manual_seed(1)
        s[key] = torch.randn(s[key].shape[0], 9, 3, 3, generator=g) / 9.0
    return s


def write(tmp_path, channels: int):
    from safetensors.torch import save_file

    path = tmp_path / f"tiny{channels}.safetensors"
    save_file(state(channels), str(path))
    return path


def reference_pipe(channels: int) -> StableDiffusionInpaintPipeline:
    s = state(channels)
    conv_in = s["model.diffusion_model.input_blocks.0.0.weight"]
    s["model.diffusion_model.input_blocks.0.0.weight"] = conv_in[:, :4]
    s["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    clip, unet, vae = reference_models(s)
    if channels == 9:
        weights = unet.state_dict()
        weights["conv_in.weight"] = conv_in
        unet = UNet2DConditionModel.from_config({**unet.config, "in_channels": 9}).eval()
        unet.load_state_dict(weights, strict=True)
    vocab, merges = tokenizer_files()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing", steps_offset=1)
    return StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=clip, tokenizer=CLIPTokenizer(str(vocab), str(merges)), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def pictures():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[8:32, 16:56] = 255
    mask[44:50, 4:13] = 200  # >= 128: repainted; a patch that is not aligned to the 8-pixel latent grid
    return image, Image.fromarray(mask, "L")


@pytest.mark.parametrize("channels", [4, 9])
@torch.no_grad()
def test_equals_diffusers_inpaint_pipeline(tmp_path, channels):
    ours = engine.load_pipeline(write(tmp_path, channels), device="cpu", dtype="fp32")
    assert inpaint.is_inpainting_unet(ours.unet) == (channels == 9)
    ref = reference_pipe(channels)
    image, mask = pictures()
    req = engine.GenerationRequest("a red fox", negative_prompt="blurry", width=W, height=H, steps=STEPS,
                                   init_image=image, mask=mask, strength=STRENGTH, cfg_scale=CFG, seed=SEED)
    cond = ours.conditioner.schedule(req.prompt, STEPS)
    uncond = ours.conditioner.schedule(req.negative_prompt, STEPS)

    # diffusers: its generator samples the init image's posterior first, then draws the noise
    g = torch.Generator().manual_seed(SEED)
    latents_shape = (1, 4, H // 8, W // 8)
    torch.randn(latents_shape, generator=g)
    noise = torch.randn(latents_shape, generator=g)
    expected = ref(
        prompt_embeds=cond.at(0), negative_prompt_embeds=uncond.at(0), image=image, mask_image=mask,
        height=H, width=W, strength=STRENGTH, num_inference_steps=STEPS, guidance_scale=CFG,
        generator=torch.Generator().manual_seed(SEED), output_type="latent",
    ).images

    # ours: the same sigmas, the img2img start, the engine's inpainting pieces
    ref.scheduler.set_timesteps(STEPS)
    start = STEPS - int(STEPS * STRENGTH)
    sigmas = ref.scheduler.sigmas[start:].float()
    init = ours._encode_init(req, SEED)  # posterior std ~0: the mean
    pixel_mask, latent_mask = ours._inpaint_masks(req)
    unet = ours.unet
    if channels == 9:
        unet = inpaint.MaskedImageUNet(ours.unet, latent_mask, ours._masked_image_latents(req, pixel_mask))
    denoiser = CFGDenoiser(unet, ours.model_schedule, cond, uncond, CFG, dtype=torch.float32,
                           round_t_fp16=False)
    if channels == 4:
        denoiser = inpaint.LatentBlend(denoiser, init, latent_mask)
    got = get_sampler("euler")(denoiser, init + noise * sigmas[0], sigmas)

    assert got.shape == expected.shape == latents_shape
    assert rel_err(got, expected) < 1e-4
    if channels == 4:  # outside the mask the latents are the init image's, as diffusers' last blend
        keep = latent_mask == 0
        assert torch.allclose(got[keep.expand_as(got)], init[keep.expand_as(init)], atol=1e-5)
    # the check can fail: a different strength changes the result well beyond the tolerance
    other = get_sampler("euler")(denoiser, init + noise * sigmas[1], sigmas[1:])
    assert rel_err(other, expected) > 1e-2


@pytest.mark.parametrize("channels, blur", [(4, 0), (4, 4), (9, 2)])
def test_generate_keeps_pixels_outside_the_mask(tmp_path, channels, blur):
    pipe = engine.load_pipeline(write(tmp_path, channels), device="cpu", dtype="fp32")
    image, mask = pictures()
    req = engine.GenerationRequest("a red fox", width=W, height=H, steps=6, init_image=image, mask=mask,
                                   mask_blur=blur, strength=0.8, seed=3, batch_size=2, sampler="euler_a")
    result = pipe.generate(req)
    original = np.asarray(image)
    soft = np.asarray(inpaint.blur_mask(mask, blur))
    for picture in result.images:
        out = np.asarray(picture)
        assert out.shape == original.shape
        assert (out[soft == 0] == original[soft == 0]).all()  # outside the (blurred) mask: the original
        assert (soft == 0).sum() > 0.3 * soft.size  # a real share of the picture is checked
        inside = np.asarray(mask) >= 128
        assert np.abs(out[inside].astype(int) - original[inside]).mean() > 5  # the masked part was repainted


def test_blur_mask_matches_a1111_kernel():
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[20:40, 20:40] = 255
    blurred = np.asarray(inpaint.blur_mask(Image.fromarray(mask, "L"), 4))
    # kernel 2 * int(2.5 * 4 + 0.5) + 1 = 21 taps: the blur reaches 10 pixels out, not 11
    assert blurred[30, 10] > 0 and blurred[30, 9] == 0 and blurred[10, 30] > 0 and blurred[9, 30] == 0
    assert blurred[30, 30] > 250 and 100 < blurred[30, 20] < 155  # the edge at half height
    assert np.array_equal(np.asarray(inpaint.blur_mask(Image.fromarray(mask, "L"), 0)), mask)


def test_mask_request_validation():
    image, mask = pictures()
    with pytest.raises(ValueError, match="needs an init_image"):
        engine.GenerationRequest("x", width=W, height=H, mask=mask)
    with pytest.raises(ValueError, match="mode 'L'"):
        engine.GenerationRequest("x", width=W, height=H, init_image=image, mask=image)
    with pytest.raises(ValueError, match="mask is 64x48"):
        engine.GenerationRequest("x", width=W, height=H, init_image=image, mask=Image.new("L", (64, 48)))
    with pytest.raises(ValueError, match="mask_blur"):
        engine.GenerationRequest("x", width=W, height=H, init_image=image, mask=mask, mask_blur=-1)


def test_scaling_factor_applies_to_masked_latents(tmp_path):
    pipe = engine.load_pipeline(write(tmp_path, 9), device="cpu", dtype="fp32")
    image, mask = pictures()
    req = engine.GenerationRequest("x", width=W, height=H, init_image=image, mask=mask)
    pixel_mask, _ = pipe._inpaint_masks(req)
    latents = pipe._masked_image_latents(req, pixel_mask)
    pixels = inpaint.masked_image(torch.from_numpy(np.asarray(image) / 127.5 - 1).permute(2, 0, 1)[None].float(),
                                  pixel_mask)
    with torch.no_grad():
        assert torch.allclose(latents, pipe.vae.encode(pixels) * SCALING_FACTOR, atol=1e-5)
