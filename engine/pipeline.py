"""From prompt to pixels: load_pipeline() and Pipeline.generate().

The loop follows diffusers' StableDiffusionPipeline / StableDiffusionImg2ImgPipeline step for step (CFG with a
batched uncond/cond pass, `latents = noise * init_noise_sigma`, img2img's start step from `strength`), so the
same weights, noise and sampler give the same numbers. Differences are deliberate and listed here:
- prompts over 75 tokens are encoded in 75-token windows and concatenated (A1111's behaviour) instead of cut;
- initial noise is drawn on the CPU from the seed (image k of a batch from seed + k), so a seed gives the
  same image on every device;
- latents stay fp32 between steps whatever the model precision; only the UNet/VAE run in fp16/bf16.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.checkpoint import check_checkpoint_path, load_models
from engine.devices import resolve_device, resolve_dtype
from engine.errors import Cancelled
from engine.modelhash import BackgroundHash
from engine.preview import latent_preview
from engine.request import GenerationRequest, GenerationResult, StepEvent
from engine.samplers import make_sampler
from engine.tokenizer import Tokenizer
from engine.vae import SCALING_FACTOR

log = logging.getLogger(__name__)

StepCallback = Callable[[StepEvent], None]


def load_pipeline(path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> Pipeline:
    """Load an SD1.x checkpoint (.ckpt or .safetensors). Raises CheckpointError, or ValueError for bad options."""
    path = Path(path)
    check_checkpoint_path(path)
    dev = resolve_device(device)
    model_dtype, vae_dtype = resolve_dtype(dtype, dev)
    started = time.perf_counter()
    handle = open(path, "rb")  # noqa: SIM115 -- hashed later from this handle (modelhash.py)
    try:
        models = load_models(path, device=dev, dtype=model_dtype, vae_dtype=vae_dtype)
    except BaseException:
        handle.close()
        raise
    log.info("loaded %s on %s (%s) in %.1f s", path.name, dev, model_dtype, time.perf_counter() - started)
    return Pipeline(models, Tokenizer(), dev, model_dtype, vae_dtype, path,
                    model_hash=BackgroundHash(handle, path.name))


def _image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float in [-1, 1], as diffusers' VaeImageProcessor.preprocess."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


def _tensor_to_images(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images, rounded as diffusers' numpy_to_pil."""
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    arrays = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in arrays]


class Pipeline:
    """Loaded models plus the sampling loop. Not thread-safe: run one generate() at a time."""

    def __init__(self, models, tokenizer: Tokenizer, device: torch.device, dtype: torch.dtype,
                 vae_dtype: torch.dtype, path: Path, model_hash: BackgroundHash | None = None):
        self.models = models
        self.tokenizer = tokenizer
        self.text_encoder = models.text_encoder
        self.unet = models.unet
        self.vae = models.vae
        self.device = device
        self.dtype = dtype
        self.vae_dtype = vae_dtype
        self.path = Path(path)
        self._hash = model_hash

    @property
    def model_name(self) -> str:
        return self.path.stem

    @property
    def model_hash(self) -> str:
        """A1111's "Model hash" of the loaded file; waits for the background hash. "" when unknown."""
        return self.wait_model_hash()

    def wait_model_hash(self, timeout: float | None = None) -> str:
        """The model hash, waiting at most ``timeout`` seconds; "" when not known (yet).

        load_pipeline() starts hashing the loaded file in the background (modelhash.BackgroundHash); a
        Pipeline made without one hashes its path once, here.
        """
        if self._hash is None:
            try:
                handle = open(self.path, "rb")  # noqa: SIM115 -- BackgroundHash closes it
            except OSError as exc:
                log.warning("could not hash %s: %s", self.path, exc)
                return ""
            self._hash = BackgroundHash(handle, self.path.name)
        return self._hash.result(timeout)

    @torch.inference_mode()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Texts -> (B, 77 * n, D) context; n > 1 only when some prompt is longer than 75 tokens."""
        ids = self.tokenizer.chunks(prompts)  # (B, n, 77)
        batch, n_chunks, length = ids.shape
        hidden = self.text_encoder(ids.reshape(batch * n_chunks, length).to(self.device))
        return hidden.reshape(batch, n_chunks * length, hidden.shape[-1])

    @torch.inference_mode()
    def generate(self, req: GenerationRequest, on_step: StepCallback | None = None,
                 cancel: threading.Event | None = None, noise: torch.Tensor | None = None) -> GenerationResult:
        """Run one request. Raises Cancelled if `cancel` gets set; then nothing is returned."""
        started = time.perf_counter()

        def check_cancel() -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("generation cancelled")

        seed = req.seed if req.seed is not None else random.randrange(2**32)
        seeds = [seed + k for k in range(req.batch_size)]
        latent_shape = (req.batch_size, 4, req.height // 8, req.width // 8)
        if noise is None:
            noise = torch.cat([torch.randn((1, *latent_shape[1:]), generator=torch.Generator("cpu").manual_seed(s))
                               for s in seeds])
        elif tuple(noise.shape) != latent_shape:
            raise ValueError(f"noise must have shape {latent_shape}, got {tuple(noise.shape)}")
        noise = noise.to(self.device, torch.float32)
        step_generator = torch.Generator("cpu").manual_seed(seed)  # stochastic samplers' per-step noise

        sampler = make_sampler(req.sampler, req.steps)
        do_cfg = req.cfg_scale > 1.0  # as diffusers: guidance_scale <= 1 means no unconditional pass
        texts = [req.negative_prompt] * req.batch_size + [req.prompt] * req.batch_size
        context = self.encode_prompt(texts if do_cfg else texts[req.batch_size:]).to(self.dtype)
        check_cancel()

        if req.init_image is not None:
            start = sampler.start_index(req.strength)
            pixels = _image_to_tensor(req.init_image).to(self.device, self.vae_dtype)
            z = self.vae.encode(pixels, generator=torch.Generator("cpu").manual_seed(seed))
            init_latents = (z.float() * SCALING_FACTOR).expand(req.batch_size, -1, -1, -1)
            latents = sampler.add_noise(init_latents, noise, start)
        else:
            start = 0
            latents = noise * sampler.init_noise_sigma

        def interrupt() -> None:  # called by the UNet between blocks: cancel within a fraction of a step
            check_cancel()

        total = len(sampler.timesteps) - start
        for i in range(start, len(sampler.timesteps)):
            check_cancel()
            model_input = sampler.scale_model_input(latents, i).to(self.dtype)
            t = sampler.timesteps[i]
            if do_cfg:
                # (B, 4, h, w) -> (2B, 4, h, w): uncond and cond in one UNet pass
                eps = self.unet(torch.cat([model_input, model_input]), t, context, interrupt=interrupt).float()
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + req.cfg_scale * (eps_cond - eps_uncond)
            else:
                eps = self.unet(model_input, t, context, interrupt=interrupt).float()
            latents, denoised = sampler.step(eps, i, latents, generator=step_generator)
            if on_step is not None:
                on_step(StepEvent(step=i - start + 1, total=total, elapsed=time.perf_counter() - started,
                                  preview=latent_preview(denoised[0])))
        check_cancel()
        images = self.vae.decode((latents / SCALING_FACTOR).to(self.vae_dtype), interrupt=interrupt)
        check_cancel()
        log.info("generated %d image(s) in %.1f s", req.batch_size, time.perf_counter() - started)
        return GenerationResult(images=_tensor_to_images(images), seed=seed, seeds=seeds, latents=latents)
