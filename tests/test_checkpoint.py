"""Checkpoint reading and loading: architecture inference, non-SD1.x files, damaged and malicious files."""

from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.checkpoint import load_models, read_state_dict, split_state_dict
from engine.clip import TextEncoder
from engine.config import TextEncoderConfig, UNetConfig, VAEConfig
from engine.errors import CheckpointError
from engine.testing import ldm_state_dict, write_random_checkpoint
from engine.unet import UNet
from engine.vae import VAE

UNET = "model.diffusion_model."


@pytest.fixture(scope="module")
def tiny_state():
    return ldm_state_dict("tiny", seed=3)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", seed=3)


def save(tmp_path, state, name="model.safetensors"):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def load(path, dtype=torch.float32):
    return load_models(path, device="cpu", dtype=dtype)


# --- architecture inference -------------------------------------------------------------------------------


def test_tiny_configs_round_trip(tiny_state):
    parts = split_state_dict(tiny_state)
    assert TextEncoderConfig.from_state_dict(parts["text_encoder"]) == TextEncoderConfig.tiny()
    assert UNetConfig.from_state_dict(parts["unet"]) == UNetConfig.tiny()
    assert VAEConfig.from_state_dict(parts["vae"]) == VAEConfig.tiny()


def test_sd15_configs_round_trip():
    # Shapes only: meta-device models allocate nothing.
    with torch.device("meta"):
        te, unet, vae = TextEncoder(TextEncoderConfig.sd15()), UNet(UNetConfig.sd15()), VAE(VAEConfig.sd15())
    assert TextEncoderConfig.from_state_dict(te.state_dict()) == TextEncoderConfig.sd15()
    assert UNetConfig.from_state_dict(unet.state_dict()) == UNetConfig.sd15()
    assert VAEConfig.from_state_dict(vae.state_dict()) == VAEConfig.sd15()
    cfg = UNetConfig.sd15()
    assert (cfg.model_channels, cfg.channel_mult, cfg.context_dim) == (320, (1, 2, 4, 4), 768)
    assert VAEConfig.sd15().downscale == 8
    # Real SD1.5 sizes: 123M text encoder, 860M UNet, 84M VAE parameters.
    assert sum(p.numel() for p in te.parameters()) == 123_060_480
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


def test_other_shapes_are_inferred(tmp_path):
    # One res block per level, attention everywhere, 3 levels: still SD1.x-shaped, so it loads.
    cfg = UNetConfig(
        model_channels=32,
        channel_mult=(1, 1, 2),
        num_res_blocks=1,
        attention_levels=(True, True, True),
        context_dim=64,
    )
    with torch.device("meta"):
        state = UNet(cfg).state_dict()
    assert UNetConfig.from_state_dict(state) == cfg


# --- loading ----------------------------------------------------------------------------------------------


def test_loads_ckpt_without_meta_tensors(tiny_ckpt):
    models = load(tiny_ckpt)
    for module in (models.text_encoder, models.unet, models.vae):
        assert all(t.device.type == "cpu" for t in module.state_dict().values())
        assert not module.training
    assert models.path == tiny_ckpt and models.unet_config == UNetConfig.tiny()


def test_unwrapped_ckpt_and_fp16_conversion(tmp_path):
    path = write_random_checkpoint(tmp_path / "bare.ckpt", wrapped=False, dtype=torch.float16)
    models = load(path)
    assert next(models.unet.parameters()).dtype == torch.float32
    assert next(models.vae.parameters()).dtype == torch.float32


