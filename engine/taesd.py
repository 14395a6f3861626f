"""TAESD, the tiny autoencoder for SD 1.x latents (madebyollin/taesd `taesd.py`; diffusers `AutoencoderTiny`,
`EncoderTiny`, `DecoderTiny`, `AutoencoderTinyBlock`): about 1.2 M parameters each way against the VAE's
34 M/49 M, for previews that look like the picture and an optional fast decode / encode.

Module names are diffusers' (`encoder.layers.N`, `decoder.layers.N`), so its `diffusion_pytorch_model.safetensors`
loads as it is. The original files (`taesd_encoder.pth`, `taesd_decoder.pth` or `.safetensors`) hold one
`nn.Sequential` each, without a prefix; the decoder's starts with a parameter-free Clamp module, so its indices
are one higher than diffusers' (diffusers scripts/convert_tiny_autoencoder_to_diffusers.py). ComfyUI's
combined files prefix the original keys with `taesd_encoder.` / `taesd_decoder.`. Either part alone loads.

TAESD works on the latents the sampler holds (the UNet's scaled space: no 1/0.18215), and images in [-1, 1]
(the original works in [0, 1]; diffusers' wrappers shift, as here). TAESDXL has the same shapes and would load,
but decodes SD 1.x latents to wrong colours: use the SD 1.x files.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoint import read_state_dict
from engine.errors import CheckpointError

log = logging.getLogger(__name__)

LATENT_CHANNELS = 4
CHANNELS = 64  # every TAESD stage is 64 channels wide
BLOCKS = (1, 3, 3, 3)  # AutoencoderTiny num_encoder_blocks; the decoder runs them in reverse (3, 3, 3, 1)
# Previews above this many image pixels decode a latent averaged down by 2, 4, ...: 256 x 256 costs a quarter
# of a 512 x 512 decode (~15 GMAC against ~60; one SD 1.5 UNet pass at 512 x 512 is ~340 GMAC).
PREVIEW_PIXELS = 256 * 256
PREVIEW_BUDGET = 0.05  # at most this share of the sampling time goes to TAESD previews


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Block(nn.Module):
    """Three 3x3 convs with ReLUs and a residual, then ReLU (diffusers AutoencoderTinyBlock; 64 -> 64, so the
    skip is the identity)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(conv(channels, channels), nn.ReLU(), conv(channels, channels), nn.ReLU(),
                                  conv(channels, channels))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8) latents (diffusers EncoderTiny)."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for i, blocks in enumerate(BLOCKS):
            layers.append(conv(3, CHANNELS) if i == 0 else conv(CHANNELS, CHANNELS, stride=2, bias=False))
            layers += [Block(CHANNELS) for _ in range(blocks)]
        layers.append(conv(CHANNELS, LATENT_CHANNELS))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.add(1).div(2))  # TAESD's images are in [0, 1]


