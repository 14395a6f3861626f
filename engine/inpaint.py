"""Inpainting: repaint the white part of a mask, keep the rest.

Two model kinds, as diffusers' `StableDiffusionInpaintPipeline` runs them
(`pipelines/stable_diffusion/pipeline_stable_diffusion_inpaint.py`, `__call__` steps 7-10):
- a normal 4-channel UNet: after every sampler step the unmasked latents are put back to the init image's
  latents noised to the next step's level (`latents = (1 - mask) * init_latents_proper + mask * latents`).
  Here that is `LatentBlend`, a denoiser wrapper that returns the init latents as the x0 estimate outside the
  mask (A1111's `CFGDenoiser` blend on `denoised`). For Euler it gives diffusers' numbers exactly: with
  x = init + sigma * noise outside the mask (true from the img2img start on), the step
  x + (x - init) / sigma * (sigma_next - sigma) lands on init + sigma_next * noise, which is what diffusers
  writes there; inside the mask nothing changes. Other samplers get A1111's semantics.
- a 9-channel inpainting UNet (sd-v1-5-inpainting): the UNet input is [x_in, mask, masked-image latents]
  (`MaskedImageUNet`), the masked image being the init image with the repainted pixels set to 0 (grey in
  [-1, 1]); no latent blending. Without a mask (txt2img, plain img2img) the mask is all ones and the masked
  image all zeros, as A1111's `txt2img_image_conditioning` / `img2img_image_conditioning`.
The mask is diffusers' `mask_processor`: binarised at 0.5 in pixels, then nearest-resized to latent size.
Afterwards `composite` takes the unmasked pixels from the original over A1111's blurred mask edge
(`processing.py`: mask blur, `apply_overlay`), so nothing outside the mask drifts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

INPAINT_IN_CHANNELS = 9  # 4 latent + 1 mask + 4 masked-image latent


def is_inpainting_unet(unet: torch.nn.Module) -> bool:
    return getattr(getattr(unet, "config", None), "in_channels", 4) == INPAINT_IN_CHANNELS


def pixel_mask(mask: Image.Image | None, width: int, height: int) -> torch.Tensor:
    """(1, 1, H, W) float 0/1, 1 = repaint: white (>= 128 of 255, diffusers' `binarize` at 0.5). None: all 1."""
    if mask is None:
        return torch.ones(1, 1, height, width)
    array = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((array >= 0.5).astype(np.float32))[None, None]


def latent_mask(mask: torch.Tensor, downscale: int = 8) -> torch.Tensor:
    """Pixel mask -> latent resolution, nearest (diffusers `prepare_mask_latents`: F.interpolate default)."""
    h, w = mask.shape[-2:]
    return F.interpolate(mask, size=(h // downscale, w // downscale))


def masked_image(pixels: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """The image the 9-channel UNet sees: pixels ([-1, 1]) where the mask keeps them, 0 where it repaints."""
    if pixels is None:
        return torch.zeros(mask.shape[0], 3, *mask.shape[-2:])
    return pixels * (mask.to(pixels) < 0.5)


class MaskedImageUNet:
    """An inpainting UNet called like a 4-channel one: appends the mask and masked-image latents to x.

    mask (1, 1, h, w) and latents (1, 4, h, w), already scaled by SCALING_FACTOR; both are repeated over
    the batch (CFG's cond and uncond rows see the same conditioning, as diffusers' `torch.cat([...] * 2)`).
    """

    def __init__(self, unet: torch.nn.Module, mask: torch.Tensor, latents: torch.Tensor):
        if not is_inpainting_unet(unet):
            raise ValueError("MaskedImageUNet needs a 9-channel inpainting UNet")
        self.unet = unet
        self.config = unet.config
        self.conditioning = torch.cat([mask.to(latents), latents], dim=1)  # (1, 5, h, w)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 interrupt: Callable[[], None] | None = None) -> torch.Tensor:
        c = self.conditioning.to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1)
        return self.unet(torch.cat([x, c], dim=1), t, context, interrupt=interrupt)


class LatentBlend:
    """Denoiser wrapper for a 4-channel model: x0 estimates take the init latents outside the mask.

    init (B, 4, h, w): the init image's scaled latents; mask (1, 1, h, w), 1 = repaint. See the module doc
    for why this equals diffusers' per-step latent blending.
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], init: torch.Tensor, mask: torch.Tensor):
        self.denoiser = denoiser
        self.init = init
        self.mask = mask.to(init)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        denoised = self.denoiser(x, sigma, *args, **kwargs)
        init, mask = self.init.to(denoised), self.mask.to(denoised)
        return init * (1 - mask) + denoised * mask

    def __getattr__(self, name: str):  # the wrapped denoiser's state (its call counter, ...)
        return getattr(self.denoiser, name)


def blur_mask(mask: Image.Image, blur: int) -> Image.Image:
    """A1111's mask blur (`processing.py`, `StableDiffusionProcessingImg2Img.init`): a Gaussian of sigma
    `blur` with a 2 * int(2.5 * blur + 0.5) + 1 kernel, along x then y, reflect-101 borders (cv2's default),
    each pass rounded back to 8 bits."""
    array = np.asarray(mask.convert("L"), dtype=np.float64)
    if blur <= 0:
        return Image.fromarray(array.astype(np.uint8), "L")
    radius = int(2.5 * blur + 0.5)
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2.0 * blur * blur))
    taps /= taps.sum()
    for axis in (1, 0):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(array, pad, mode="reflect")  # reflect-101: the edge pixel is not repeated
        n = array.shape[axis]
        out = np.zeros_like(array)
        for k, tap in enumerate(taps):
            out += tap * (padded[:, k : k + n] if axis == 1 else padded[k : k + n, :])
        array = np.clip(np.round(out), 0, 255)
    return Image.fromarray(array.astype(np.uint8), "L")


def composite(images: list[Image.Image], original: Image.Image, mask: Image.Image) -> list[Image.Image]:
    """Each generated image where `mask` (already blurred) is white, the original where it is black, mixed
    in between (A1111 `apply_overlay`): a pixel with mask 0 is the original's, bit for bit."""
    base = original.convert("RGB")
    return [Image.composite(image.convert("RGB"), base, mask.convert("L")) for image in images]
