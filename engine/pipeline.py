"""From prompt to pixels: load_pipeline() and Pipeline.generate(), a short recipe as A1111 v1.10 runs it.

request -> prompt schedules and conditioning (engine.prompt, engine.conditioning: each distinct text encoded
once, clip skip, emphasis) -> initial noise (engine.rng: per-image generators, variation, ENSD) -> sigmas
(engine.schedules, the sampler's "Automatic" schedule, discard-penultimate) -> a CFG denoiser around the UNet
(engine.denoiser) -> the sampler function (engine.samplers, k-diffusion's shape) -> VAE decode.
See ../shared/research/a1111-reproduction.md §0, §4.3 (txt2img) and §4.5, §4.7 (img2img). Deliberate
differences from A1111: noise is always drawn on the CPU (or by the NV emulation), so a seed gives the same
image on every device; latents stay fp32 between steps whatever the model precision; output pixels are
rounded, not truncated.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine import rng
from engine.checkpoint import load_models
from engine.conditioning import Conditioner
from engine.denoiser import CFGDenoiser
from engine.devices import resolve_device, resolve_dtype
from engine.errors import Cancelled, CheckpointError
from engine.names import BROWNIAN, DISCARD_PENULTIMATE, SECOND_ORDER, TIMESTEP_SAMPLERS, resolve_sampler
from engine.preview import latent_preview
from engine.prompt import extract_extra_networks
from engine.request import GenerationRequest, GenerationResult, StepEvent
from engine.samplers import TAKES_NOISE, TIMESTEPS, get_sampler, unipc
from engine.schedules import ModelSchedule
from engine.schedules import sigmas as schedule_sigmas
from engine.tokenizer import Tokenizer
from engine.vae import SCALING_FACTOR

log = logging.getLogger(__name__)

StepCallback = Callable[[StepEvent], None]


def load_pipeline(
    path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> Pipeline:
    """Load an SD1.x checkpoint (.ckpt or .safetensors). Raises CheckpointError, or ValueError for bad
    options."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    dev = resolve_device(device)
    model_dtype, vae_dtype = resolve_dtype(dtype, dev)
    started = time.perf_counter()
    models = load_models(path, device=dev, dtype=model_dtype, vae_dtype=vae_dtype)
    log.info("loaded %s on %s (%s) in %.1f s", path.name, dev, model_dtype, time.perf_counter() - started)
    return Pipeline(models, Tokenizer(), dev, model_dtype, vae_dtype, path)


def _image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float in [-1, 1], as diffusers' VaeImageProcessor.preprocess."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


def _tensor_to_images(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images, rounded as diffusers' numpy_to_pil."""
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    arrays = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in arrays]


def _step_noise(
    sampler: str,
    x: torch.Tensor,
    full_sigmas: torch.Tensor,
    seeds: list[int],
    source: str,
    image_noise: rng.ImageNoise,
) -> Callable[..., torch.Tensor]:
    """The samplers' `noise`: for the SDE samplers a Brownian tree per image over the full schedule's range
    (A1111 create_noise_sampler: float32 0-d sigmas, the image seeds; ENSD does not apply), otherwise A1111's
    randn_like, the next draw of each image's generator (after ENSD's re-seed)."""
    if sampler in BROWNIAN:
        from engine.brownian import BrownianTreeNoiseSampler

        tree = BrownianTreeNoiseSampler(
            x, full_sigmas[full_sigmas > 0].min(), full_sigmas.max(), seeds, source=source
        )
        return lambda sigma, sigma_next: tree(sigma, sigma_next).to(x.device, torch.float32)
    return lambda: image_noise.next().to(x.device)