class Decoder(nn.Module):
    """(B, 4, h, w) latents -> (B, 3, 8h, 8w) in about [-1, 1] (diffusers DecoderTiny)."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [conv(LATENT_CHANNELS, CHANNELS), nn.ReLU()]
        stages = BLOCKS[::-1]
        for i, blocks in enumerate(stages):
            last = i == len(stages) - 1
            layers += [Block(CHANNELS) for _ in range(blocks)]
            if not last:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers.append(conv(CHANNELS, 3 if last else CHANNELS, bias=last))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(x / 3) * 3  # the original's Clamp: soft-limits latents to (-3, 3)
        return self.layers(x).mul(2).sub(1)  # [0, 1] -> [-1, 1]


class TinyAutoencoder(nn.Module):
    """TAESD for SD 1.x with either part or both. `decode(latents)` and `encode(images)` equal diffusers'
    `AutoencoderTiny.decode(latents).sample` (clamped to [-1, 1]) and `.encode(images).latents`."""

    def __init__(self, encoder: bool = True, decoder: bool = True):
        super().__init__()
        if not (encoder or decoder):
            raise ValueError("a TinyAutoencoder needs an encoder, a decoder or both")
        self.encoder = Encoder() if encoder else None
        self.decoder = Decoder() if decoder else None

    @property
    def _param(self) -> torch.Tensor:
        return next(self.parameters())

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) sampler latents (no 1/0.18215) -> (B, 3, 8h, 8w) float32 images in [-1, 1]."""
        if self.decoder is None:
            raise ValueError("this TAESD has no decoder: load taesd_decoder.pth / .safetensors (or the combined "
                             "diffusion_pytorch_model.safetensors) to decode")
        _check(latents, LATENT_CHANNELS, "latents")
        p = self._param
        return self.decoder(latents.to(p.device, p.dtype)).float().clamp(-1, 1)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1], H and W multiples of 8 -> (B, 4, H/8, W/8) float32 sampler latents."""
        if self.encoder is None:
            raise ValueError("this TAESD has no encoder: load taesd_encoder.pth / .safetensors (or the combined "
                             "diffusion_pytorch_model.safetensors) to encode")
        _check(images, 3, "images")
        if images.shape[-2] % 8 or images.shape[-1] % 8:
            raise ValueError(f"image sides must be multiples of 8, got {tuple(images.shape[-2:])}")
        p = self._param
        return self.encoder(images.to(p.device, p.dtype)).float()

    def preview(self, latent: torch.Tensor, max_pixels: int = PREVIEW_PIXELS) -> np.ndarray:
        """(4, h, w) latent -> uint8 (H, W, 3) RGB: at image resolution (8h x 8w) up to `max_pixels`, above it
        from the latent area-averaged down by 2, 4, ... (a quarter of the cost each time)."""
        _check(latent[None], LATENT_CHANNELS, "latent")
        h, w = latent.shape[-2:]
        f = 1
        while (8 * h // f) * (8 * w // f) > max_pixels and min(h, w) // (2 * f) >= 1:
            f *= 2
        small = latent[None].float()
        if f > 1:
            small = F.interpolate(small, size=(h // f, w // f), mode="area")
        rgb = self.decode(small)[0]  # (3, H, W) in [-1, 1]
        return ((rgb + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _check(x: torch.Tensor, channels: int, what: str) -> None:
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{what} must be (B, {channels}, H, W), got shape {tuple(x.shape)}")


class StepPreviewer:
    """Per-step TAESD previews within a time budget: a step's preview is skipped (None; the app keeps the last
    one) when it would raise the time spent on previews above `budget` times the time spent sampling.
    The first step always gets one. `budget=None` previews every step."""

    def __init__(self, taesd: TinyAutoencoder, budget: float | None = PREVIEW_BUDGET):
        self.taesd, self.budget = taesd, budget
        self.started = time.perf_counter()
        self.spent = 0.0  # seconds in previews so far
        self.cost = 0.0  # the last preview's seconds
        self.shown = 0

    def __call__(self, denoised: torch.Tensor) -> np.ndarray | None:
        """`denoised`: the step's (B, 4, h, w) x0 estimate; previews the first image."""
        now = time.perf_counter()
        sampling = now - self.started - self.spent
        if self.budget is not None and self.shown and self.spent + self.cost > self.budget * sampling:
            return None
        image = self.taesd.preview(denoised[0])
        self.cost = time.perf_counter() - now
        self.spent += self.cost
        self.shown += 1
        return image


# --- loading ----------------------------------------------------------------------------------------------

_PART_FILES = ("diffusion_pytorch_model.safetensors", "taesd_encoder.safetensors", "taesd_decoder.safetensors",
               "taesd_encoder.pth", "taesd_decoder.pth")
_INDEXED = re.compile(r"^(\d+)\.(.+)$")


