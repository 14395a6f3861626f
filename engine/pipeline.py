"""From prompt to pixels: load_pipeline() and Pipeline.generate(), a short recipe as A1111 v1.10 runs it.

request -> prompt schedules and conditioning (engine.prompt, engine.conditioning: each distinct text encoded
once, clip skip, emphasis) -> initial noise (engine.rng: per-image generators, variation, ENSD) -> sigmas
(engine.schedules, the sampler's "Automatic" schedule, discard-penultimate) -> a CFG denoiser around the UNet
(engine.denoiser) -> the sampler function (engine.samplers, k-diffusion's shape) -> VAE (or TAESD) decode.
See ../shared/research/a1111-reproduction.md §0, §4.3 (txt2img) and §4.5, §4.7 (img2img). Deliberate
differences from A1111: noise is always drawn on the CPU (or by the NV emulation), so a seed gives the same
image on every device; latents stay fp32 between steps whatever the model precision; output pixels are
rounded, not truncated.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine import hires, inpaint, rng
from engine.checkpoint import check_checkpoint_path, load_models
from engine.conditioning import Conditioner
from engine.denoiser import CFGDenoiser
from engine.devices import resolve_device, resolve_dtype
from engine.embeddings import Embedding, check_width, load_embedding
from engine.errors import Cancelled, CheckpointError
from engine.hashes import lora_hash, vae_hash
from engine.lora import LoraSet, LoraSpec, normalize_specs, read_lora
from engine.modelhash import BackgroundHash
from engine.names import BROWNIAN, DISCARD_PENULTIMATE, SECOND_ORDER, TIMESTEP_SAMPLERS, resolve_sampler
from engine.preview import latent_preview
from engine.prompt import extract_extra_networks, tokenize_line
from engine.request import GenerationRequest, GenerationResult, StepEvent
from engine.samplers import ENDS_AT_ZERO, TAKES_NOISE, TIMESTEPS, get_sampler, unipc
from engine.schedules import ModelSchedule
from engine.schedules import sigmas as schedule_sigmas
from engine.taesd import StepPreviewer, TinyAutoencoder, load_taesd
from engine.tokenizer import Tokenizer
from engine.tome import hires_ratio, token_merging
from engine.vae import SCALING_FACTOR
from engine.vae_file import load_vae

log = logging.getLogger(__name__)

StepCallback = Callable[[StepEvent], None]


def load_pipeline(path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                  vae: str | Path | None = None) -> Pipeline:
    """Load an SD1.x checkpoint (.ckpt or .safetensors), with an external VAE file in place of its own if `vae`
    is given. Raises CheckpointError, or ValueError for bad options."""
    path = Path(path)
    check_checkpoint_path(path)
    if vae is not None and not Path(vae).is_file():  # before the seconds of loading the model
        raise CheckpointError(f"no VAE file at {vae}")
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
    pipe = Pipeline(models, Tokenizer(), dev, model_dtype, vae_dtype, path,
                    model_hash=BackgroundHash(handle, path.name))
    if vae is not None:
        pipe.set_vae(vae)
    return pipe


def _image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float in [-1, 1], as diffusers' VaeImageProcessor.preprocess."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


def _tensor_to_images(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images, quantised as A1111 does (processing.py process_images_inner:
    `255. * x` then `astype(np.uint8)`, i.e. truncated; diffusers' numpy_to_pil rounds), so the same latents
    give A1111's very pixels."""
    images = ((images.float() + 1.0) / 2.0).clamp(0, 1)  # A1111's order of operations, for the same floats
    arrays = (255.0 * images.permute(0, 2, 3, 1).cpu().numpy()).astype("uint8")
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

    taesd: TinyAutoencoder | None = None  # set_taesd(): previews that look like the picture, the fast decode
    preview_budget: float | None = 0.05  # TAESD previews' share of the sampling time (None: every step)

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
        With `req.hires`, two passes (engine.hires); step events count both passes' steps.
        """
        started = time.perf_counter()

        def check_cancel() -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("generation cancelled")

        sampler, schedule = resolve_sampler(req.sampler, req.schedule)
        self._check_decoder(req)
        seed = req.seed if req.seed is not None else random.randrange(2**32)
        seeds, subseeds = rng.batch_seeds(
            seed, req.batch_size, variation_seed=req.variation_seed, variation_strength=req.variation_strength
        )
        latent_shape = (4, req.height // 8, req.width // 8)
        if noise is not None and tuple(noise.shape) != (req.batch_size, *latent_shape):
            raise ValueError(
                f"noise must have shape {(req.batch_size, *latent_shape)}, got {tuple(noise.shape)}"
            )

        # LoRAs first (merged into the weights, text encoder included); an empty list restores the plain
        # weights. Extra-network tags (<lora:...>) only leave the text: the LoRAs come from req.loras.
        self.set_loras(req.loras)
        prompt, _networks = extract_extra_networks(req.prompt)
        calls = _calls(sampler, req.steps)
        embeddings = self.embeddings
        text = {"emphasis": req.emphasis, "clip_skip": req.clip_skip, "embeddings": embeddings}
        cond = self.conditioner.schedule(prompt, calls, **text)
        uncond = self.conditioner.schedule(req.negative_prompt, calls, **text)
        used = self._used_embeddings([*cond.texts, *uncond.texts], req.emphasis) if embeddings else set()
        check_cancel()

        image_noise = self._image_noise(req, latent_shape, seeds, subseeds)
        first = image_noise.first()
        first = (first if noise is None else noise).to(self.device, torch.float32)
        init = self._encode_init(req, seed) if req.is_img2img else None
        if req.mask is not None and req.masked_content in ("latent noise", "latent nothing"):
            # A1111 create_random_tensors(shape, seeds): each seed's first draw, no variation
            fresh = rng.ImageNoise(latent_shape, seeds, source=req.rng).first().to(self.device, torch.float32)
            init = inpaint.masked_init(init, self._inpaint_masks(req)[1], req.masked_content, fresh)
        start = self._start(req, sampler, schedule, first, init)
        previewer = StepPreviewer(self.taesd, self.preview_budget) if self._taesd_has("decoder") else None
        progress = _Progress(on_step, started, len(start[0]) - 1, check_cancel, previewer)
        progress.last_preview = req.decoder != "taesd"  # the tiny decode's image is the next thing shown
        hr = None
        if req.hires is not None:
            hr = hires.fix_steps(req.hires.second_pass_steps(req.steps), req.hires.denoise)
            # the second pass's sampler step count, from its schedule alone (the tensors are placeholders)
            progress.total += len(self._start(req, sampler, schedule, first, first, *hr)[0]) - 1

        launch = req.steps if init is None else int(min(req.strength, 0.999) * req.steps) + 1
        with token_merging(self.unet, req.token_merging_ratio):  # engine.tome; off again after, also on error
            latents = self._sample(req, sampler, seeds, cond, uncond, image_noise, start, init, progress,
                                   launch)
        if hr is not None:
            latents = self._hires_pass(req, sampler, schedule, seeds, subseeds, latents, prompt, text, hr,
                                       progress)
        check_cancel()
        if req.decoder == "taesd":
            images = self.taesd.decode(latents)
        else:
            images = self.vae.decode((latents / SCALING_FACTOR).to(self.vae_dtype), interrupt=check_cancel)
        check_cancel()
        pictures = _tensor_to_images(images)
        if req.mask is not None:  # unmasked pixels from the original, over the blurred mask edge
            pictures = inpaint.composite(pictures, req.init_image, inpaint.blur_mask(req.mask, req.mask_blur))
        log.info("generated %d image(s) in %.1f s", req.batch_size, time.perf_counter() - started)
        ti_hashes = {word: h for word, h in self.embedding_hashes.items() if word in used}
        return GenerationResult(images=pictures, seed=seed, seeds=seeds, latents=latents,
                                lora_hashes=self.lora_hashes, ti_hashes=ti_hashes, vae_name=self.vae_name,
                                vae_hash=self.vae_hash, cfg_skips=progress.cfg_skips)

    def _image_noise(self, req: GenerationRequest, shape: tuple[int, ...], seeds: list[int],
                     subseeds: list[int]) -> rng.ImageNoise:
        return rng.ImageNoise(shape, seeds, source=req.rng, subseeds=subseeds,
                              variation_strength=req.variation_strength, ensd=req.ensd)

    def _sample(self, req: GenerationRequest, sampler: str, seeds: list[int], cond, uncond,
                image_noise: rng.ImageNoise, start: tuple, init: torch.Tensor | None,
                progress: _Progress, launch: int) -> torch.Tensor:
        """One sampler run from `start` = _start()'s (sigmas, full sigmas, x, kwargs): the CFG denoiser
        (with the inpainting conditioning or blend), the step noise, the sampler. Returns the latents.
        `launch`: the steps A1111 passes to `launch_sampling` (steps; img2img and hires: t_enc + 1)."""
        sigmas, full_sigmas, x, kwargs = start
        unet, masks = self.unet, None
        if req.mask is not None or inpaint.is_inpainting_unet(self.unet):
            masks = self._inpaint_masks(req, tuple(x.shape[-2:]))
            if inpaint.is_inpainting_unet(self.unet):
                unet = inpaint.MaskedImageUNet(self.unet, masks[1], self._masked_image_latents(req, masks[0]))
        denoiser = CFGDenoiser(
            unet,
            self.model_schedule,
            cond,
            uncond,
            req.cfg_scale,
            dtype=self.dtype,
            interrupt=progress.check_cancel,
            s_min_uncond=req.s_min_uncond, s_min_uncond_all=req.s_min_uncond_all,  # NGMS, Skip Early CFG
            skip_early_cond=req.skip_early_cond, total_steps=_calls(sampler, launch),
            timestep_sampler=sampler in TIMESTEP_SAMPLERS,
        )
        if req.mask is not None and not inpaint.is_inpainting_unet(self.unet):
            denoiser = inpaint.LatentBlend(denoiser, init, masks[1].to(self.device))
        sigmas = sigmas.to(self.device)  # k-diffusion append_dims makes (1, 1, 1, 1) sigmas: on x's device
        if sampler in TAKES_NOISE:
            kwargs["noise"] = _step_noise(sampler, x, full_sigmas, seeds, req.rng, image_noise)
        latents = get_sampler(sampler)(denoiser, x, sigmas, callback=progress, **kwargs)
        progress.done += len(sigmas) - 1
        progress.cfg_skips.update(denoiser.cfg_skips)
        return latents

    def _hires_pass(self, req: GenerationRequest, sampler: str, schedule: str, seeds: list[int],
                    subseeds: list[int], latents: torch.Tensor, prompt: str, text: dict, hr: tuple[int, int],
                    progress: _Progress) -> torch.Tensor:
        """A1111 `sample_hr_pass` (engine.hires): upscale, fresh noise from the same seeds at the new shape
        (a new generator per image: its first draw), the prompt schedules for the hires steps, then an
        img2img pass of exactly the hires steps (the fix-steps rule)."""
        fix = req.hires
        up, final = fix.sizes(req.width, req.height)
        if fix.is_latent:
            latents = hires.upscale_latents(latents, fix.upscaler, up)
        else:
            decoded = self.vae.decode((latents / SCALING_FACTOR).to(self.vae_dtype),
                                      interrupt=progress.check_cancel)
            # A1111 §6.3: the posterior sampled from one CPU generator seeded with the batch's last seed
            generator = torch.Generator("cpu").manual_seed(seeds[-1])
            encoded = []
            for picture in hires.to_uint8_images(decoded):
                pixels = _image_to_tensor(hires.upscale_image(picture, up)).to(self.device, self.vae_dtype)
                encoded.append(self.vae.encode(pixels, generator=generator, interrupt=progress.check_cancel))
            latents = torch.cat(encoded).float() * SCALING_FACTOR
        latents = hires.crop_latents(latents, up, final).float()
        progress.check_cancel()
        hr_steps, t_enc = hr
        shape = tuple(latents.shape[1:])
        image_noise = self._image_noise(req, shape, seeds, subseeds)
        noise = image_noise.first().to(self.device, torch.float32)
        base, calls = _calls(sampler, req.steps), _calls(sampler, hr_steps)
        cond = self.conditioner.schedule(prompt, base, hires_steps=calls, **text)
        uncond = self.conditioner.schedule(req.negative_prompt, base, hires_steps=calls, **text)
        start = self._start(req, sampler, schedule, noise, latents, hr_steps, t_enc)
        with token_merging(self.unet, hires_ratio(req.token_merging_ratio, req.token_merging_ratio_hr)):
            return self._sample(req, sampler, seeds, cond, uncond, image_noise, start, latents, progress,
                                t_enc + 1)

    def _used_embeddings(self, texts: Sequence[str], emphasis: str) -> set[str]:
        """The embedding words these texts invoke (as the conditioner matched them: on token ids), for
        A1111's `TI hashes`, which lists only the embeddings a prompt used (textual_inversion.py)."""
        used: set[str] = set()
        for t in set(texts):
            chunks, _ = tokenize_line(t, emphasis, self.tokenizer, self.embeddings)
            used.update(name for chunk in chunks for _, name in chunk.fixes)
        return used

    @cached_property
    def model_schedule(self) -> ModelSchedule:
        return ModelSchedule.sd1()

    def _encode_init(self, req: GenerationRequest, seed: int) -> torch.Tensor:
        """The init image's latent (B, 4, h, w): the VAE posterior sampled with a generator seeded `seed`."""
        image = req.init_image
        if req.mask is not None and req.masked_content == "fill":  # A1111: filled over the blurred mask
            image = inpaint.fill(image, inpaint.blur_mask(req.mask, req.mask_blur))
        if req.decoder == "taesd":
            return self.taesd.encode(_image_to_tensor(image)).expand(req.batch_size, -1, -1, -1)
        pixels = _image_to_tensor(image).to(self.device, self.vae_dtype)
        z = self.vae.encode(pixels, generator=torch.Generator("cpu").manual_seed(seed))
        return (z.float() * SCALING_FACTOR).expand(req.batch_size, -1, -1, -1)

    def _inpaint_masks(self, req: GenerationRequest, latent_size: tuple[int, int] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel mask, latent mask), 1 = repaint; all ones without a mask (engine.inpaint), at the request's
        size or at latent_size (h, w) * 8 (the hires pass)."""
        h, w = (req.height, req.width) if latent_size is None else (latent_size[0] * 8, latent_size[1] * 8)
        pixels = inpaint.pixel_mask(req.mask, w, h)
        return pixels, inpaint.latent_mask(pixels, self.vae.config.downscale).to(self.device)

    def _masked_image_latents(self, req: GenerationRequest, mask: torch.Tensor) -> torch.Tensor:
        """The 9-channel UNet's masked-image latents (1, 4, h, w), scaled; the VAE posterior mean."""
        pixels = None if req.init_image is None else _image_to_tensor(req.init_image)
        image = inpaint.masked_image(pixels, mask).to(self.device, self.vae_dtype)
        return self.vae.encode(image).float() * SCALING_FACTOR

    # --- TAESD (engine.taesd) ------------------------------------------------------------------------------

    def set_taesd(self, taesd: str | Path | TinyAutoencoder | None) -> None:
        """Attach a tiny autoencoder (a file or folder for engine.taesd.load_taesd, or a loaded one), or detach
        it with None. Attached, its decoder makes the step previews, and requests with decoder="taesd" use it.
        Raises CheckpointError for a bad file (and keeps the one attached before)."""
        if taesd is not None and not isinstance(taesd, TinyAutoencoder):
            taesd = load_taesd(taesd, device=self.device, dtype=self.dtype)
        self.taesd = taesd

    def _taesd_has(self, part: str) -> bool:
        return self.taesd is not None and getattr(self.taesd, part) is not None

    def _check_decoder(self, req: GenerationRequest) -> None:
        if req.decoder != "taesd":
            return
        for part, needed in (("decoder", True), ("encoder", req.is_img2img)):
            if needed and not self._taesd_has(part):
                what = "no TAESD is attached" if self.taesd is None else f"the attached TAESD has no {part}"
                raise ValueError(f"decoder 'taesd' needs a tiny auto{part} but {what}: call set_taesd() with the "
                                 f"taesd_{part} file, or use decoder 'vae'")

    def _start(
        self,
        req: GenerationRequest,
        sampler: str,
        schedule: str,
        noise: torch.Tensor,
        init: torch.Tensor | None,
        steps: int | None = None,
        t_enc: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """(sigmas to run, the full schedule, x to start from, extra sampler arguments). The Brownian
        samplers' tree spans the full schedule even in img2img (A1111 create_noise_sampler).

        steps/t_enc: the full schedule's length and A1111's t_enc, given by the hires pass (fix-steps rule);
        by default req.steps and int(min(strength, 0.999) * steps) (A1111 img2img, fix-steps off).
        """
        steps = req.steps if steps is None else steps
        if init is not None and t_enc is None:
            t_enc = int(min(req.strength, 0.999) * steps)
        if sampler == "unipc":
            return self._start_unipc(steps, noise, init, t_enc)
        if sampler in TIMESTEP_SAMPLERS:
            grid = TIMESTEPS[sampler](steps)[::-1]  # descending training timesteps
            sigmas = self.model_schedule.sigmas[grid]
            if sampler in ENDS_AT_ZERO:
                sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])  # the last step goes to the clean sample
            if init is None:
                return sigmas, sigmas, noise, {}  # variance-preserving scale: unit noise
            if sampler == "ddim":
                # A1111 sd_samplers_timesteps.sample_img2img: timesteps[:t_enc], noised at timesteps[t_enc]
                start, t_noise = len(grid) - t_enc, grid[::-1][t_enc]
            else:
                # DDPM (as the seed project ran it), LCM, TCD: diffusers' img2img start index, noised there
                start = steps - min(int(steps * req.strength), steps) if req.hires is None else steps - t_enc - 1
                t_noise = grid[start]
            alpha = self.model_schedule.alphas_cumprod[t_noise].item()
            return sigmas[start:], sigmas, alpha**0.5 * init + (1 - alpha) ** 0.5 * noise, {}
        sigmas = schedule_sigmas(schedule, steps, discard_penultimate=sampler in DISCARD_PENULTIMATE)
        if init is None:
            return sigmas, sigmas, noise * sigmas[0], {}
        # A1111 setup_img2img_steps / sample_img2img: t_enc + 1 sampler steps
        run = sigmas[steps - t_enc - 1 :]
        return run, sigmas, init + noise * run[0], {}

    def _start_unipc(self, steps: int, noise: torch.Tensor, init: torch.Tensor | None, t_enc: int | None):
        """A1111 sd_samplers_timesteps_impl.unipc: the DDIM grid's length, time-uniform from t = 999 down; in
        img2img the first t_enc DDIM timesteps, starting at the last of them, noised at timesteps[t_enc]."""
        ddim_grid = TIMESTEPS["ddim"](steps)
        alphas_cumprod = self.model_schedule.alphas_cumprod
        if init is None:
            sigmas, times = unipc.grid(len(ddim_grid), alphas_cumprod)
            return sigmas, sigmas, noise, {"timesteps": times}
        sigmas, times = unipc.grid(t_enc, alphas_cumprod, t_max=float(ddim_grid[t_enc - 1]))
        alpha = alphas_cumprod[ddim_grid[t_enc]].item()
        return sigmas, sigmas, alpha**0.5 * init + (1 - alpha) ** 0.5 * noise, {"timesteps": times}

    # --- networks: LoRAs, embeddings, an external VAE (engine/lora.py, embeddings.py, vae_file.py) ---

    @cached_property
    def _networks(self) -> _Networks:
        return _Networks(loras=LoraSet(self.models), own_vae=self.vae)

    @property
    def embeddings(self) -> dict[str, torch.Tensor]:
        """word -> (n, width) input-embedding vectors (text encoder dtype and device), for the conditioner."""
        return self._networks.embeddings

    @property
    def embedding_hashes(self) -> dict[str, str]:
        """word -> A1111's `TI hashes` entry (sha256[:12] of the file)."""
        return {word: e.hash for word, e in self._networks.embedding_files.items()}

    def add_embedding(self, path: str | Path, token: str | None = None) -> str:
        """Load a textual-inversion file; returns the word that invokes it (the file stem unless `token`).

        Raises CheckpointError for unreadable or foreign files (SDXL, another text encoder width) and
        ValueError for an empty token; nothing is added then.
        """
        embedding = load_embedding(path)
        word = embedding.name if token is None else token
        if not word.strip() or word != word.strip():  # inner spaces are fine: matched on token ids (A1111)
            raise ValueError(f"an embedding's word must be non-empty, without surrounding spaces, got {word!r}")
        width = self.text_encoder.text_model.embeddings.token_embedding.weight.shape[1]
        check_width(embedding, width)
        dtype = self.text_encoder.text_model.embeddings.token_embedding.weight.dtype
        self._networks.embeddings[word] = embedding.vectors.to(self.device, dtype)
        self._networks.embedding_files[word] = embedding
        return word

    def set_loras(self, loras: Sequence[LoraSpec]) -> None:
        """Merge exactly these LoRAs, `(path, weight)` or `(path, te_weight, unet_weight)`, into the weights.

        A no-op when the list (and the files) are unchanged; otherwise the previous LoRAs are taken out
        (original weights restored bit-for-bit) and these merged. Every file is read before anything changes,
        so a bad file (CheckpointError) leaves the current LoRAs in place.
        """
        specs = normalize_specs(loras)
        key = tuple((_file_key(p), te, unet) for p, te, unet in specs)
        state = self._networks
        if key == state.lora_key:
            return
        files = [(read_lora(p, self.models), te, unet) for p, te, unet in specs]
        state.loras.restore()
        state.lora_key = ()
        state.loras.apply(files)
        state.lora_key = key
        log.info("LoRAs now: %s", ", ".join(f"{f.name}:{te}:{unet}" for f, te, unet in files) or "none")

    @property
    def lora_hashes(self) -> dict[str, str]:
        """name -> A1111's `Lora hashes` entry for each merged LoRA file."""
        state = self._networks
        for lora, _, _ in state.loras.loras:
            if lora.path not in state.hash_cache:
                state.hash_cache[lora.path] = lora_hash(lora.path)
        return {lora.name: state.hash_cache[lora.path] for lora, _, _ in state.loras.loras}

    def set_vae(self, path: str | Path | None) -> None:
        """Use an external VAE file in place of the checkpoint's own; None goes back to the checkpoint's.

        The checkpoint's VAE is kept, so going back costs nothing. Raises CheckpointError for a bad file;
        the current VAE stays then.
        """
        state = self._networks
        if path is None:
            vae, state.vae_path, state.vae_hash = state.own_vae, None, None
        else:
            path = Path(path)
            if state.vae_path is not None and _file_key(path) == _file_key(state.vae_path):
                return
            vae = load_vae(path, self.device, self.vae_dtype)
            state.vae_path, state.vae_hash = path, vae_hash(path)
        self.vae = self.models.vae = vae

    @property
    def vae_name(self) -> str | None:
        """The external VAE's file name (A1111's `VAE`), or None when the checkpoint's own is in use."""
        path = self._networks.vae_path
        return None if path is None else path.name

    @property
    def vae_hash(self) -> str | None:
        """A1111's `VAE hash` (sha256[:10]) of the external VAE file, or None."""
        return self._networks.vae_hash


