"""Hires. fix as A1111 runs it (`processing.py: StableDiffusionProcessingTxt2Img`, `sample_hr_pass`;
../shared/research/a1111-reproduction.md §6 and §4.5): a txt2img pass at W x H, an upscale, then an img2img
pass at the target size with its own steps and denoising strength. Pipeline.generate runs the two passes;
this module holds the rules between them: the target size, the upscalers, the crop and the step count.

Torch is imported only inside the functions that need it (engine.request imports HiresFix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

# A1111's latent upscale modes (`shared.latent_upscale_modes`): F.interpolate mode and antialias
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
IMAGE_UPSCALERS = ("Lanczos", "None")  # "None": A1111 resizes with PIL's LANCZOS as well
UPSCALERS = (*LATENT_MODES, *IMAGE_UPSCALERS)
MAX_SCALE = 4.0


@dataclass(frozen=True)
class HiresFix:
    """A1111's hires fix settings.

    scale: `Hires upscale`, used when width and height are 0. width/height: `Hires resize` (one of them 0:
    keep the aspect ratio; both: scale to cover, then crop the latents centrally). steps: `Hires steps`, 0 =
    the first pass's steps. denoise: `Denoising strength` of the second pass. upscaler: a LATENT_MODES name,
    "Lanczos" or "None".
    """

    scale: float = 2.0
    width: int = 0
    height: int = 0
    steps: int = 0
    denoise: float = 0.7
    upscaler: str = "Latent"

    def __post_init__(self) -> None:
        number = (int, float)
        if isinstance(self.scale, bool) or not isinstance(self.scale, number) or not 1 <= self.scale <= MAX_SCALE:
            raise ValueError(f"hires scale must be a number from 1 to {MAX_SCALE:g}, got {self.scale!r}")
        for name in ("width", "height"):
            side = getattr(self, name)
            if isinstance(side, bool) or not isinstance(side, int) or side < 0 or side % 8:
                raise ValueError(f"hires {name} must be 0 or a positive multiple of 8, got {side!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 0 <= self.steps <= 150:
            raise ValueError(f"hires steps must be an integer from 0 to 150 (0: the first pass's), got {self.steps!r}")
        if isinstance(self.denoise, bool) or not isinstance(self.denoise, number) or not 0 < self.denoise <= 1:
            raise ValueError(f"hires denoise must be a number above 0 and at most 1, got {self.denoise!r}")
        if self.upscaler not in UPSCALERS:
            raise ValueError(f"unknown hires upscaler {self.upscaler!r}; choose one of: {', '.join(UPSCALERS)}")

    def sizes(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((upscale-to width, height), (final width, height)) for a first pass of width x height.

        A1111 `StableDiffusionProcessingTxt2Img.init`: from the scale, int(W * scale) x int(H * scale);
        with one resize side 0 the other follows the aspect ratio; with both, the upscale covers the target
        and the latents are then cropped to it (crop_latents). The latents are size // 8, so the final
        image is the size rounded down to a multiple of 8.
        """
        if not self.width and not self.height:
            up = (int(width * self.scale), int(height * self.scale))
            return up, (up[0] // 8 * 8, up[1] // 8 * 8)
        if not self.height:
            up = (self.width, self.width * height // width)
        elif not self.width:
            up = (self.height * width // height, self.height)
        elif width / height < self.width / self.height:
            up = (self.width, self.width * height // width)
        else:
            up = (self.height * width // height, self.height)
        final = (self.width or up[0], self.height or up[1])
        return up, (final[0] // 8 * 8, final[1] // 8 * 8)

    def second_pass_steps(self, first_pass_steps: int) -> int:
        return self.steps or first_pass_steps

    @property
    def is_latent(self) -> bool:
        return self.upscaler in LATENT_MODES


def fix_steps(steps: int, denoise: float) -> tuple[int, int]:
    """A1111 `setup_img2img_steps` with steps given (the hires pass always gives them): the full schedule's
    length int(steps / min(denoise, 0.999)) and t_enc = steps - 1, so exactly `steps` sampler steps run
    (k-diffusion samplers: sigmas[full - t_enc - 1:]). E.g. 10 steps at 0.5: a schedule of 20, from index 10."""
    return int(steps / min(denoise, 0.999)), steps - 1


def upscale_latents(latents: torch.Tensor, upscaler: str, size: tuple[int, int]) -> torch.Tensor:
    """(B, 4, h, w) -> (B, 4, H // 8, W // 8) for size (W, H), by a LATENT_MODES interpolation."""
    import torch.nn.functional as F

    mode, antialias = LATENT_MODES[upscaler]
    return F.interpolate(latents, size=(size[1] // 8, size[0] // 8), mode=mode, antialias=antialias)


def to_uint8_images(images: torch.Tensor) -> list[Image.Image]:
    """Decoded (B, 3, H, W) in [-1, 1] -> PIL, truncated as A1111's `sample_hr_pass` does before upscaling."""
    import numpy as np
    from PIL import Image

    x = ((images.float() + 1) / 2).clamp(0, 1) * 255
    arrays = x.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]


def upscale_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A1111 `images.resize_image(0, ...)` with the "Lanczos"/"None" upscaler: PIL LANCZOS to exactly size."""
    from PIL import Image

    return image.resize(size, resample=Image.LANCZOS)


def crop_latents(latents: torch.Tensor, up: tuple[int, int], final: tuple[int, int]) -> torch.Tensor:
    """A1111's central crop when both resize sides are set: truncate = (upscaled - target) // 8 latent pixels,
    [ty // 2 : h - (ty + 1) // 2, tx // 2 : w - (tx + 1) // 2]; then the latents are final // 8 in size."""
    tx, ty = (up[0] - final[0]) // 8, (up[1] - final[1]) // 8
    h, w = latents.shape[-2:]
    return latents[:, :, ty // 2 : h - (ty + 1) // 2, tx // 2 : w - (tx + 1) // 2]