def _original_part(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """An original taesd_encoder / taesd_decoder state dict (keys `N.…`) -> ours (`encoder.layers.N.…`)."""
    out = {}
    for key, value in state.items():
        m = _INDEXED.match(key)
        if m is None:
            raise CheckpointError(f"unexpected key {key!r} in a TAESD {name} file")
        index = int(m.group(1)) - (1 if name == "decoder" else 0)  # the decoder's index 0 is the Clamp
        out[f"{name}.layers.{index}.{m.group(2)}"] = value
    return out


def convert_state_dict(state: dict[str, torch.Tensor], source: str = "the file") -> dict[str, torch.Tensor]:
    """Any supported TAESD layout -> ours (diffusers'). Raises CheckpointError for anything else."""
    if any(k.startswith(("encoder.layers.", "decoder.layers.")) for k in state):  # diffusers AutoencoderTiny
        return {k: v for k, v in state.items() if k.startswith(("encoder.layers.", "decoder.layers."))}
    if any(k.startswith(("taesd_encoder.", "taesd_decoder.")) for k in state):  # ComfyUI's combined file
        out: dict[str, torch.Tensor] = {}
        for part in ("encoder", "decoder"):
            prefix = f"taesd_{part}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if sub:
                out.update(_original_part(sub, part))
        return out
    first = state.get("0.weight")
    if first is not None and first.ndim == 4 and first.shape[1] == 3:  # original encoder: conv(3, 64) first
        return _original_part(state, "encoder")
    first = state.get("1.weight")
    if "0.weight" not in state and first is not None and first.ndim == 4:  # original decoder: Clamp, conv(c, 64)
        if first.shape[1] != LATENT_CHANNELS:
            raise CheckpointError(f"{source}: a tiny decoder for {first.shape[1]}-channel latents (TAESD3/TAEF1?), "
                                  f"not SD 1.x's {LATENT_CHANNELS}: use taesd_decoder")
        return _original_part(state, "decoder")
    sample = ", ".join(sorted(state)[:4])
    raise CheckpointError(f"{source}: not a TAESD file (keys such as {sample})")


def _files(paths: tuple[str | Path, ...]) -> list[Path]:
    """The files to read: each path, or a folder's TAESD files (madebyollin/taesd as downloaded)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [p / name for name in _PART_FILES if (p / name).is_file()]
            if not found:
                raise CheckpointError(f"{p}: no TAESD file in this folder (expected one of {', '.join(_PART_FILES)})")
            files += found[:1] if found[0].name == _PART_FILES[0] else found
        elif not p.is_file():
            raise CheckpointError(f"{p}: no such file")
        else:
            files.append(p)
    return files


def load_taesd(path: str | Path, *more: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> TinyAutoencoder:
    """Load TAESD for SD 1.x from one file (diffusers' combined `diffusion_pytorch_model.safetensors`, or an
    original `taesd_decoder` / `taesd_encoder` `.pth` / `.safetensors` alone), several (encoder and decoder
    files), or a folder holding them. Weights-only reading; raises CheckpointError for a bad or foreign file."""
    files = _files((path, *more))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        part = convert_state_dict(read_state_dict(f), f.name)
        if clash := sorted(set(part) & set(state)):
            raise CheckpointError(f"{f.name}: holds the same TAESD part as another file ({clash[0]})")
        state.update(part)
    has_encoder = any(k.startswith("encoder.") for k in state)
    has_decoder = any(k.startswith("decoder.") for k in state)
    model = TinyAutoencoder(encoder=has_encoder, decoder=has_decoder)
    expected = model.state_dict()
    bad = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if bad or missing or unexpected:
        detail = (f"wrong shape: {bad[:3]}" if bad else f"missing: {missing[:3]}" if missing
                  else f"unexpected: {unexpected[:3]}")
        raise CheckpointError(f"{', '.join(f.name for f in files)}: not a TAESD for SD 1.x ({detail})")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if torch.device(device).type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)  # oneDNN / cuDNN run NHWC convs faster (devices.py)
    parts = " and ".join(p for p, ok in (("encoder", has_encoder), ("decoder", has_decoder)) if ok)
    log.info("loaded TAESD %s from %s", parts, ", ".join(f.name for f in files))
    return model
