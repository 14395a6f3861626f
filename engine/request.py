"""Plain-data types that cross the engine boundary: what to generate, what came back, per-step events."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.hires import HiresFix  # torch-free
from engine.names import MAX_STEPS, SCHEDULE_NAMES, resolve_sampler  # not engine.samplers: no torch here

if TYPE_CHECKING:
    import torch

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds; keep them in signed range for JSON/SQL
MIN_SIDE, MAX_SIDE = 64, 2048
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")  # as engine.inpaint (no torch here)
# A1111 "CPU", and its Philox emulation of CUDA randn ("NV"); "gpu" is the same as "nv" (engine.rng.randn)
RNG_SOURCES = ("cpu", "nv", "gpu")
MAX_CLIP_SKIP = 12
EMPHASIS_MODES = ("original", "no_norm", "ignore", "none", "comfy")  # as engine.prompt.EMPHASIS_MODES
DECODERS = ("vae", "taesd")  # the final decode: the checkpoint's VAE, or the TAESD attached to the pipeline


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass
class GenerationRequest:
    """One txt2img or img2img job. Validated on creation; nothing is silently adjusted, with one documented
    exception: a legacy combined sampler name ("dpmpp_2m_karras") is split into sampler and schedule
    ("dpmpp_2m", "karras"), so saved settings, history and old PNGs keep working.

    schedule: an engine.names.SCHEDULE_NAMES entry; "automatic" is the sampler's A1111 default
    (engine.names.DEFAULT_SCHEDULE). rng: the noise source, "cpu" or "nv" ("gpu" means "nv").
    variation_seed/variation_strength: A1111's subseed slerp. ensd: A1111's eta_noise_seed_delta.
    loras: (path, weight) or (path, te_weight, unet_weight) entries, applied by the LoRA code.
    decoder: "vae" (default) or "taesd": the tiny autoencoder (Pipeline.set_taesd) decodes the result, and
    encodes the init image in img2img.
    token_merging_ratio/_hr: A1111's token merging (engine.tome) for the first and the hires pass.
    """

    prompt: str
    negative_prompt: str = ""
    steps: int = 25
    cfg_scale: float = 7.5
    width: int = 512
    height: int = 512
    seed: int | None = None
    sampler: str = "dpmpp_2m"
    batch_size: int = 1
    init_image: Any = None  # PIL.Image.Image of exactly width x height, or None for txt2img
    strength: float = 0.75
    schedule: str = "automatic"
    rng: str = "cpu"
    clip_skip: int = 1
    emphasis: str = "original"
    variation_seed: int | None = None
    variation_strength: float = 0.0
    ensd: int = 0
    loras: tuple = ()
    decoder: str = "vae"
    mask: Any = None  # PIL "L" (or "1") image of width x height, white = repaint; needs init_image
    mask_blur: int = 4  # A1111's "Mask blur": Gaussian sigma in pixels of the final composite's mask edge
    masked_content: str = "original"  # A1111's "Masked content": engine.inpaint.MASKED_CONTENT
    hires: HiresFix | None = None  # A1111's hires fix (txt2img only): engine.hires
    # --- A1111's uncond skips (engine.denoiser.CFGDenoiser.skips_uncond): infotext NGMS, NGMS all steps,
    # Skip Early CFG. s_min_uncond: skip the uncond pass on odd calls below this sigma (all calls with
    # s_min_uncond_all); skip_early_cond: skip it while the fraction of calls done is <= this.
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    skip_early_cond: float = 0.0
    # --- token merging (engine.tome): A1111's "Token merging ratio", and "... hr" for the hires pass,
    # where 0 means the same as token_merging_ratio. 0 <= ratio < 1; 0: off.
    token_merging_ratio: float = 0.0
    token_merging_ratio_hr: float = 0.0

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
                raise ValueError(
                    f"{name} must be a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}, got {side!r}"
                )
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be None or an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        if self.schedule not in SCHEDULE_NAMES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULE_NAMES)}"
            )
        base, concrete = resolve_sampler(self.sampler, self.schedule)  # ValueError for unknown names
        if base != self.sampler:  # a legacy combined name: keep its schedule explicit
            self.sampler, self.schedule = base, concrete
        if self.steps > MAX_STEPS.get(self.sampler, self.steps):
            raise ValueError(f"steps must be from 1 to {MAX_STEPS[self.sampler]} for {self.sampler}, "
                             f"got {self.steps}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        self._validate_noise_and_text()
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
        self._validate_mask()
        self._validate_hires()
        self._validate_token_merging()
        self._validate_cfg_skips()

    def _validate_cfg_skips(self) -> None:
        if not _is_number(self.s_min_uncond) or not 0 <= self.s_min_uncond < float("inf"):
            raise ValueError(f"s_min_uncond (NGMS) must be a number >= 0, got {self.s_min_uncond!r}")
        if type(self.s_min_uncond_all) not in (bool, np.bool_):
            raise ValueError(f"s_min_uncond_all must be True or False, got {self.s_min_uncond_all!r}")
        if not _is_number(self.skip_early_cond) or not 0 <= self.skip_early_cond <= 1:
            raise ValueError(
                f"skip_early_cond must be a number from 0 to 1, got {self.skip_early_cond!r}"
            )

    def _validate_hires(self) -> None:
        if self.hires is None:
            return
        if not isinstance(self.hires, HiresFix):
            raise TypeError(f"hires must be an engine.hires.HiresFix or None, got {type(self.hires).__name__}")
        if self.init_image is not None:
            raise ValueError("hires fix is for txt2img: leave init_image empty or turn hires fix off")
        (up_w, up_h), (w, h) = self.hires.sizes(self.width, self.height)
        if not MIN_SIDE <= min(w, h) or max(up_w, up_h) > MAX_SIDE:
            raise ValueError(
                f"hires fix would make {up_w}x{up_h}: sides must stay from {MIN_SIDE} to {MAX_SIDE}"
            )

    def _validate_token_merging(self) -> None:
        for name in ("token_merging_ratio", "token_merging_ratio_hr"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:  # also refuses NaN
                raise ValueError(f"{name} must be a number from 0 to below 1, got {value!r}")

    def _validate_mask(self) -> None:
        if not _is_int(self.mask_blur) or not 0 <= self.mask_blur <= 64:
            raise ValueError(f"mask_blur must be an integer from 0 to 64, got {self.mask_blur!r}")
        if self.masked_content not in MASKED_CONTENT:
            raise ValueError(
                f"masked_content must be one of {', '.join(MASKED_CONTENT)}, got {self.masked_content!r}"
            )
        if self.mask is None:
            return
        if getattr(self.mask, "mode", None) not in ("L", "1") or not hasattr(self.mask, "convert"):
            raise ValueError("mask must be a PIL image in mode 'L' (or '1'): white repaints, black keeps")
        if self.init_image is None:
            raise ValueError("a mask needs an init_image to inpaint")
        if tuple(self.mask.size) != (self.width, self.height):
            raise ValueError(
                f"mask is {self.mask.size[0]}x{self.mask.size[1]} but the request is {self.width}x{self.height}"
            )

    def _validate_noise_and_text(self) -> None:
        if self.rng not in RNG_SOURCES:
            raise ValueError(f"rng must be one of {', '.join(RNG_SOURCES)}, got {self.rng!r}")
        if not _is_int(self.clip_skip) or not 1 <= self.clip_skip <= MAX_CLIP_SKIP:
            raise ValueError(
                f"clip_skip must be an integer from 1 to {MAX_CLIP_SKIP}, got {self.clip_skip!r}"
            )
        if self.emphasis not in EMPHASIS_MODES:
            raise ValueError(f"emphasis must be one of {', '.join(EMPHASIS_MODES)}, got {self.emphasis!r}")
        if self.variation_seed is not None and (
            not _is_int(self.variation_seed) or not 0 <= self.variation_seed <= MAX_SEED
        ):
            raise ValueError(
                f"variation_seed must be None or an integer from 0 to {MAX_SEED}, got {self.variation_seed!r}"
            )
        if not _is_number(self.variation_strength) or not 0 <= self.variation_strength <= 1:
            raise ValueError(
                f"variation_strength must be a number from 0 to 1, got {self.variation_strength!r}"
            )
        if not _is_int(self.ensd) or not 0 <= self.ensd <= MAX_SEED:
            raise ValueError(f"ensd must be an integer from 0 to {MAX_SEED}, got {self.ensd!r}")
        if isinstance(self.loras, (str, bytes)) or not hasattr(self.loras, "__iter__"):
            raise ValueError(f"loras must be a list of (path, weight) entries, got {self.loras!r}")
        self.loras = tuple(
            tuple(entry) if isinstance(entry, (list, tuple)) else entry for entry in self.loras
        )
        for entry in self.loras:
            if (
                not isinstance(entry, tuple)
                or len(entry) not in (2, 3)
                or not isinstance(entry[0], (str, Path))
                or not all(_is_number(w) for w in entry[1:])
            ):
                raise ValueError(
                    f"each lora must be (path, weight) or (path, te_weight, unet_weight), got {entry!r}"
                )

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None

    @property
    def resolved_schedule(self) -> str:
        """The concrete schedule name ("automatic" resolved for this sampler; "automatic" for DDIM/DDPM)."""
        return resolve_sampler(self.sampler, self.schedule)[1]


@dataclass
class StepEvent:
    """Reported after each denoising step. `preview` is uint8 (h, w, 3): at latent resolution (the cheap
    colour map), or from the pipeline's TAESD at image resolution or a power-of-2 fraction of it; None when
    skipped."""

    step: int  # 1-based
    total: int
    elapsed: float  # seconds since generate() started
    preview: np.ndarray | None = None


@dataclass
class GenerationResult:
    """What generate() made, plus the networks it used, as A1111 records them: `lora_hashes` (name ->
    `Lora hashes` entry), `ti_hashes` (word -> `TI hashes` entry, only the embeddings the prompts invoked),
    `vae_name`/`vae_hash` of an external VAE (None: the checkpoint's own)."""

    images: list  # list[PIL.Image.Image], RGB
    seed: int
    seeds: list[int] = field(default_factory=list)
    latents: torch.Tensor | None = None
    lora_hashes: dict[str, str] = field(default_factory=dict)
    ti_hashes: dict[str, str] = field(default_factory=dict)
    vae_name: str | None = None
    vae_hash: str | None = None
    # A1111's infotext entries for the uncond skips that happened ("Skip Early CFG", "NGMS", "NGMS all
    # steps" -> value), written only when a call skipped (engine.denoiser.CFGDenoiser.cfg_skips)
    cfg_skips: dict[str, float | bool] = field(default_factory=dict)