def test_corrupted_position_ids_ignored(tmp_path):
    with_extra = load(write_random_checkpoint(tmp_path / "a.safetensors", seed=4, extra_keys=True))
    clean = load(write_random_checkpoint(tmp_path / "b.safetensors", seed=4, extra_keys=False))
    ids = torch.randint(0, 49408, (1, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(with_extra.text_encoder(ids), clean.text_encoder(ids))


def test_diffusers_style_2d_vae_attention_accepted(tmp_path, tiny_state):
    state = dict(tiny_state)
    for k in list(state):
        if ".mid.attn_1." in k and k.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            state[k] = state[k][:, :, 0, 0].clone()  # [C, C, 1, 1] -> [C, C] Linear
    squeezed, original = load(save(tmp_path, state)), load(save(tmp_path, tiny_state, "orig.safetensors"))
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(squeezed.vae.decode(z), original.vae.decode(z))


def test_old_text_encoder_layout(tmp_path, tiny_state):
    prefix = "cond_stage_model.transformer.text_model."
    state = {k.replace(prefix, "cond_stage_model.transformer."): v for k, v in tiny_state.items()}
    models = load(save(tmp_path, state))
    assert models.text_encoder_config == TextEncoderConfig.tiny()


def test_missing_and_unexpected_keys_listed(tmp_path, tiny_state):
    state = dict(tiny_state)
    del state[UNET + "out.2.bias"]
    state[UNET + "input_blocks.1.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"UNet: 1 missing keys \['out.2.bias'\].*1 unexpected"):
        load(save(tmp_path, state))


# --- not SD1.x --------------------------------------------------------------------------------------------


def _replace(state, **shapes):
    out = dict(state)
    for key, shape in shapes.items():
        out[UNET + key.replace("__", ".")] = torch.zeros(shape)
    return out


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("sd2_openclip", "Stable Diffusion 2"),
        ("sd2_context", "1024-wide"),
        ("sd2_linear_proj", "linear proj_in"),
        ("sdxl", "SDXL"),
        ("pix2pix", "instruct-pix2pix UNet \\(8 input channels\\)"),
        ("vae_only", "VAE-only"),
        ("vae_only_bare", "VAE-only"),
        ("lora", "LoRA"),
        ("junk", "not a Stable Diffusion checkpoint"),
        ("no_text_encoder", "no text encoder"),
    ],
)
def test_not_sd1_files_named(tmp_path, tiny_state, case, message):
    if case == "sd2_openclip":
        state = {
            k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.model."): v
            for k, v in tiny_state.items()
        }
    elif case == "sd2_context":
        state = _replace(tiny_state, middle_block__1__transformer_blocks__0__attn2__to_k__weight=(64, 1024))
    elif case == "sd2_linear_proj":
        state = _replace(tiny_state, input_blocks__1__1__proj_in__weight=(32, 32))
    elif case == "sdxl":
        state = {"conditioner.embedders.1.model.ln_final.weight": torch.ones(4), **tiny_state}
    elif case == "pix2pix":  # 9 channels (inpainting) load: tests/test_inpaint.py
        state = _replace(tiny_state, input_blocks__0__0__weight=(32, 8, 3, 3))
    elif case == "vae_only":
        state = {k: v for k, v in tiny_state.items() if k.startswith("first_stage_model.")}
    elif case == "vae_only_bare":
        state = {
            k.removeprefix("first_stage_model."): v
            for k, v in tiny_state.items()
            if k.startswith("first_stage_model.")
        }
    elif case == "lora":
        state = {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(4.0),
        }
    elif case == "junk":
        state = {"foo": torch.zeros(3), "bar.baz": torch.ones(2, 2)}
    else:
        state = {k: v for k, v in tiny_state.items() if not k.startswith("cond_stage_model.")}
    with pytest.raises(CheckpointError, match=message):
        load(save(tmp_path, state))


# --- damaged and unsafe files -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_truncated_file(tmp_path, suffix):
    path = write_random_checkpoint(tmp_path / f"t{suffix}")
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 7):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="t" + suffix):
            load(path)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors", ".pt"])
