"""A cheap RGB preview of SD1.x latents: a 4x3 linear projection, no VAE call.

The coefficients are AUTOMATIC1111's "Approx cheap" factors for SD1.x latents
(modules/sd_samplers_common.py), fitted by least squares from latents to downscaled decoded images.
"""

from __future__ import annotations

import numpy as np
import torch

# (4 latent channels) -> (R, G, B), applied to latents in the UNet's scaled space.
LATENT_RGB_FACTORS = torch.tensor(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ]
)


def latent_preview(latent: torch.Tensor) -> np.ndarray:
    """(4, h, w) latent -> uint8 (h, w, 3) RGB image at latent resolution."""
    if latent.ndim != 3 or latent.shape[0] != 4:
        raise ValueError(f"expected a (4, h, w) latent, got shape {tuple(latent.shape)}")
    factors = LATENT_RGB_FACTORS.to(device=latent.device, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latent.float(), factors)  # (4, h, w) -> (h, w, 3), roughly in [-1, 1]
    rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
    return rgb.cpu().numpy()
