"""Our text encoder, UNet and VAE against transformers/diffusers holding the very same weights (fp32).

The reference models are built from configs matching the tiny SD1.x shape and loaded strictly from the
LDM checkpoint through diffusers' own single-file converters, so a key or formula mismatch shows up here.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel

from engine.checkpoint import load_models, read_state_dict
from engine.config import TextEncoderConfig, UNetConfig, VAEConfig
from engine.testing import write_random_checkpoint

TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def reference_models(state: dict[str, torch.Tensor]):
    te_cfg, unet_cfg, vae_cfg = TextEncoderConfig.tiny(), UNetConfig.tiny(), VAEConfig.tiny()
    state = {k: v.float() for k, v in state.items()}

    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=te_cfg.vocab_size,
            hidden_size=te_cfg.width,
            intermediate_size=te_cfg.mlp_width,
            num_hidden_layers=te_cfg.layers,
            num_attention_heads=te_cfg.heads,
            max_position_embeddings=te_cfg.max_positions,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        )
    )
    clip_sd = convert_ldm_clip_checkpoint(state)  # -> text_model.* keys
    clip_sd.pop("text_model.embeddings.position_ids")  # the file's copy is deliberately corrupted
    if not hasattr(clip, "text_model"):  # transformers >= 5 dropped the `text_model` level
        clip_sd = {k.removeprefix("text_model."): v for k, v in clip_sd.items()}
    clip.load_state_dict(clip_sd, strict=True)

    widths = [unet_cfg.model_channels * m for m in unet_cfg.channel_mult]
    unet_config = {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": unet_cfg.num_res_blocks,
        "block_out_channels": widths,
        "cross_attention_dim": unet_cfg.context_dim,
        "attention_head_dim": unet_cfg.num_heads,  # diffusers' SD1.x naming: this is the head *count*
        "down_block_types": [
            ("CrossAttnDownBlock2D" if a else "DownBlock2D") for a in unet_cfg.attention_levels
        ],
        "up_block_types": [
            ("CrossAttnUpBlock2D" if a else "UpBlock2D") for a in reversed(unet_cfg.attention_levels)
        ],
        "norm_num_groups": 32,
    }
    unet = UNet2DConditionModel(**unet_config)
    unet.load_state_dict(convert_ldm_unet_checkpoint(state, unet_config), strict=True)

    vae_widths = [vae_cfg.channels * m for m in vae_cfg.channel_mult]
    vae_config = {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": vae_widths,
        "layers_per_block": vae_cfg.num_res_blocks,
        "norm_num_groups": 32,
        "down_block_types": ["DownEncoderBlock2D"] * len(vae_widths),
        "up_block_types": ["UpDecoderBlock2D"] * len(vae_widths),
    }
    vae = AutoencoderKL(**vae_config)
    vae.load_state_dict(convert_ldm_vae_checkpoint(state, vae_config), strict=True)
    return clip.eval(), unet.eval(), vae.eval()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    return {
        "safetensors": write_random_checkpoint(d / "tiny.safetensors", seed=1),
        "ckpt": write_random_checkpoint(d / "tiny.ckpt", seed=1),
        "fp16": write_random_checkpoint(d / "tiny16.safetensors", seed=2, dtype=torch.float16),
    }


@pytest.fixture(scope="module")
def references(tiny_files):
    # The fp32 and fp16 files hold different seeds; one reference set per weight set.
    return {
        "fp32": reference_models(read_state_dict(tiny_files["ckpt"])),
        "fp16": reference_models(read_state_dict(tiny_files["fp16"])),
    }


@pytest.mark.parametrize("kind", ["safetensors", "ckpt", "fp16"])
@torch.no_grad()
def test_components_match_reference(kind, tiny_files, references):
    ours = load_models(tiny_files[kind], device="cpu", dtype=torch.float32)
    clip, unet, vae = references["fp16" if kind == "fp16" else "fp32"]
    g = torch.Generator().manual_seed(0)

    ids = torch.randint(0, 49408, (2, 77), generator=g)
    ids[:, 0], ids[0, 10:] = 49406, 49407
    ctx = ours.text_encoder(ids)
    assert rel_err(ctx, clip(ids).last_hidden_state) <= TOL

    # Non-square, and one latent size that is not a multiple of the UNet's downscale (odd after /2);
    # timesteps as a python int, a float, a 0-d tensor and a per-sample tensor.
    for (h, w), timesteps in [((8, 12), [1, torch.tensor([10, 700])]), ((9, 6), [250.0, torch.tensor(999)])]:
        x = torch.randn(2, 4, h, w, generator=g)
        for t in timesteps:
            expected = unet(x, t, encoder_hidden_states=ctx).sample
            got = ours.unet(x, t, ctx)
            assert got.shape == x.shape
            assert rel_err(got, expected) <= TOL, (h, w, t)

    z = torch.randn(2, 4, 6, 5, generator=g)
    assert rel_err(ours.vae.decode(z), vae.decode(z).sample) <= TOL

    image = torch.rand(2, 3, 40, 48, generator=g) * 2 - 1
    assert rel_err(ours.vae.encode(image), vae.encode(image).latent_dist.mean) <= TOL
    sample = ours.vae.encode(image, generator=torch.Generator().manual_seed(5))
    expected = vae.encode(image).latent_dist.sample(generator=torch.Generator().manual_seed(5))
    assert rel_err(sample, expected) <= TOL


@torch.no_grad()
def test_unet_interrupt_called_between_blocks(tiny_files):
    unet = load_models(tiny_files["safetensors"], device="cpu", dtype=torch.float32).unet
    calls = []
    unet(torch.randn(1, 4, 8, 8), 10, torch.randn(1, 77, 64), interrupt=lambda: calls.append(1))
    assert len(calls) == len(unet.input_blocks) + 1 + len(unet.output_blocks)

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    with pytest.raises(Stop):
        unet(torch.randn(1, 4, 8, 8), 10, torch.randn(1, 77, 64), interrupt=stop)


@torch.no_grad()
def test_bf16_runs(tiny_files):
    ours = load_models(tiny_files["safetensors"], device="cpu", dtype=torch.bfloat16, vae_dtype=torch.float32)
    assert next(ours.unet.parameters()).dtype == torch.bfloat16
    assert next(ours.vae.parameters()).dtype == torch.float32
    ctx = ours.text_encoder(torch.full((1, 77), 49407))
    out = ours.unet(torch.randn(1, 4, 8, 8, dtype=torch.bfloat16), 500, ctx)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