def test_garbage_and_empty_files(tmp_path, suffix):
    path = tmp_path / f"g{suffix}"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError):
        load(path)
    path.write_bytes(b"PK\x03\x04" + os.urandom(1000))  # looks like a zip, is not
    with pytest.raises(CheckpointError):
        load(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load(path)


def test_empty_state_dict_and_missing_file(tmp_path):
    save_file({}, str(tmp_path / "e.safetensors"))
    with pytest.raises(CheckpointError, match="no tensors"):
        load(tmp_path / "e.safetensors")
    torch.save({"state_dict": {}}, tmp_path / "e.ckpt")
    with pytest.raises(CheckpointError, match="no tensors"):
        load(tmp_path / "e.ckpt")
    with pytest.raises(CheckpointError, match="no such file"):
        load(tmp_path / "absent.ckpt")
    (tmp_path / "weights.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="unsupported file type"):
        load(tmp_path / "weights.txt")


class WriteMarker:
    """Unpickling this runs `open(marker, "w")`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class RunShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [WriteMarker, RunShell])
@pytest.mark.parametrize("container", ["torch_zip", "legacy_pickle"])
def test_malicious_pickle_refused_and_never_run(tmp_path, tiny_state, payload, container):
    marker = tmp_path / "pwned"
    obj = {"state_dict": dict(tiny_state), "callbacks": payload(marker)}
    path = tmp_path / "evil.ckpt"
    if container == "torch_zip":
        torch.save(obj, path)
    else:
        with path.open("wb") as f:
            pickle.dump(obj, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt"):
        load(path)
    # A torch zip names the payload; a plain pickle is refused at its first non-weights global.
    expected = (
        r"refused: the pickle calls \S*(open|system)"
        if container == "torch_zip"
        else "refused: the pickle calls"
    )
    with pytest.raises(CheckpointError, match=expected):
        read_state_dict(path)
    assert not marker.exists()


def test_lightning_metadata_objects_ignored(tmp_path, tiny_state):
    # Real SD checkpoints pickle PyTorch Lightning's ModelCheckpoint state next to the weights. Fake that
    # class in sys.modules for torch.save, then remove it: the loader must stub it, never import it.
    name = "pytorch_lightning.callbacks.model_checkpoint"
    module = types.ModuleType(name)

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_path = "/somewhere/last.ckpt"

    ModelCheckpoint.__module__ = name
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    saved = {m: sys.modules.get(m) for m in ("pytorch_lightning", "pytorch_lightning.callbacks", name)}
    for m in saved:
        sys.modules[m] = module
    try:
        path = tmp_path / "lightning.ckpt"
        torch.save(
            {"state_dict": dict(tiny_state), "callbacks": {"ModelCheckpoint": ModelCheckpoint()}}, path
        )
    finally:
        for m, old in saved.items():
            if old is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = old
    assert "pytorch_lightning" not in sys.modules
    models = load(path)
    assert models.unet_config == UNetConfig.tiny()
    assert "pytorch_lightning" not in sys.modules


def _anon_huge_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))


def _thp_fallbacks() -> int:
    with open("/proc/vmstat") as f:
        return next((int(line.split()[1]) for line in f if line.startswith("thp_fault_fallback ")), 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")
def test_new_weights_are_advised_onto_huge_pages():
    from engine.checkpoint import advise_huge_pages

    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = setting.read_text() if setting.exists() else "[never]"  # a kernel built without THP
    before, fell_back = _anon_huge_kib(), _thp_fallbacks()
    t = torch.empty(16 << 20)  # 64 MiB, untouched
    assert advise_huge_pages(t) is t
    t.fill_(1.5)
    gained = _anon_huge_kib() - before
    if "[never]" in mode:
        assert gained == 0
    else:  # "madvise" (the usual default) or "always": the aligned interior (>= 60 MiB) is on 2 MiB pages,
        # unless the kernel had no free 2 MiB pages to give and says so in its fallback counter
        assert gained >= 60 << 10 or _thp_fallbacks() > fell_back
    assert bool((t == 1.5).all())
    small = torch.zeros(1000)
    assert advise_huge_pages(small) is small and not small.any()