class Pipeline:
    """Loaded models plus the sampling loop. Not thread-safe: run one generate() at a time."""

    def __init__(
        self,
        models,
        tokenizer: Tokenizer,
        device: torch.device,
        dtype: torch.dtype,
        vae_dtype: torch.dtype,
        path: Path,
    ):
        self.models = models
        self.tokenizer = tokenizer
        self.text_encoder = models.text_encoder
        self.unet = models.unet
        self.vae = models.vae
        self.device = device
        self.dtype = dtype
        self.vae_dtype = vae_dtype
        self.path = Path(path)

    @property
    def model_name(self) -> str:
        return self.path.stem

    @cached_property
    def model_hash(self) -> str:
        """sha256 of the file, first 10 hex digits: A1111's "Model hash" (reads the whole file once)."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        return digest.hexdigest()[:10]

    @cached_property
    def conditioner(self) -> Conditioner:
        return Conditioner(self.text_encoder, self.tokenizer, self.device, self.dtype)

    def encode_prompt(
        self, prompts: list[str], *, emphasis: str = "original", clip_skip: int = 1
    ) -> torch.Tensor:
        """Texts -> (B, 77 * n, D) context, as A1111 encodes one batch; n > 1 for prompts over 75 tokens."""
        return self.conditioner.encode(prompts, emphasis=emphasis, clip_skip=clip_skip)

    @torch.inference_mode()
    def generate(
        self,
        req: GenerationRequest,
        on_step: StepCallback | None = None,
        cancel: threading.Event | None = None,
        noise: torch.Tensor | None = None,
    ) -> GenerationResult:
        """Run one request. Raises Cancelled if `cancel` gets set; then nothing is returned.

        `noise` (B, 4, h, w) replaces the initial noise (tests); later draws still come from the seeds.
        """
        started = time.perf_counter()

        def check_cancel() -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("generation cancelled")

        sampler, schedule = resolve_sampler(req.sampler, req.schedule)
        seed = req.seed if req.seed is not None else random.randrange(2**32)
        seeds, subseeds = rng.batch_seeds(
            seed, req.batch_size, variation_seed=req.variation_seed, variation_strength=req.variation_strength
        )
        latent_shape = (4, req.height // 8, req.width // 8)
        if noise is not None and tuple(noise.shape) != (req.batch_size, *latent_shape):
            raise ValueError(
                f"noise must have shape {(req.batch_size, *latent_shape)}, got {tuple(noise.shape)}"
            )

        # prompt schedules: extra-network tags (<lora:...>) leave the text; the LoRAs come from req.loras
        prompt, _networks = extract_extra_networks(req.prompt)
        calls = 2 * req.steps if sampler in SECOND_ORDER else req.steps  # A1111 SamplerData.total_steps
        text = {"emphasis": req.emphasis, "clip_skip": req.clip_skip}
        cond = self.conditioner.schedule(prompt, calls, **text)
        uncond = self.conditioner.schedule(req.negative_prompt, calls, **text)
        check_cancel()

        image_noise = rng.ImageNoise(
            latent_shape,
            seeds,
            source=req.rng,
            subseeds=subseeds,
            variation_strength=req.variation_strength,
            ensd=req.ensd,
        )
        first = image_noise.first()
        first = (first if noise is None else noise).to(self.device, torch.float32)
        init = self._encode_init(req, seed) if req.is_img2img else None
        sigmas, full_sigmas, x, kwargs = self._start(req, sampler, schedule, first, init)
        sigmas = sigmas.to(self.device)  # k-diffusion append_dims makes (1, 1, 1, 1) sigmas: on x's device

        denoiser = CFGDenoiser(
            self.unet,
            self.model_schedule,
            cond,
            uncond,
            req.cfg_scale,
            dtype=self.dtype,
            interrupt=check_cancel,
        )
        total = len(sigmas) - 1

        def callback(d: dict) -> None:
            check_cancel()
            if on_step is not None:
                on_step(
                    StepEvent(
                        step=d["i"] + 1,
                        total=total,
                        elapsed=time.perf_counter() - started,
                        preview=latent_preview(d["denoised"][0]),
                    )
                )

        if sampler in TAKES_NOISE:
            kwargs["noise"] = _step_noise(sampler, x, full_sigmas, seeds, req.rng, image_noise)
        latents = get_sampler(sampler)(denoiser, x, sigmas, callback=callback, **kwargs)
        check_cancel()
        images = self.vae.decode((latents / SCALING_FACTOR).to(self.vae_dtype))
        check_cancel()
        log.info("generated %d image(s) in %.1f s", req.batch_size, time.perf_counter() - started)
        return GenerationResult(images=_tensor_to_images(images), seed=seed, seeds=seeds, latents=latents)

    @cached_property
    def model_schedule(self) -> ModelSchedule:
        return ModelSchedule.sd1()

    def _encode_init(self, req: GenerationRequest, seed: int) -> torch.Tensor:
        """The init image's latent (B, 4, h, w): the VAE posterior sampled with a generator seeded `seed`."""
        pixels = _image_to_tensor(req.init_image).to(self.device, self.vae_dtype)
        z = self.vae.encode(pixels, generator=torch.Generator("cpu").manual_seed(seed))
        return (z.float() * SCALING_FACTOR).expand(req.batch_size, -1, -1, -1)

    def _start(
        self,
        req: GenerationRequest,
        sampler: str,
        schedule: str,
        noise: torch.Tensor,
        init: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """(sigmas to run, the full schedule, x to start from, extra sampler arguments). The Brownian
        samplers' tree spans the full schedule even in img2img (A1111 create_noise_sampler)."""
        steps = req.steps
        if sampler == "unipc":
            return self._start_unipc(req, noise, init)
        if sampler in TIMESTEP_SAMPLERS:
            grid = TIMESTEPS[sampler](steps)[::-1]  # descending training timesteps
            sigmas = self.model_schedule.sigmas[grid]
            if sampler == "ddpm":
                sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])  # its last step goes to alpha_bar = 1
            if init is None:
                return sigmas, sigmas, noise, {}  # variance-preserving scale: unit noise
            if sampler == "ddim":
                # A1111 sd_samplers_timesteps.sample_img2img: timesteps[:t_enc], noised at timesteps[t_enc]
                t_enc = int(min(req.strength, 0.999) * steps)
                start, t_noise = len(grid) - t_enc, grid[::-1][t_enc]
            else:
                # DDPM as the seed project ran it: diffusers' img2img start index, noised at that timestep
                start = steps - min(int(steps * req.strength), steps)
                t_noise = grid[start]
            alpha = self.model_schedule.alphas_cumprod[t_noise].item()
            return sigmas[start:], sigmas, alpha**0.5 * init + (1 - alpha) ** 0.5 * noise, {}
        sigmas = schedule_sigmas(schedule, steps, discard_penultimate=sampler in DISCARD_PENULTIMATE)
        if init is None:
            return sigmas, sigmas, noise * sigmas[0], {}
        # A1111 setup_img2img_steps / sample_img2img (img2img_fix_steps off): t_enc + 1 sampler steps
        t_enc = int(min(req.strength, 0.999) * steps)
        run = sigmas[steps - t_enc - 1 :]
        return run, sigmas, init + noise * run[0], {}

    def _start_unipc(self, req: GenerationRequest, noise: torch.Tensor, init: torch.Tensor | None):
        """A1111 sd_samplers_timesteps_impl.unipc: the DDIM grid's length, time-uniform from t = 999 down; in
        img2img the first t_enc DDIM timesteps, starting at the last of them, noised at timesteps[t_enc]."""
        ddim_grid = TIMESTEPS["ddim"](req.steps)
        alphas_cumprod = self.model_schedule.alphas_cumprod
        if init is None:
            sigmas, times = unipc.grid(len(ddim_grid), alphas_cumprod)
            return sigmas, sigmas, noise, {"timesteps": times}
        t_enc = int(min(req.strength, 0.999) * req.steps)
        sigmas, times = unipc.grid(t_enc, alphas_cumprod, t_max=float(ddim_grid[t_enc - 1]))
        alpha = alphas_cumprod[ddim_grid[t_enc]].item()
        return sigmas, sigmas, alpha**0.5 * init + (1 - alpha) ** 0.5 * noise, {"timesteps": times}
