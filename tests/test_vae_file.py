"""External VAE files in each layout give exactly the VAE they hold; set_vae swaps it and back."""

from __future__ import annotations

import hashlib

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file

import engine
from engine.checkpoint import split_state_dict
from engine.config import VAEConfig
from engine.testing import ldm_state_dict, write_random_checkpoint
from engine.vae_file import load_vae


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("vae") / "tiny.safetensors", seed=13)


@pytest.fixture(scope="module")
def other_vae():
    """The VAE of another random model, LDM keys under first_stage_model."""
    return {k: v for k, v in ldm_state_dict("tiny", seed=14).items() if k.startswith("first_stage_model.")}


def diffusers_layout(state):
    cfg = VAEConfig.tiny()
    n = len(cfg.channel_mult)
    config = {"block_out_channels": [cfg.channels * m for m in cfg.channel_mult],
              "layers_per_block": cfg.num_res_blocks, "down_block_types": ["DownEncoderBlock2D"] * n,
              "up_block_types": ["UpDecoderBlock2D"] * n}
    return convert_ldm_vae_checkpoint(state, config)


def write(path, layout, other_vae):
    if layout == "ldm_prefixed":
        state = other_vae
    elif layout == "ldm":
        state = {k.removeprefix("first_stage_model."): v for k, v in other_vae.items()}
        state["loss.discriminator.main.0.weight"] = torch.zeros(2, 3)  # as real vae-ft-* .ckpt files
    elif layout == "diffusers":
        state = diffusers_layout(other_vae)
    else:  # diffusers < 0.14 attention names
        old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        state = {}
        for k, v in diffusers_layout(other_vae).items():
            for new_name, old_name in old.items():
                k = k.replace(f"attentions.0.{new_name}.", f"attentions.0.{old_name}.")
            state[k] = v
        assert any(".query." in k for k in state)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 840000}, path)
    return path


CASES = [("ldm", ".safetensors"), ("ldm", ".ckpt"), ("ldm_prefixed", ".pt"), ("diffusers", ".safetensors"),
         ("diffusers", ".ckpt"), ("diffusers_old", ".safetensors")]


@pytest.mark.parametrize(("layout", "suffix"), CASES)
def test_each_layout_loads_the_same_vae(layout, suffix, other_vae, tmp_path):
    path = write(tmp_path / f"vae{suffix}", layout, other_vae)
    vae = load_vae(path, "cpu", torch.float32)
    expected = split_state_dict(other_vae)["vae"]
    got = vae.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_set_vae_and_back(ckpt, other_vae, tmp_path):
    path = write(tmp_path / "vae-ft-mse.safetensors", "diffusers", other_vae)
    pipe = engine.load_pipeline(ckpt, device="cpu", dtype="fp32")
    own = pipe.vae
    own_state = {k: v.clone() for k, v in own.state_dict().items()}
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = pipe.vae.decode(z)
        pipe.set_vae(path)
        swapped = pipe.vae.decode(z)
    assert pipe.vae is not own and pipe.models.vae is pipe.vae
    assert pipe.vae_name == path.name
    assert pipe.vae_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert not torch.equal(before, swapped)
    pipe.set_vae(None)
    assert pipe.vae is own and pipe.vae_name is None and pipe.vae_hash is None
    assert all(torch.equal(v, own_state[k]) for k, v in own.state_dict().items())

    loaded = engine.load_pipeline(ckpt, device="cpu", dtype="fp32", vae=path)
    expected = split_state_dict(other_vae)["vae"]
    assert all(torch.equal(v, expected[k]) for k, v in loaded.vae.state_dict().items())


def test_bad_vae_files_are_refused(ckpt, tmp_path):
    pipe = engine.load_pipeline(ckpt, device="cpu", dtype="fp32")
    own = pipe.vae
    lora = tmp_path / "notavae.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    half = tmp_path / "half.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(32, 3, 3, 3)}, str(half))
    with pytest.raises(engine.CheckpointError, match="not a VAE file"):
        pipe.set_vae(lora)
    with pytest.raises(engine.CheckpointError, match="half.safetensors"):
        pipe.set_vae(half)
    assert pipe.vae is own
