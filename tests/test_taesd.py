"""TAESD (engine.taesd) against diffusers' AutoencoderTiny holding the same random weights, in both file
layouts (diffusers' combined file; the original per-part taesd_encoder / taesd_decoder files), and its uses
in the pipeline: previews of the x0 estimate, the fast final decode, the init-image encode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file
from test_models_parity import rel_err

import engine
from engine.pipeline import _tensor_to_images
from engine.taesd import StepPreviewer, load_taesd
from engine.testing import taesd_state_dict, write_random_checkpoint, write_random_taesd

SIZE = {"width": 64, "height": 64}


def reference(state: dict[str, torch.Tensor]) -> AutoencoderTiny:
    """diffusers' AutoencoderTiny (its SD default config) with `state` in diffusers' layout."""
    ref = AutoencoderTiny().eval()
    ref.load_state_dict(state)
    return ref


def original_to_diffusers(state: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """diffusers' scripts/convert_tiny_autoencoder_to_diffusers.py rule: the decoder's indices drop by one."""
    out = {}
    for k, v in state.items():
        index, rest = k.split(".", 1)
        out[f"{part}.layers.{int(index) - (part == 'decoder')}.{rest}"] = v
    return out


def latents(seed: int = 0, shape=(1, 4, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2


def images(seed: int = 0, shape=(1, 3, 64, 64)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def assert_matches(ours, ref, *, decode: bool = True, encode: bool = True) -> None:
    with torch.no_grad():
        if decode:
            expected = ref.decode(latents()).sample.clamp(-1, 1)
            got = ours.decode(latents())
            assert got.dtype == torch.float32 and got.shape == (1, 3, 64, 64)
            assert rel_err(got, expected) <= 1e-5
        if encode:
            expected = ref.encode(images()).latents
            got = ours.encode(images())
            assert got.shape == (1, 4, 8, 8) and rel_err(got, expected) <= 1e-5


def test_diffusers_layout_file_and_folder(tmp_path):
    state = taesd_state_dict(seed=1)
    ref = reference(state)
    path = write_random_taesd(tmp_path / "diffusion_pytorch_model.safetensors", seed=1)
    ours = load_taesd(path)
    assert ours.encoder is not None and ours.decoder is not None
    assert_matches(ours, ref)
    assert_matches(load_taesd(tmp_path), ref)  # the folder madebyollin/taesd downloads into
    assert_matches(engine.load_taesd(str(path)), ref)


def test_original_layout_files_each_alone_and_together(tmp_path):
    enc_state = taesd_state_dict(layout="original", part="encoder", seed=2)
    dec_state = taesd_state_dict(layout="original", part="decoder", seed=3)
    assert "0.weight" in enc_state and "0.weight" not in dec_state and "1.weight" in dec_state  # Clamp at 0
    ref = reference({**original_to_diffusers(enc_state, "encoder"), **original_to_diffusers(dec_state, "decoder")})
    enc = write_random_taesd(tmp_path / "taesd_encoder.pth", layout="original", part="encoder", seed=2)
    dec = write_random_taesd(tmp_path / "taesd_decoder.safetensors", layout="original", part="decoder", seed=3)

    decoder_only = load_taesd(dec)
    assert decoder_only.encoder is None
    assert_matches(decoder_only, ref, encode=False)
    with pytest.raises(ValueError, match="no encoder"):
        decoder_only.encode(images())

    encoder_only = load_taesd(enc)
    assert encoder_only.decoder is None
    assert_matches(encoder_only, ref, decode=False)
    with pytest.raises(ValueError, match="no decoder"):
        encoder_only.decode(latents())

    assert_matches(load_taesd(enc, dec), ref)
    assert_matches(load_taesd(tmp_path), ref)  # a folder with both original files

    # ComfyUI's combined file: the original keys under taesd_encoder. / taesd_decoder.
    combined = {f"taesd_encoder.{k}": v for k, v in enc_state.items()}
    combined |= {f"taesd_decoder.{k}": v for k, v in dec_state.items()}
    combined["vae_scale"], combined["vae_shift"] = torch.tensor(1.0), torch.tensor(0.0)
    save_file(combined, str(tmp_path / "taesd_comfy.safetensors"))
    assert_matches(load_taesd(tmp_path / "taesd_comfy.safetensors"), ref)


def test_bad_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(engine.CheckpointError, match="no such file"):
        load_taesd(tmp_path / "taesd_decoder.pth")
    with pytest.raises(engine.CheckpointError, match="no TAESD file"):
        load_taesd(tmp_path)
    sd = write_random_checkpoint(tmp_path / "model.safetensors")
    with pytest.raises(engine.CheckpointError, match="not a TAESD file"):
        load_taesd(sd)
    dec = write_random_taesd(tmp_path / "taesd_decoder.pth", layout="original", part="decoder")
    with pytest.raises(engine.CheckpointError, match="same TAESD part"):
        load_taesd(dec, dec)
    # TAEF1 / TAESD3: 16 latent channels
    state = taesd_state_dict(layout="original", part="decoder")
    state["1.weight"] = torch.zeros(64, 16, 3, 3)
    torch.save(state, tmp_path / "taef1_decoder.pth")
    with pytest.raises(engine.CheckpointError, match="16-channel latents"):
        load_taesd(tmp_path / "taef1_decoder.pth")
    # a truncated diffusers file: a block missing
    state = {k: v for k, v in taesd_state_dict().items() if not k.startswith("decoder.layers.3.")}
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(engine.CheckpointError, match="missing"):
        load_taesd(tmp_path / "partial.safetensors")
    ours = load_taesd(write_random_taesd(tmp_path / "ok.safetensors"))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        ours.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="multiples of 8"):
        ours.encode(torch.zeros(1, 3, 60, 64))


def test_preview_size_and_values(tmp_path):
    ours = load_taesd(write_random_taesd(tmp_path / "t.safetensors", seed=4))
    small = ours.preview(latents(5, (4, 8, 8)))
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8  # image resolution
    expected = ((ours.decode(latents(5, (1, 4, 8, 8)))[0] + 1) * 127.5).round().permute(1, 2, 0).numpy()
    assert np.array_equal(small, expected.astype(np.uint8))
    big = latents(6, (4, 32, 48))  # a 256 x 384 image, above 256 * 256 pixels: from the latent averaged 2x2
    preview = ours.preview(big)
    assert preview.shape == (128, 192, 3)
    pooled = torch.nn.functional.avg_pool2d(big[None], 2)
    expected = ((ours.decode(pooled)[0] + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)
    assert np.abs(preview.astype(int) - expected.astype(int)).max() <= 1
    assert ours.preview(big, max_pixels=256 * 384).shape == (256, 384, 3)
    assert ours.preview(latents(6, (4, 64, 64))).shape == (256, 256, 3)  # 512 x 512: a quarter of the pixels


def test_step_previewer_keeps_to_its_budget(tmp_path):
    ours = load_taesd(write_random_taesd(tmp_path / "t.safetensors"))
    x0 = latents(0, (1, 4, 8, 8))
    every = StepPreviewer(ours, budget=None)
    assert all(every(x0) is not None for _ in range(3))
    none_after_first = StepPreviewer(ours, budget=0.0)
    shown = [none_after_first(x0) is not None for _ in range(3)]
    assert shown == [True, False, False]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("taesd") / "tiny.safetensors", seed=6)
    return engine.load_pipeline(ckpt, device="cpu", dtype="fp32")


def test_pipeline_previews_and_decodes_with_taesd(pipe, tmp_path):
    req = dict(prompt="nvinkpunk a fox", steps=3, seed=12, sampler="lcm", cfg_scale=1.0, **SIZE)
    plain_events = []
    plain = pipe.generate(engine.GenerationRequest(**req), on_step=plain_events.append)
    assert plain_events[0].preview.shape == (8, 8, 3)  # no TAESD: the latent colour map
    with pytest.raises(ValueError, match="no TAESD is attached"):
        pipe.generate(engine.GenerationRequest(**req, decoder="taesd"), on_step=plain_events.append)
    assert len(plain_events) == 3  # raised before any step

    pipe.set_taesd(write_random_taesd(tmp_path / "diffusion_pytorch_model.safetensors", seed=7))
    pipe.preview_budget = None  # every step (the tiny UNet is cheaper than TAESD)
    try:
        attached = pipe.taesd
        with pytest.raises(engine.CheckpointError):
            pipe.set_taesd(tmp_path / "missing.safetensors")
        assert pipe.taesd is attached  # a failed load keeps the one attached before
        events, vae_events = [], []
        res = pipe.generate(engine.GenerationRequest(**req, decoder="taesd"), on_step=events.append)
        vae_res = pipe.generate(engine.GenerationRequest(**req), on_step=vae_events.append)
        assert torch.equal(res.latents, plain.latents) and torch.equal(vae_res.latents, plain.latents)
        assert [e.preview.shape for e in vae_events] == [(64, 64, 3)] * 3  # TAESD of the x0 estimate
        # LCM's last x0 is the result
        assert np.array_equal(vae_events[-1].preview, pipe.taesd.preview(vae_res.latents[0]))
        # with the tiny final decode, whose image is shown next, the last step has no preview of its own
        assert [e.preview.shape for e in events[:-1]] == [(64, 64, 3)] * 2 and events[-1].preview is None
        expected = _tensor_to_images(pipe.taesd.decode(res.latents))[0]
        assert np.array_equal(np.asarray(res.images[0]), np.asarray(expected))
        assert np.array_equal(np.asarray(vae_res.images[0]), np.asarray(plain.images[0]))  # "vae" unchanged

        # img2img with decoder "taesd" encodes the init image with TAESD
        from PIL import Image

        init = Image.fromarray((np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3))
        i2i = dict(req, init_image=init, strength=0.5)
        tiny = pipe.generate(engine.GenerationRequest(**i2i, decoder="taesd"))
        full = pipe.generate(engine.GenerationRequest(**i2i))
        assert not torch.allclose(tiny.latents, full.latents)
        pipe.set_taesd(load_taesd(write_random_taesd(tmp_path / "taesd_decoder.pth", layout="original",
                                                     part="decoder")))
        with pytest.raises(ValueError, match="has no encoder"):
            pipe.generate(engine.GenerationRequest(**i2i, decoder="taesd"))
    finally:
        pipe.set_taesd(None)
        pipe.preview_budget = 0.05
    events = []
    pipe.generate(engine.GenerationRequest(**req), on_step=events.append)
    assert events[0].preview.shape == (8, 8, 3)


def test_request_decoder_and_step_limits():
    assert engine.GenerationRequest(prompt="a").decoder == "vae"
    with pytest.raises(ValueError, match="decoder must be one of vae, taesd"):
        engine.GenerationRequest(prompt="a", decoder="tiny")
    with pytest.raises(ValueError, match="from 1 to 50 for lcm"):
        engine.GenerationRequest(prompt="a", sampler="lcm", steps=51)
    assert engine.GenerationRequest(prompt="a", sampler="tcd", steps=50).steps == 50
