"""Random-weight SD1.x checkpoints in the real LDM file layout, for tests, `--self-test` and the benchmark.

The weights are seeded noise of sensible scale (norm gains near 1, weights ~ N(0, 1/fan_in)) so every
activation is non-degenerate; the images they make are noise, but the code paths are the real ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.clip import TextEncoder
from engine.config import TextEncoderConfig, UNetConfig, VAEConfig
from engine.unet import UNet
from engine.vae import VAE

_SIZES = {"tiny": "tiny", "sd15": "sd15"}


def random_state_dict(
    module: nn.Module, rng: np.random.Generator, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Seeded random values for every parameter of `module` (which may live on the meta device).

    Drawn with numpy: single-threaded, so writing a tiny checkpoint stays fast on a busy 2-core machine.
    """
    out: dict[str, torch.Tensor] = {}
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            key = f"{mod_name}.{p_name}" if mod_name else p_name
            shape = tuple(p.shape)
            t = rng.standard_normal(shape, dtype=np.float32)
            if isinstance(mod, (nn.GroupNorm, nn.LayerNorm)):
                t *= 0.1
                if p_name == "weight":
                    t += 1.0
            elif isinstance(mod, nn.Embedding):
                t *= 0.5
            elif p_name == "bias":
                t *= 0.05
            else:  # Linear / Conv weights: fan_in = every dim but the first
                t *= 1.0 / math.sqrt(max(1, math.prod(shape[1:])))
            if dtype == torch.float16:
                t = t.astype(np.float16)
            out[key] = (
                torch.from_numpy(t)
                if dtype in (torch.float32, torch.float16)
                else torch.from_numpy(t).to(dtype)
            )
    return out


