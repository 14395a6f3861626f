"""Background work: the engine on a long-lived QThread, and asyncio tasks for I/O on the app's qasync loop.

Threads (superqt's worker recipe): :class:`GenerationWorker` is a plain QObject moved to a QThread. The GUI
side talks to it only through queued signals (load a model, run a job) and a ``threading.Event`` per job for
cancel. The worker answers with signals carrying plain data (dicts, lists of paths, QImages built from the
engine's numpy previews); those are connected only to methods of :class:`WorkerHost`, a GUI-thread QObject
that keeps the state (model loading/ready/failed, busy) and re-emits for the widgets.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image
from PySide6.QtCore import QObject, QThread, Signal, Slot
from PySide6.QtWidgets import QApplication

import engine

from . import editing, history, networks, sd_upscale
from .fileio import atomic_write_bytes, describe_write_error
from .metadata import ImageParams, png_bytes, read_params
from .tokens import count_tokens, warm_up_tokenizer  # noqa: F401 - count_tokens: the old home, kept

log = logging.getLogger(__name__)
T = TypeVar("T")

OOM_HINT = "Try a smaller image size or fewer images at once."
HASH_WAIT_S = 5.0  # how long a finished image waits for the model hash still being computed (then: left out)


# Values GenerationParams.from_dict accepts for its choice fields (anything else keeps the default).
RNG_CHOICES = ("cpu", "nv")
EMPHASIS_CHOICES = ("original", "no_norm", "ignore", "none", "comfy")  # engine.request.EMPHASIS_MODES


@dataclass
class GenerationParams:
    """What the widgets describe: everything needed for one Generate click (widgets -> this -> worker).

    ``schedule`` is an ``engine.SCHEDULE_NAMES`` entry ("automatic": the sampler's A1111 default). ``rng``,
    ``ensd`` and ``emphasis`` come from the Settings; the rest from the side panel. A variation
    (``variation_strength`` > 0) keeps the seed for every image of a batch and counts the variation seed up
    instead, as A1111 does; ``variation_seed`` None there means a random one, chosen when the job runs.
    """

    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = "dpmpp_2m"
    steps: int = 25
    cfg_scale: float = 7.5
    seed: int | None = None  # None: a random seed, chosen by the engine
    width: int = 512
    height: int = 512
    batch_count: int = 1  # images made one after another with seed, seed + 1, ...
    init_image: Any = None  # PIL image for img2img (already fitted to width x height), or None
    strength: float = 0.75
    schedule: str = "automatic"
    clip_skip: int = 1
    variation_seed: int | None = None
    variation_strength: float = 0.0
    rng: str = "cpu"
    ensd: int = 0
    emphasis: str = "original"
    # A1111's uncond skips "Skip Early CFG", "NGMS", "NGMS all steps", from the Settings (engine.denoiser)
    skip_early_cond: float = 0.0
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    # networks, resolved from the prompt and Settings by inkpunk_studio.networks (not saved with the params)
    loras: tuple = ()  # GenerationRequest.loras entries: (path, te_weight, unet_weight)
    embeddings: tuple = ()  # embedding files to have loaded (their words appear in the prompts)
    vae: str = ""  # an external VAE file, "" for the checkpoint's own
    # inpainting (the canvas's mask mode, inkpunk_studio.widgets.mask_editor): PIL "L" of width x height,
    # white = repaint, with init_image; saved beside the image as name.mask.png (not with the params)
    mask: Any = None
    mask_blur: int = 4
    masked_content: str = "original"  # editing.MASKED_CONTENT
    # A1111's "Inpaint area: Only masked": init_image and mask stay the canvas's; the request works on their
    # crop around the mask (+ mask_padding) at width x height and the result is pasted back (editing.py)
    only_masked: bool = False
    mask_padding: int = 32
    # A1111's hires fix (txt2img only; the side panel's HiresSection -> editing.hires_fix -> request.hires)
    hires: bool = False
    hires_scale: float = 2.0
    hires_width: int = 0  # "Resize to" (A1111's Hires resize); 0 x 0: the scale
    hires_height: int = 0
    hires_steps: int = 0  # 0: the first pass's steps
    hires_denoise: float = 0.7
    hires_upscaler: str = "Latent"
    # fast mode and the tiny autoencoder (inkpunk_studio.fast_mode; not saved with the params either)
    decoder: str = "vae"  # GenerationRequest.decoder: "vae" or "taesd"
    taesd: str = ""  # a TAESD file or folder to attach (previews that look like the picture), "" for none
    # A1111's token merging (engine.tome), from the Settings; _hr 0: the hires pass uses token_merging_ratio
    token_merging_ratio: float = 0.0
    token_merging_ratio_hr: float = 0.0

    _PLAIN = ("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "seed", "width", "height",
              "batch_count", "strength", "schedule", "clip_skip", "variation_seed", "variation_strength", "rng",
              "ensd", "emphasis", "hires", "hires_scale", "hires_steps", "hires_denoise", "hires_upscaler",
              "only_masked", "mask_padding", "skip_early_cond", "s_min_uncond", "s_min_uncond_all")
    _PLAIN += ("token_merging_ratio", "token_merging_ratio_hr", "hires_width", "hires_height")
    _OPTIONAL_INTS = ("seed", "variation_seed")

    @property
    def uses_variation(self) -> bool:
        return bool(self.variation_strength)

    def image_seeds(self, base_seed: int | None, index: int) -> tuple[int | None, int | None]:
        """(seed, variation seed) of image ``index`` of the batch (A1111 ``process_images_inner``): seed + index,
        or with a variation the same seed and variation seed + index. A None seed stays None (random)."""
        if self.uses_variation:
            if self.variation_seed is None:
                raise ValueError("a variation strength needs a variation seed")
            return base_seed, self.variation_seed + index
        return None if base_seed is None else base_seed + index, self.variation_seed

    def request(self, seed: int | None, variation_seed: int | None = None) -> engine.GenerationRequest:
        """The engine request for one image of the batch (raises ValueError for bad values).
        ``variation_seed`` defaults to the params' own. With ``uses_only_masked`` the request inpaints the
        crop of ``inpaint_crop()``; ``paste_back`` puts its image back into the canvas."""
        init_image, mask, mask_blur = self.init_image, self.mask, self.mask_blur
        if self.uses_only_masked:
            init_image, mask, _ = self.inpaint_crop()
            mask_blur = 0  # the crop's mask is already blurred (A1111 blurs before cropping)
        return engine.GenerationRequest(
            prompt=self.prompt, negative_prompt=self.negative_prompt, steps=self.steps, cfg_scale=self.cfg_scale,
            width=self.width, height=self.height, seed=seed, sampler=self.sampler, batch_size=1,
            init_image=init_image, strength=self.strength, schedule=self.schedule, rng=self.rng,
            clip_skip=self.clip_skip, emphasis=self.emphasis,
            variation_seed=self.variation_seed if variation_seed is None else variation_seed,
            variation_strength=self.variation_strength, ensd=self.ensd, loras=self.loras,
            decoder=self.decoder, mask=mask, mask_blur=mask_blur,
            skip_early_cond=self.skip_early_cond, s_min_uncond=self.s_min_uncond,
            s_min_uncond_all=self.s_min_uncond_all,
            token_merging_ratio=self.token_merging_ratio, token_merging_ratio_hr=self.token_merging_ratio_hr,
            **self._hires_request(), **self._masked_content_request())

    @property
    def uses_only_masked(self) -> bool:
        """Inpainting with "Only masked" on (without a mask or init image the option means nothing)."""
        return self.only_masked and self.mask is not None and self.init_image is not None

    def inpaint_crop(self) -> tuple[Any, Any, tuple[int, int, int, int]]:
        """(image, blurred mask, box): the canvas around the mask at width x height (editing.only_masked_crop)."""
        return editing.only_masked_crop(self.init_image, self.mask, self.width, self.height, self.mask_blur,
                                        self.mask_padding)

    def paste_back(self, image: Any) -> Any:
        """A generated crop put back into the full canvas image (unchanged when not ``uses_only_masked``)."""
        if not self.uses_only_masked:
            return image
        return editing.only_masked_paste(image, self.init_image, self.mask, self.mask_blur, self.mask_padding,
                                         self.width, self.height)

    def hires_values(self) -> dict[str, Any]:
        """The hires fix fields, as ParamsPanel.set_values takes them."""
        return {name: getattr(self, name) for name in ("hires", "hires_scale", "hires_width", "hires_height",
                                                       "hires_steps", "hires_denoise", "hires_upscaler")}

    @property
    def uses_hires(self) -> bool:
        """Hires fix on and applicable: A1111 runs it for txt2img only (an init image turns it off)."""
        return self.hires and self.init_image is None

    @property
    def output_size(self) -> tuple[int, int]:
        """The saved images' width and height: the hires pass's final size when it runs."""
        if not self.uses_hires:
            return self.width, self.height
        return self._hires_request()["hires"].sizes(self.width, self.height)[1]

    @property
    def output_steps(self) -> int:
        """The steps run at output_size: the hires pass's when it runs (0 there means the first pass's)."""
        return (self.hires_steps or self.steps) if self.uses_hires else self.steps

    def _masked_content_request(self) -> dict[str, Any]:
        return editing.masked_content_request(self.masked_content) if self.mask is not None else {}

    def _hires_request(self) -> dict[str, Any]:
        if not self.uses_hires:
            return {}
        return {"hires": editing.hires_fix(self.hires_scale, self.hires_steps, self.hires_denoise,
                                          self.hires_upscaler, self.hires_width, self.hires_height)}

    def image_params(self, seed: int, model_name: str = "", model_hash: str = "",
                     variation_seed: int | None = None) -> ImageParams:
        """Metadata for a saved image made with ``seed`` (and ``variation_seed``, default the params' own).
        The schedule recorded is the one used: "automatic" resolved for the sampler, as A1111's ``get_sigmas``
        writes its resolved label, so the text says "Schedule type: Karras" for DPM++ 2M."""
        vseed = self.variation_seed if variation_seed is None else variation_seed
        strength = self.strength if self.init_image is not None else None
        extra = {}
        if self.uses_hires:  # A1111 writes the hires pass's denoise as "Denoising strength"
            strength = self.hires_denoise
            extra = editing.hires_infotext(self.hires_scale, self.hires_steps, self.hires_upscaler,
                                           self.hires_width, self.hires_height)
        if self.mask is not None and self.init_image is not None:  # A1111 StableDiffusionProcessingImg2Img.init
            extra = editing.inpaint_infotext(self.mask_blur, self.masked_content,
                                             self.mask_padding if self.only_masked else None)
        return ImageParams(prompt=self.prompt, negative_prompt=self.negative_prompt, steps=self.steps,
                           sampler=self.sampler, cfg_scale=self.cfg_scale, seed=seed, width=self.width,
                           height=self.height, model_name=model_name, model_hash=model_hash,
                           strength=strength, extra=extra,
                           schedule=engine.resolve_sampler(self.sampler, self.schedule)[1], clip_skip=self.clip_skip, rng=self.rng, ensd=self.ensd,
                           emphasis=self.emphasis,
                           variation_seed=vseed if self.uses_variation else None,
                           variation_strength=float(self.variation_strength) if self.uses_variation else 0.0,
                           **self._token_merging_infotext())

    def _token_merging_infotext(self) -> dict[str, float]:
        """A1111 create_infotext: the first pass's ratio, and with a hires pass the ratio it ran with (its own,
        else the first pass's: get_token_merging_ratio(for_hr=True)); each written only when not 0."""
        hr = (self.token_merging_ratio_hr or self.token_merging_ratio) if self.uses_hires else 0.0
        return {"token_merging_ratio": self.token_merging_ratio, "token_merging_ratio_hr": hr}

    def to_dict(self) -> dict[str, Any]:
        """Plain values (no init image) for QSettings."""
        return {name: getattr(self, name) for name in self._PLAIN}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationParams:
        """Inverse of to_dict; keys of the wrong type or with unknown names are ignored (defaults stay). An old
        combined sampler name ("dpmpp_2m_karras", saved before issue 12) becomes its sampler and schedule."""
        params = cls()
        for name in cls._PLAIN:
            if name not in data:
                continue
            value, default = data[name], getattr(params, name)
            if name in cls._OPTIONAL_INTS:
                if value is None or (isinstance(value, int) and not isinstance(value, bool)):
                    setattr(params, name, value)
            elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(params, name, float(value))
            elif type(value) is type(default):
                setattr(params, name, value)
        params._drop_unknown_names()
        return params

    def _drop_unknown_names(self) -> None:
        defaults = GenerationParams()
        if self.sampler in engine.LEGACY_NAMES:
            base, implied = engine.LEGACY_NAMES[self.sampler]
            self.sampler = base
            if self.schedule == "automatic":
                self.schedule = implied
        for name, choices in (("sampler", engine.SAMPLERS), ("schedule", engine.SCHEDULE_NAMES),
                              ("rng", RNG_CHOICES), ("emphasis", EMPHASIS_CHOICES),
                              ("hires_upscaler", editing.hires_upscalers())):
            if getattr(self, name) not in choices:
                setattr(self, name, getattr(defaults, name))


@dataclass
class GenerationJob:
    """One Generate click: parameters plus where to save, and its own cancel flag."""

    params: GenerationParams
    output_dir: Path
    preview: bool = True
    cancel: threading.Event = field(default_factory=threading.Event)
    # set: instead of generating, refine this saved image's upscale tile by tile (SD upscale) with params
    # (its own prompt, seed, sampler...) and save it beside the image
    sd_upscale: sd_upscale.SdUpscale | None = None


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _free_accelerator_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # best effort only
        log.debug("could not empty the CUDA cache", exc_info=True)


class GenerationWorker(QObject):
    """Lives on the worker thread; owns the pipeline. Slots run there, one at a time."""

    modelLoaded = Signal(dict)  # {"path", "name", "device", "dtype"}
    modelFailed = Signal(str, str)  # path, user-facing message
    progress = Signal(dict)  # {"step", "total", "elapsed", "sec_per_step", "eta", "index", "count", "preview"}
    imageSaved = Signal(dict)  # {"path", "seed", "index", "count", "image": QImage, "params": ImageParams}
    # an image that could not be written: the same keys with path "", plus "png" (bytes with metadata),
    # "name" (the file name it would have had) and "error" (what went wrong, for the person)
    imageUnsaved = Signal(dict)
    finished = Signal(list)  # saved paths (str)
    cancelled = Signal(list)  # paths saved before the cancel (earlier images of a batch)
    failed = Signal(str)  # user-facing message

    def __init__(self) -> None:
        super().__init__()
        self._pipe: Any = None
        self._taesd = ""  # the TAESD file/folder attached to the pipeline

    @Slot(str, str, str)
    def load_model(self, path: str, device: str, dtype: str) -> None:
        self._pipe = None  # free the old model before reading a new one
        self._taesd = ""
        _free_accelerator_memory()
        try:
            warm_up_tokenizer()
            pipe = engine.load_pipeline(path, device=device, dtype=dtype)
        except engine.CheckpointError as exc:
            self.modelFailed.emit(path, str(exc))
            return
        except Exception as exc:  # OSError, bad device options, out of memory...
            log.exception("loading %s failed", path)
            hint = f"\n\n{OOM_HINT}" if _is_out_of_memory(exc) else ""
            self.modelFailed.emit(path, f"{type(exc).__name__}: {exc}{hint}")
            return
        self._pipe = pipe
        dtype_name = str(pipe.dtype).replace("torch.", "")
        self.modelLoaded.emit({"path": path, "name": pipe.model_name, "device": str(pipe.device),
                               "dtype": dtype_name})

    @Slot(object)
    def generate(self, job: GenerationJob) -> None:
        if job.cancel.is_set():  # cancelled while queued behind a model load
            self.cancelled.emit([])
            return
        if self._pipe is None:
            self.failed.emit("No model is loaded. Choose a checkpoint (File ▸ Open Checkpoint…).")
            return
        saved: list[str] = []
        try:
            self._run(job, saved)
        except engine.Cancelled:
            self.cancelled.emit(saved)
            return
        except (ValueError, engine.CheckpointError) as exc:  # request validation; a bad LoRA/VAE file
            self.failed.emit(str(exc))
            return
        except Exception as exc:
            log.exception("generation failed")
            _free_accelerator_memory()
            hint = OOM_HINT if _is_out_of_memory(exc) or isinstance(exc, RuntimeError) else ""
            what = "Out of memory." if _is_out_of_memory(exc) else f"{type(exc).__name__}: {exc}"
            self.failed.emit(f"{what}\n\n{hint}".strip())
            return
        self.finished.emit(saved)

    def _run(self, job: GenerationJob, saved: list[str]) -> None:
        if job.sd_upscale is not None:
            self._run_sd_upscale(job, saved)
            return
        p = job.params
        if p.uses_variation and p.variation_seed is None:  # "Random" variation seed: one per click, as A1111
            p = replace(p, variation_seed=random.randrange(2**32))
        started = time.perf_counter()
        base_seed = p.seed
        networks.prepare_pipeline(self._pipe, p.embeddings, p.vae or None)
        if p.taesd != self._taesd:  # attach (or detach) the tiny autoencoder once, not per job
            self._pipe.set_taesd(p.taesd or None)
            self._taesd = p.taesd
        for index in range(p.batch_count):
            seed, variation_seed = p.image_seeds(base_seed, index)
            request = p.request(seed, variation_seed)

            def on_step(event: Any, index: int = index) -> None:
                self._emit_progress(job, event, index, started)

            result = self._pipe.generate(request, on_step=on_step, cancel=job.cancel)
            if p.uses_only_masked:  # the generated crop back into the whole canvas, over the feathered mask
                result = replace(result, images=[p.paste_back(image) for image in result.images])
            if base_seed is None:  # the engine picked a random seed: the rest of the batch follows it
                base_seed = result.seed if p.uses_variation else result.seed - index
            if job.cancel.is_set():  # cancelled during the last step: save nothing more
                raise engine.Cancelled("generation cancelled")
            self._keep(job, result, index, saved, variation_seed if p.uses_variation else None)

    def _run_sd_upscale(self, job: GenerationJob, saved: list[str]) -> None:
        """The SD upscale job: Lanczos, tiled img2img (sd_upscale.refine), saved beside the source with its
        parameters; progress counts the steps of all tiles. OSError (unreadable source, unwritable folder)
        reaches the person as a failure, as a bad request does."""
        spec, p = job.sd_upscale, job.params
        networks.prepare_pipeline(self._pipe, p.embeddings, p.vae or None)
        if p.taesd != self._taesd:
            self._pipe.set_taesd(p.taesd or None)
            self._taesd = p.taesd
        try:
            with Image.open(spec.source) as opened:
                big = editing.upscale(opened.convert("RGB"), spec.factor)
        except OSError as exc:
            raise ValueError(f"Could not read {Path(spec.source).name}: {exc}") from exc
        request = p.request(p.seed if p.seed is not None else random.randrange(2**32))
        count = len(sd_upscale.split_tiles(big.width, big.height, spec.tile, spec.overlap))
        started = time.perf_counter()

        def on_step(index: int, event: Any) -> None:
            done, total = index * event.total + event.step, event.total * count
            elapsed = time.perf_counter() - started
            rate = elapsed / max(done, 1)
            preview = history.to_qimage(event.preview) if job.preview and event.preview is not None else None
            self.progress.emit({"step": done, "total": total, "elapsed": elapsed, "sec_per_step": rate,
                                "eta": rate * (total - done), "index": index, "count": count,
                                "preview": preview})

        image = sd_upscale.refine(self._pipe, big, request, spec.strength, tile=spec.tile,
                                  overlap=spec.overlap, on_step=on_step, cancel=job.cancel)
        if job.cancel.is_set():
            raise engine.Cancelled("generation cancelled")
        try:
            path = sd_upscale.save_beside(image, spec.source, spec.factor)
        except OSError as exc:
            raise ValueError(describe_write_error(exc, Path(spec.source).parent)) from exc
        saved.append(str(path))
        self.imageSaved.emit({"path": str(path), "seed": request.seed, "index": 0, "count": 1,
                              "image": history.to_qimage(image), "params": read_params(path),
                              "variation_seed": None})

    def _metadata(self, params: GenerationParams, result: Any, variation_seed: int | None) -> ImageParams:
        """The image's parameters, with the LoRAs/embeddings/VAE it used; the model hash only if known within
        HASH_WAIT_S (it never costs an image)."""
        try:
            model_hash = self._pipe.wait_model_hash(HASH_WAIT_S)
        except Exception:
            log.exception("no model hash for the image's metadata")
            model_hash = ""
        meta = params.image_params(result.seed, self._pipe.model_name, model_hash, variation_seed)
        networks.record_networks(meta, result)
        meta.set_cfg_skips(getattr(result, "cfg_skips", {}))  # NGMS / Skip Early CFG, only if they skipped
        return meta

    def _keep(self, job: GenerationJob, result: Any, index: int, saved: list[str],
              variation_seed: int | None = None) -> None:
        """Save a finished image; if that fails, hand it to the GUI in memory (imageUnsaved) instead."""
        image, seed = result.images[0], result.seed
        meta = self._metadata(job.params, result, variation_seed)
        try:
            data = png_bytes(image, meta)
        except Exception:  # metadata that PNG text can't hold must not cost the image
            log.exception("could not write the parameters into the PNG; saving the image without them")
            data = png_bytes(image, None)
        info = {"seed": seed, "index": index, "count": job.params.batch_count, "image": history.to_qimage(image),
                "params": meta, "variation_seed": variation_seed}
        try:
            path = history.new_output_path(job.output_dir, seed)
            atomic_write_bytes(path, data)
        except OSError as exc:
            log.warning("could not save the image into %s: %s", job.output_dir, exc)
            self.imageUnsaved.emit({**info, "path": "", "png": data, "name": history.output_name(seed),
                                    "error": describe_write_error(exc, job.output_dir)})
            return
        saved.append(str(path))
        if job.params.mask is not None:  # kept beside the image, so showing or restoring it brings it back
            try:
                editing.save_mask(job.params.mask, path)
            except OSError as exc:
                log.warning("could not save the mask beside %s: %s", path, exc)
        self.imageSaved.emit({**info, "path": str(path)})

    def _emit_progress(self, job: GenerationJob, event: Any, index: int, started: float) -> None:
        count = job.params.batch_count
        done = index * event.total + event.step
        total = event.total * count
        elapsed = time.perf_counter() - started
        sec_per_step = elapsed / max(done, 1)
        preview = None
        if job.preview and event.preview is not None:
            preview = history.to_qimage(event.preview)
        self.progress.emit({"step": done, "total": total, "elapsed": elapsed, "sec_per_step": sec_per_step,
                            "eta": sec_per_step * (total - done), "index": index, "count": count,
                            "preview": preview})


class _Running:
    """What must outlive the host until the thread is stopped: the thread, the worker, the current job."""

    def __init__(self, thread: QThread, worker: GenerationWorker) -> None:
        self.thread = thread
        self.worker = worker
        self.job: GenerationJob | None = None

    def stop(self) -> None:
        """Cancel the job, end the thread's loop and wait for it (the job stops within a step)."""
        if self.job is not None:
            self.job.cancel.set()
        try:
            if self.thread.isRunning():
                self.thread.quit()
                self.thread.wait()
        except RuntimeError:  # the C++ thread is already gone (interpreter teardown)
            pass


class WorkerHost(QObject):
    """GUI-thread owner of the worker thread; the single place that knows the model and job state.

    ``state`` is one of "none" (no checkpoint), "loading", "ready", "failed". ``busy`` is True from a
    generate() call until finished/cancelled/failed arrives.
    """

    stateChanged = Signal(str, str)  # state, message for the status bar
    modelReady = Signal(dict)
    modelFailed = Signal(str, str)  # path, message
    busyChanged = Signal(bool)
    progress = Signal(dict)
    imageSaved = Signal(dict)
    imageUnsaved = Signal(dict)
    finished = Signal(list)
    cancelled = Signal(list)
    failed = Signal(str)

    _requestLoad = Signal(str, str, str)
    _requestGenerate = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = "none"
        self.model_info: dict = {}
        self.busy = False
        self._thread = QThread()
        self._thread.setObjectName("InkpunkWorkerThread")
        self._worker = GenerationWorker()
        self._worker.moveToThread(self._thread)
        self._running = _Running(self._thread, self._worker)
        # shutdown() runs this once; so does garbage collection of a host nobody shut down, and interpreter
        # exit: a QThread destroyed while running aborts the process.
        self._stop = weakref.finalize(self, _Running.stop, self._running)
        self._requestLoad.connect(self._worker.load_model)
        self._requestGenerate.connect(self._worker.generate)
        self._worker.modelLoaded.connect(self._on_model_loaded)
        self._worker.modelFailed.connect(self._on_model_failed)
        self._worker.progress.connect(self._on_progress)
        self._worker.imageSaved.connect(self._on_image_saved)
        self._worker.imageUnsaved.connect(self._on_image_unsaved)
        self._worker.finished.connect(self._on_finished)
        self._worker.cancelled.connect(self._on_cancelled)
        self._worker.failed.connect(self._on_failed)
        self._thread.start()

    # --- requests from the GUI
    def load_model(self, path: str | Path, device: str = "auto", dtype: str = "auto") -> None:
        self._set_state("loading", f"Loading model {Path(path).name}…")
        self._requestLoad.emit(str(path), device, dtype)

    def model_usable(self) -> bool:
        """A model is ready or loading (a job handed over now waits behind the load)."""
        return self.state in ("loading", "ready")

    def can_generate(self) -> bool:
        """One job at a time: the window's queue hands over the next when this one ends."""
        return not self.busy and self.model_usable()

    def generate(self, job: GenerationJob) -> bool:
        """Queue a job (it waits behind a model that is still loading). False if it can't run now."""
        if not self.can_generate() or not self._thread.isRunning():
            return False
        self._running.job = job
        self._set_busy(True)
        self._requestGenerate.emit(job)
        return True

    def cancel(self) -> None:
        if self._running.job is not None:
            self._running.job.cancel.set()

    def shutdown(self) -> None:
        """Cancel any job, stop the thread and wait for it. Safe to call twice."""
        self._stop()

    def is_running(self) -> bool:
        return self._thread.isRunning()

    # --- slots for the worker's signals (run on the GUI thread)
    @Slot(dict)
    def _on_model_loaded(self, info: dict) -> None:
        self.model_info = info
        self._set_state("ready", f"Model ready: {info['name']} ({info['device']}, {info['dtype']})")
        self.modelReady.emit(info)

    @Slot(str, str)
    def _on_model_failed(self, path: str, message: str) -> None:
        self.model_info = {}
        self._set_state("failed", f"Could not load {Path(path).name}")
        self.modelFailed.emit(path, message)

    @Slot(dict)
    def _on_progress(self, info: dict) -> None:
        self.progress.emit(info)

    @Slot(dict)
    def _on_image_saved(self, info: dict) -> None:
        self.imageSaved.emit(info)

    @Slot(dict)
    def _on_image_unsaved(self, info: dict) -> None:
        self.imageUnsaved.emit(info)

    @Slot(list)
    def _on_finished(self, paths: list) -> None:
        self._end_job()
        self.finished.emit(paths)

    @Slot(list)
    def _on_cancelled(self, paths: list) -> None:
        self._end_job()
        self.cancelled.emit(paths)

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self._end_job()
        self.failed.emit(message)

    def _end_job(self) -> None:
        self._running.job = None
        self._set_busy(False)

    def _set_state(self, state: str, message: str) -> None:
        self.state = state
        self.stateChanged.emit(state, message)

    def _set_busy(self, busy: bool) -> None:
        if busy != self.busy:
            self.busy = busy
            self.busyChanged.emit(busy)


# ---------------------------------------------------------------- asyncio side

_app_loop: asyncio.AbstractEventLoop | None = None


def set_app_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Register the app's qasync loop (app.main does this before building windows)."""
    global _app_loop
    _app_loop = loop


def app_loop() -> asyncio.AbstractEventLoop:
    """The qasync loop that I/O coroutines run on.

    In the app that is the loop main() runs. When a window is built inside an existing QApplication without
    one (tests, embedding), a qasync loop is created on first use: its callbacks run whenever Qt processes
    events (qtbot.waitUntil, exec), so coroutines work without the loop being "run".
    """
    global _app_loop
    running = asyncio._get_running_loop()
    if running is not None:
        return running
    if _app_loop is None or _app_loop.is_closed():
        import qasync

        _app_loop = qasync.QEventLoop(QApplication.instance())
        atexit.register(_close_fallback_loop, _app_loop)
    return _app_loop


def _close_fallback_loop(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_running() and not loop.is_closed():
        try:
            loop.close()
        except RuntimeError:
            pass


class AsyncTasks:
    """Coroutines for I/O on the app loop, with blocking parts in a small thread pool.

    ``spawn`` keeps a reference to each task (asyncio only holds weak ones) and logs failures; ``shutdown``
    cancels what is left (window close).
    """

    def __init__(self, workers: int = 2) -> None:
        self._tasks: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inkpunk-io")
        self.loop = app_loop()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def run(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        """Run a blocking function in the I/O pool; await the result on the loop."""
        return asyncio.wrap_future(self._executor.submit(fn, *args), loop=self.loop)

    def call_soon_threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule ``fn(*args)`` on the loop's (GUI) thread from any thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
