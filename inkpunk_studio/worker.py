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
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PySide6.QtCore import QObject, QThread, Signal, Slot
from PySide6.QtWidgets import QApplication

import engine

from . import history, networks
from .metadata import ImageParams, save_png
from .tokens import count_tokens, warm_up_tokenizer  # noqa: F401 - count_tokens: the old home, kept

log = logging.getLogger(__name__)
T = TypeVar("T")

OOM_HINT = "Try a smaller image size or fewer images at once."


@dataclass
class GenerationParams:
    """What the widgets describe: everything needed for one Generate click (widgets -> this -> worker)."""

    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = "dpmpp_2m_karras"
    steps: int = 25
    cfg_scale: float = 7.5
    seed: int | None = None  # None: a random seed, chosen by the engine
    width: int = 512
    height: int = 512
    batch_count: int = 1  # images made one after another with seed, seed + 1, ...
    init_image: Any = None  # PIL image for img2img (already fitted to width x height), or None
    strength: float = 0.75
    # networks, resolved from the prompt and Settings by inkpunk_studio.networks (not saved with the params)
    loras: tuple = ()  # GenerationRequest.loras entries: (path, te_weight, unet_weight)
    embeddings: tuple = ()  # embedding files to have loaded (their words appear in the prompts)
    vae: str = ""  # an external VAE file, "" for the checkpoint's own

    _PLAIN = ("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "seed", "width", "height",
              "batch_count", "strength")

    def request(self, seed: int | None) -> engine.GenerationRequest:
        """The engine request for one image of the batch (raises ValueError for bad values)."""
        return engine.GenerationRequest(
            prompt=self.prompt, negative_prompt=self.negative_prompt, steps=self.steps, cfg_scale=self.cfg_scale,
            width=self.width, height=self.height, seed=seed, sampler=self.sampler, batch_size=1,
            init_image=self.init_image, strength=self.strength, loras=self.loras)

    def image_params(self, seed: int, model_name: str = "", model_hash: str = "") -> ImageParams:
        """Metadata for a saved image made with ``seed``."""
        return ImageParams(prompt=self.prompt, negative_prompt=self.negative_prompt, steps=self.steps,
                           sampler=self.sampler, cfg_scale=self.cfg_scale, seed=seed, width=self.width,
                           height=self.height, model_name=model_name, model_hash=model_hash,
                           strength=self.strength if self.init_image is not None else None)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (no init image) for QSettings."""
        return {name: getattr(self, name) for name in self._PLAIN}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationParams:
        """Inverse of to_dict; keys of the wrong type are ignored (defaults stay)."""
        params = cls()
        for name in cls._PLAIN:
            if name not in data:
                continue
            value, default = data[name], getattr(params, name)
            if name == "seed" and (value is None or (isinstance(value, int) and not isinstance(value, bool))):
                params.seed = value
            elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(params, name, float(value))
            elif type(value) is type(default):
                setattr(params, name, value)
        return params


@dataclass
class GenerationJob:
    """One Generate click: parameters plus where to save, and its own cancel flag."""

    params: GenerationParams
    output_dir: Path
    preview: bool = True
    cancel: threading.Event = field(default_factory=threading.Event)


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
    imageSaved = Signal(dict)  # {"path", "seed", "index", "count", "image": QImage}
    finished = Signal(list)  # saved paths (str)
    cancelled = Signal(list)  # paths saved before the cancel (earlier images of a batch)
    failed = Signal(str)  # user-facing message

    def __init__(self) -> None:
        super().__init__()
        self._pipe: Any = None

    @Slot(str, str, str)
    def load_model(self, path: str, device: str, dtype: str) -> None:
        self._pipe = None  # free the old model before reading a new one
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
        p = job.params
        started = time.perf_counter()
        base_seed = p.seed
        networks.prepare_pipeline(self._pipe, p.embeddings, p.vae or None)
        for index in range(p.batch_count):
            seed = None if base_seed is None else base_seed + index
            request = p.request(seed)

            def on_step(event: Any, index: int = index) -> None:
                self._emit_progress(job, event, index, started)

            result = self._pipe.generate(request, on_step=on_step, cancel=job.cancel)
            if base_seed is None:  # the engine picked a random seed: the rest of the batch follows it
                base_seed = result.seed - index
            if job.cancel.is_set():  # cancelled during the last step: save nothing more
                raise engine.Cancelled("generation cancelled")
            image = result.images[0]
            meta = p.image_params(result.seed, self._pipe.model_name, self._pipe.model_hash)
            networks.record_networks(meta, result)
            path = history.new_output_path(job.output_dir, result.seed)
            save_png(image, path, meta)
            saved.append(str(path))
            self.imageSaved.emit({"path": str(path), "seed": result.seed, "index": index,
                                  "count": p.batch_count, "image": history.to_qimage(image)})

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
        self._worker.finished.connect(self._on_finished)
        self._worker.cancelled.connect(self._on_cancelled)
        self._worker.failed.connect(self._on_failed)
        self._thread.start()

    # --- requests from the GUI
    def load_model(self, path: str | Path, device: str = "auto", dtype: str = "auto") -> None:
        self._set_state("loading", f"Loading model {Path(path).name}…")
        self._requestLoad.emit(str(path), device, dtype)

    def can_generate(self) -> bool:
        return not self.busy and self.state in ("loading", "ready")

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