def ldm_state_dict(
    size: str = "tiny", *, dtype: torch.dtype = torch.float32, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The LDM-layout state dict (weights only, no extra keys) of a random model of `size` "tiny"/"sd15"."""
    if size not in _SIZES:
        raise ValueError(f"size must be 'tiny' or 'sd15', got {size!r}")
    rng = np.random.default_rng(seed)
    with torch.device("meta"):
        models = [
            ("cond_stage_model.transformer.", TextEncoder(getattr(TextEncoderConfig, size)())),
            ("model.diffusion_model.", UNet(getattr(UNetConfig, size)())),
            ("first_stage_model.", VAE(getattr(VAEConfig, size)())),
        ]
    state: dict[str, torch.Tensor] = {}
    for prefix, model in models:
        for k, v in random_state_dict(model, rng, dtype).items():
            state[prefix + k] = v
    return state


def write_random_checkpoint(
    path: str | Path,
    *,
    size: str = "tiny",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    wrapped: bool = True,
    extra_keys: bool = True,
) -> Path:
    """Write a random SD1.x checkpoint: `.safetensors` or a `.ckpt` zip pickle (by suffix).

    wrapped: `.ckpt` content is {"state_dict": ..., "global_step": ...} as Lightning saves it.
    extra_keys: add what real files carry and the loader must ignore: the noise schedule, EMA keys and a
    corrupted float `position_ids`.
    """
    path = Path(path)
    state = ldm_state_dict(size, dtype=dtype, seed=seed)
    if extra_keys:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        state["betas"] = betas.float()
        state["alphas_cumprod"] = alphas_cumprod.float()
        state["alphas_cumprod_prev"] = torch.cat([torch.ones(1), alphas_cumprod[:-1].float()])
        state["sqrt_alphas_cumprod"] = alphas_cumprod.sqrt().float()
        state["model_ema.decay"] = torch.tensor(0.9999)
        state["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
        state["model_ema.diffusion_modelout2bias"] = torch.zeros(4, dtype=dtype)
        n = getattr(TextEncoderConfig, size)().max_positions
        # Corrupted as in some merged checkpoints: floats that no longer round to 0..76.
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = (
            torch.arange(n, dtype=torch.float32)[None] * 0.98 + 0.3
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif suffix in {".ckpt", ".pt", ".pth"}:
        obj = {"state_dict": state, "global_step": 0, "epoch": 0} if wrapped else state
        torch.save(obj, path)
    else:
        raise ValueError(f"unsupported checkpoint suffix {path.suffix!r} (use .safetensors or .ckpt)")
    return path


def taesd_state_dict(*, layout: str = "diffusers", part: str = "both", seed: int = 0) -> dict[str, torch.Tensor]:
    """A random TAESD (engine.taesd) state dict: `layout` "diffusers" (encoder.layers.N, decoder.layers.N) or
    "original" (taesd_encoder / taesd_decoder keys N..., the decoder's shifted by its Clamp); `part` "both",
    "encoder" or "decoder" ("original" holds one part per file, so it needs one of the two)."""
    from engine.taesd import TinyAutoencoder

    if layout not in ("diffusers", "original") or part not in ("both", "encoder", "decoder"):
        raise ValueError(f"unknown TAESD layout/part {layout!r}/{part!r}")
    if layout == "original" and part == "both":
        raise ValueError("the original TAESD layout has one file per part: pass part='encoder' or 'decoder'")
    with torch.device("meta"):
        model = TinyAutoencoder(encoder=part != "decoder", decoder=part != "encoder")
    state = random_state_dict(model, np.random.default_rng(seed), torch.float32)
    if layout == "diffusers":
        return state
    prefix = f"{part}.layers."
    shift = 1 if part == "decoder" else 0
    out = {}
    for key, value in state.items():
        index, rest = key[len(prefix):].split(".", 1)
        out[f"{int(index) + shift}.{rest}"] = value
    return out


def write_random_taesd(path: str | Path, *, layout: str = "diffusers", part: str = "both", seed: int = 0) -> Path:
    """Write `taesd_state_dict(...)` as `.safetensors` or a weights-only `.pth`/`.pt` pickle (by suffix)."""
    path = Path(path)
    state = taesd_state_dict(layout=layout, part=part, seed=seed)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif path.suffix.lower() in {".pth", ".pt"}:
        torch.save(state, path)
    else:
        raise ValueError(f"unsupported TAESD suffix {path.suffix!r} (use .safetensors or .pth)")
    return path


FEW_STEP_STYLES = ("kohya_diffusers", "peft", "diffusers_legacy")


def few_step_lora(
    unet: UNet,
    *,
    rank: int = 4,
    alpha: float | None = None,
    dtype: torch.dtype = torch.float32,
    style: str = "kohya_diffusers",
    up_scale: float = 1.0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random LoRA on the layers the few-step LoRAs train (LCM-LoRA, TCD-LoRA, Hyper-SD: every UNet
    Linear/Conv2d but conv_in, conv_out and the time embedding; 278 layers on SD 1.5, 134.6 MB at rank 64 in
    fp16 as lcm-lora-sdv1-5), in one of their key spellings:

    - "kohya_diffusers" (lcm-lora-sdv1-5's): `lora_unet_<diffusers name, _ for .>.lora_down/up.weight` and
      `.alpha` (a 0-d tensor in `dtype`; `alpha` None: the rank);
    - "peft": `unet.<diffusers name>.lora_A/B.weight`; "diffusers_legacy": `unet.<name>.lora.down/up.weight`.

    3x3 convs get a (r, in, 3, 3) down and an (out, r, 1, 1) up, as PEFT makes them. down ~ N(0, 1/fan_in),
    up ~ N(0, up_scale^2 / rank).
    """
    from engine.lora import diffusers_unet_name  # not at import: engine.lora imports the loader

    if style not in FEW_STEP_STYLES:
        raise ValueError(f"style must be one of {', '.join(FEW_STEP_STYLES)}, got {style!r}")
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, m in unet.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        spelled = diffusers_unet_name(name, unet.config)
        if spelled is None or spelled.startswith(("conv_in", "conv_out", "time_embedding")):
            continue
        shape = tuple(m.weight.shape)
        down = torch.randn((rank, *shape[1:]) if len(shape) == 4 else (rank, shape[1]), generator=g)
        up = torch.randn((shape[0], rank, 1, 1) if len(shape) == 4 else (shape[0], rank), generator=g)
        down = (down / math.sqrt(math.prod(shape[1:]))).to(dtype)
        up = (up * up_scale / math.sqrt(rank)).to(dtype)
        if style == "kohya_diffusers":
            key = "lora_unet_" + spelled.replace(".", "_")
            out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"] = down, up
            out[f"{key}.alpha"] = torch.tensor(float(rank if alpha is None else alpha), dtype=dtype)
        elif style == "peft":
            out[f"unet.{spelled}.lora_A.weight"], out[f"unet.{spelled}.lora_B.weight"] = down, up
        else:  # diffusers' convert_state_dict_to_diffusers spelling
            out[f"unet.{spelled}.lora.down.weight"], out[f"unet.{spelled}.lora.up.weight"] = down, up
    return out