def _calls(sampler: str, steps: int) -> int:
    """Denoiser calls the prompt schedules count for `steps` (A1111 SamplerData.total_steps)."""
    return 2 * steps if sampler in SECOND_ORDER else steps


class _Progress:
    """The samplers' step callback: checks for cancel, reports StepEvents numbered over all passes."""

    def __init__(self, on_step: StepCallback | None, started: float, total: int, check_cancel: Callable[[], None],
                 previewer: StepPreviewer | None = None):
        self.on_step, self.started, self.total, self.check_cancel = on_step, started, total, check_cancel
        self.previewer = previewer  # TAESD previews of the x0 estimate; None: the latent colour map
        self.done = 0  # steps of the passes already finished
        self.last_preview = True  # False: no TAESD preview of the last step (the tiny final decode follows)
        self.cfg_skips: dict[str, float | bool] = {}  # the passes' CFGDenoiser.cfg_skips, for the result

    def __call__(self, d: dict) -> None:
        self.check_cancel()
        if self.on_step is not None:
            step = self.done + d["i"] + 1
            if self.previewer is None:
                preview = latent_preview(d["denoised"][0])
            else:
                preview = self.previewer(d["denoised"]) if self.last_preview or step < self.total else None
            self.on_step(StepEvent(step=step, total=self.total, elapsed=time.perf_counter() - self.started,
                                   preview=preview))


@dataclass
class _Networks:
    """What a Pipeline has added to its checkpoint: merged LoRAs, embeddings, an external VAE."""

    loras: LoraSet
    own_vae: torch.nn.Module
    lora_key: tuple = ()
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    embedding_files: dict[str, Embedding] = field(default_factory=dict)
    vae_path: Path | None = None
    vae_hash: str | None = None
    hash_cache: dict[Path, str] = field(default_factory=dict)


def _file_key(path: Path) -> tuple:
    """A file's identity for "unchanged?" checks: resolved path, size and modification time."""
    try:
        st = path.stat()
    except OSError:
        return (str(path),)
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)
