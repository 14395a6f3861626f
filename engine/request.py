"""Plain-data types that cross the engine boundary: what to generate, what came back, per-step events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.names import SAMPLERS  # not engine.samplers: a request is built without importing torch

if TYPE_CHECKING:
    import torch

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds; keep them in signed range for JSON/SQL
MIN_SIDE, MAX_SIDE = 64, 2048


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass
class GenerationRequest:
    """One txt2img or img2img job. Validated on creation; nothing is silently adjusted."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 25
    cfg_scale: float = 7.5
    width: int = 512
    height: int = 512
    seed: int | None = None
    sampler: str = "dpmpp_2m_karras"
    batch_size: int = 1
    init_image: Any = None  # PIL.Image.Image of exactly width x height, or None for txt2img
    strength: float = 0.75

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise TypeError("prompt and negative_prompt must be strings")
        if not _is_int(self.steps) or not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be an integer from 1 to 1000, got {self.steps!r}")
        if not _is_number(self.cfg_scale) or not 0 <= self.cfg_scale <= 50:
            raise ValueError(f"cfg_scale must be a number from 0 to 50, got {self.cfg_scale!r}")
        for name in ("width", "height"):
            side = getattr(self, name)
            if not _is_int(side) or not MIN_SIDE <= side <= MAX_SIDE or side % 8:
                raise ValueError(f"{name} must be a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}, got {side!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be None or an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        if not _is_int(self.batch_size) or not 1 <= self.batch_size <= 16:
            raise ValueError(f"batch_size must be an integer from 1 to 16, got {self.batch_size!r}")
        if not _is_number(self.strength) or not 0 <= self.strength <= 1:
            raise ValueError(f"strength must be a number from 0 to 1, got {self.strength!r}")
        if self.init_image is not None:
            size = getattr(self.init_image, "size", None)
            if size is None or not hasattr(self.init_image, "convert"):
                raise ValueError("init_image must be a PIL image")
            if tuple(size) != (self.width, self.height):
                raise ValueError(
                    f"init_image is {size[0]}x{size[1]} but the request is {self.width}x{self.height}: "
                    "resize or crop it to the requested size first"
                )
            if int(self.steps * self.strength) < 1:
                raise ValueError(
                    f"strength {self.strength} with {self.steps} steps runs no denoising step: "
                    "raise the strength or the steps"
                )

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None


@dataclass
class StepEvent:
    """Reported after each denoising step. `preview` is uint8 (h, w, 3) at latent resolution, or None."""

    step: int  # 1-based
    total: int
    elapsed: float  # seconds since generate() started
    preview: np.ndarray | None = None


@dataclass
class GenerationResult:
    images: list  # list[PIL.Image.Image], RGB
    seed: int
    seeds: list[int] = field(default_factory=list)
    latents: torch.Tensor | None = None
