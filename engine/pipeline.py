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

import hashlib
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

from engine.checkpoint import load_models
from engine.devices import resolve_device, resolve_dtype
from engine.embeddings import Embedding, check_width, load_embedding
from engine.errors import Cancelled, CheckpointError
from engine.hashes import lora_hash, vae_hash
from engine.lora import LoraSet, LoraSpec, normalize_specs, read_lora
from engine.preview import latent_preview
from engine.request import GenerationRequest, GenerationResult, StepEvent
from engine.samplers import make_sampler
from engine.tokenizer import Tokenizer
from engine.vae import SCALING_FACTOR
from engine.vae_file import load_vae

log = logging.getLogger(__name__)

StepCallback = Callable[[StepEvent], None]


def load_pipeline(path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                  vae: str | Path | None = None) -> Pipeline:
    """Load an SD1.x checkpoint (.ckpt or .safetensors), with an external VAE file in place of its own if `vae`
    is given. Raises CheckpointError, or ValueError for bad options."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    if vae is not None and not Path(vae).is_file():  # before the seconds of loading the model
        raise CheckpointError(f"no VAE file at {vae}")
    dev = resolve_device(device)
    model_dtype, vae_dtype = resolve_dtype(dtype, dev)
    started = time.perf_counter()
    models = load_models(path, device=dev, dtype=model_dtype, vae_dtype=vae_dtype)
    log.info("loaded %s on %s (%s) in %.1f s", path.name, dev, model_dtype, time.perf_counter() - started)
    pipe = Pipeline(models, Tokenizer(), dev, model_dtype, vae_dtype, path)
    if vae is not None:
        pipe.set_vae(vae)
    return pipe


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
                 vae_dtype: torch.dtype, path: Path):
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
        images = self.vae.decode((latents / SCALING_FACTOR).to(self.vae_dtype))
        check_cancel()
        log.info("generated %d image(s) in %.1f s", req.batch_size, time.perf_counter() - started)
        return GenerationResult(images=_tensor_to_images(images), seed=seed, seeds=seeds, latents=latents)

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
