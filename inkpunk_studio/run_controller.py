"""The job run loop: the queue's jobs, one at a time, on the worker, and what they produce on screen.

:class:`RunController` owns the run state (the running job, its last progress event, how many of its images
could not be saved) and the step-time record behind the large-size warning. It queues a job (asking first
about a very large size), hands the queue's next job to the :class:`~inkpunk_studio.worker.WorkerHost`
whenever the worker is free, the model usable and the queue not paused, and turns the host's plain-data
signals into canvas, history strip, run bar and status updates; a finished, cancelled or failed job leaves
the queue and the next one starts.

The window keeps the widgets and the user-facing entry points (``generate()``, ``cancel()``,
``remove_job()``, ``sd_upscale()``), which read and validate the panels and call in here. Like the favorites controller,
this module doesn't import the main window: the window passes itself as a :class:`RunHost`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QMessageBox, QStatusBar

from .fileio import check_output_folder
from .metadata import DISPLAY_NAMES, ImageParams
from .queue import JobQueue
from .saving import UnsavedImages
from .settings import AppSettings
from .step_times import StepTimes, size_warning
from .worker import AsyncTasks, GenerationJob, GenerationParams, WorkerHost

log = logging.getLogger(__name__)


def caption(path: str, params: ImageParams | None) -> str:
    """The canvas caption of an image: its file name, seed, size, sampler and steps."""
    name = Path(path).name
    if params is None:
        return name
    sampler = DISPLAY_NAMES.get(params.sampler or "", params.sampler or "unknown sampler")
    return f"{name}  ·  seed {params.seed}  ·  {params.width}×{params.height}  ·  {sampler}, {params.steps} steps"


class RunHost(Protocol):
    """What the controller uses of the main window (which creates it and passes itself)."""

    settings: AppSettings
    host: WorkerHost
    queue: JobQueue
    tasks: AsyncTasks
    unsaved: UnsavedImages
    run_bar: Any  # RunBar: set_mode(), show_progress()
    canvas: Any  # Canvas: set_preview(), discard_preview()
    canvas_panel: Any  # CanvasPanel: show_file(), show_unsaved(), unsaved_key
    history_strip: Any  # HistoryStrip: add_path(), set_thumbnail(), select_path()
    params_panel: Any  # ParamsPanel: set_last_seed()
    favorites: Any  # FavoritesController: show_library()

    def statusBar(self) -> QStatusBar: ...

    def output_dir(self) -> Path: ...

    def show_error(self, title: str, text: str, offer_checkpoint: bool = False,
                   actions: tuple[tuple[str, Any], ...] = ()) -> Any: ...

    def show_settings(self) -> None: ...


class RunController(QObject):
    """Runs the queue's jobs on the worker one at a time and shows their progress, images and outcome.

    ``finished`` (paths of the saved images) and ``cancelled`` are emitted after a run's state is cleared.
    ``size_box`` is the open "A very large image" question, if any.
    """

    finished = Signal(list)
    cancelled = Signal()

    def __init__(self, window: RunHost, step_times_path: Path) -> None:
        super().__init__(window)  # type: ignore[arg-type]  (the window is a QObject)
        self.window = window
        self.host = window.host
        self.queue = window.queue
        self.step_times = StepTimes(step_times_path)
        self.size_box: QMessageBox | None = None
        self.closed = False
        self._job: GenerationJob | None = None  # the running one
        self._last_progress: dict | None = None
        self._unsaved_in_run = 0

        self.host.progress.connect(self._on_progress)
        self.host.imageSaved.connect(self._on_image_saved)
        self.host.imageUnsaved.connect(self._on_image_unsaved)
        window.unsaved.saved.connect(self._on_unsaved_saved)
        self.host.finished.connect(self._on_finished)
        self.host.cancelled.connect(self._on_cancelled)
        self.host.failed.connect(self._on_failed)
        self.queue.pausedChanged.connect(lambda paused: paused or self._run_next_later())

    def close(self) -> None:
        """The window is closing: start nothing more."""
        self.closed = True

    def _status(self, message: str, msecs: int = 8000) -> None:
        self.window.statusBar().showMessage(message, msecs)

    # ------------------------------------------------------------------ starting
    def submit(self, params: GenerationParams, folder: Path) -> bool:
        """Queue a validated job to save into ``folder``. False, with a message, when the folder can't take its
        images; False too when its size is very large for this device: the person is asked first
        (``size_box``; "Generate Anyway" queues it)."""
        width, height = params.output_size  # the hires pass's size when it runs
        need = (width * height * 3 + (64 << 10)) * params.batch_count  # PNG, at worst uncompressed
        problem = check_output_folder(folder, need)
        if problem is not None:
            self.window.show_error("Can't save images to the output folder",
                                   f"{problem}\n\nChoose another output folder in Settings (File ▸ Settings…).",
                                   actions=(("Settings…", self.window.show_settings),))
            return False
        device = self.device_key()
        warning = size_warning(width, height, params.output_steps, params.batch_count, device,
                               self.step_times.estimate(device, width, height))
        if warning is not None:
            self._ask_large_size(params, folder, warning)
            return False
        return self._start(params, folder)

    def device_key(self) -> str:
        """The step-time record's key: the loaded model's device and dtype, else the Settings' device."""
        info = self.host.model_info
        return f"{info['device']} {info['dtype']}" if info else self.window.settings.device

    def _ask_large_size(self, params: GenerationParams, folder: Path, text: str) -> None:
        if self.size_box is not None:
            self.size_box.close()
        box = QMessageBox(QMessageBox.Icon.Question, "A very large image", text, QMessageBox.StandardButton.Cancel,
                          self.window)  # type: ignore[arg-type]
        box.setObjectName("largeSizeBox")
        go = box.addButton("Generate Anyway", QMessageBox.ButtonRole.AcceptRole)
        go.setObjectName("generateAnywayButton")
        go.clicked.connect(lambda: self._start(params, folder))
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(self._size_box_closed)
        self.size_box = box
        box.open()

    def _size_box_closed(self) -> None:
        self.size_box = None

    def _start(self, params: GenerationParams, folder: Path) -> bool:
        """Queue the job; start the queue's next one if the worker is free."""
        if self.closed:
            return False
        self.queue.add(params, folder)
        if not self.run_next():
            paused = " (the queue is paused: Resume starts it)" if self.queue.paused else ""
            self._status(f"Queued: {self.queue.waiting()} waiting{paused}", 6000)
        return True

    def run_direct(self, job: GenerationJob, message: str) -> bool:
        """Run ``job`` outside the queue (SD upscale), if the worker takes it; ``message`` goes on the run bar."""
        if not self.host.generate(job):
            return False
        self._job, self._last_progress, self._unsaved_in_run = job, None, 0
        self.window.run_bar.set_mode("running", message)
        return True

    def run_next(self) -> bool:
        """Hand the queue's next job to the worker, if it is free, the model usable and the queue not paused."""
        if self.closed or self.host.busy or not self.host.model_usable():
            return False
        queued = self.queue.next_job()
        if queued is None:
            return False
        job = GenerationJob(params=queued.params, output_dir=queued.output_dir,
                            preview=self.window.settings.preview_enabled)
        if not self.host.generate(job):
            return False
        self.queue.start(queued.id)
        self._job, self._last_progress, self._unsaved_in_run = job, None, 0
        self.window.favorites.show_library(False)  # the previews show on the canvas
        waiting = "Waiting for the model to finish loading…" if self.host.state == "loading" else "Starting…"
        self.window.run_bar.set_mode("running", waiting)
        return True

    def _run_next_later(self) -> None:
        """After the current signal's handlers are done (they still read ``_job``)."""
        QTimer.singleShot(0, self.run_next)

    def show_idle(self, state: str) -> None:
        """The worker is free (or the model state changed): start a waiting job, else say what the model
        allows on the run bar. Nothing while a job runs."""
        if self.host.busy:
            return
        if self.queue.next_job() is not None:  # jobs from before a restart, or waiting for a model
            self._run_next_later()
        if state == "ready":
            self.window.run_bar.set_mode("idle", "Ready")
        elif state == "loading":
            self.window.run_bar.set_mode("idle", "Loading model… (Generate starts when it is ready)")
        else:
            self.window.run_bar.set_mode("unavailable", "Choose a checkpoint (File ▸ Open Checkpoint…)")

    # ------------------------------------------------------------------ stopping
    def _drop_running_job(self) -> None:
        """The running job finished, was cancelled or failed: it leaves the queue."""
        if not self.closed and self.queue.running_id is not None:
            self.queue.remove(self.queue.running_id)  # the next one starts from _back_to_idle

    def remove_job(self, job_id: str) -> None:
        """Take a job out of the queue; the running one is cancelled (and leaves when the cancel arrives)."""
        if job_id == self.queue.running_id and self.host.busy:
            self.cancel()
        else:
            self.queue.remove(job_id)

    def cancel(self) -> None:
        """Stop the running job (it leaves the queue); the queue goes on with the next unless paused."""
        if self.host.busy:
            self.host.cancel()
            self.window.run_bar.set_mode("cancelling")

    def _back_to_idle(self) -> None:
        self.show_idle(self.host.state)

    # ------------------------------------------------------------------ the worker's signals
    def _on_progress(self, info: dict) -> None:
        self._last_progress = info
        self.queue.set_progress(info["step"] / max(info["total"], 1))
        self.window.run_bar.show_progress(info)
        preview = info.get("preview")
        if preview is not None:
            self.window.canvas.set_preview(preview)

    def _on_image_saved(self, info: dict) -> None:
        path, image = info["path"], info["image"]
        strip = self.window.history_strip
        strip.add_path(path)
        strip.set_thumbnail(path, image)
        strip.blockSignals(True)
        strip.select_path(path)
        strip.blockSignals(False)
        self.window.canvas_panel.show_file(image, path, caption(path, info.get("params")))  # the job's own params
        self.window.params_panel.set_last_seed(info["seed"])

    def _on_image_unsaved(self, info: dict) -> None:
        """Saving failed: keep the image in memory, show it, and offer Save As… (once per run: a message)."""
        unsaved = self.window.unsaved
        key = unsaved.add(info)
        self.window.canvas_panel.show_unsaved(info["image"], key,
                                              "Not saved  ·  " + caption(info["name"], info.get("params")))
        self.window.params_panel.set_last_seed(info["seed"])
        self._unsaved_in_run += 1
        if self._unsaved_in_run == 1:
            self.window.show_error("Could not save the image",
                                   f"{info['error']}\n\nThe image is kept in memory and shown on the canvas: save "
                                   "it elsewhere with Save As… (File ▸ Save Unsaved Images… saves all of them), or "
                                   "choose another output folder in Settings.",
                                   actions=(("Save As…", lambda: unsaved.save_as(key)),))

    def _on_finished(self, saved: list) -> None:
        self._drop_running_job()
        self._back_to_idle()
        job, self._job = self._job, None
        folder = job.output_dir if job is not None else self.window.output_dir()
        self._remember_speed(job)
        message = f"Saved {len(saved)} image{'s' * (len(saved) != 1)} to {folder}"
        if self._unsaved_in_run:
            message += f"; {self._unsaved_in_run} could not be saved (kept in memory: Save As…)"
        self._status(message, 8000)
        self.finished.emit(list(saved))

    def _remember_speed(self, job: GenerationJob | None) -> None:
        """Store this run's seconds per step for its size (the large-size warning's estimate)."""
        info, self._last_progress = self._last_progress, None
        if job is None or not info or not self.host.model_info:
            return
        self.step_times.record(self.device_key(), job.params.width, job.params.height, info["sec_per_step"])
        self.window.tasks.spawn(self._save_step_times())

    async def _save_step_times(self) -> None:
        try:
            await self.window.tasks.run(self.step_times.save)
        except OSError as exc:
            log.warning("could not save the step times: %s", exc)

    def _on_unsaved_saved(self, key: int, path: str, info: dict) -> None:
        """Saved after all: on show, it becomes that file (star, restore); in the output folder, history."""
        if self.window.canvas_panel.unsaved_key == key:
            self.window.canvas_panel.show_file(info["image"], path, caption(path, info.get("params")))
        if Path(path).parent == self.window.output_dir():
            self.window.history_strip.add_path(path)
            self.window.history_strip.set_thumbnail(path, info["image"])
        self._status(f"Saved {path}")

    def _on_cancelled(self, saved: list) -> None:
        self._drop_running_job()
        self._back_to_idle()
        self._job = None
        self.window.canvas.discard_preview()
        kept = f" ({len(saved)} finished image{'s' * (len(saved) != 1)} kept)" if saved else ""
        self._status("Cancelled" + kept, 6000)
        self.cancelled.emit()

    def _on_failed(self, message: str) -> None:
        self._drop_running_job()
        self._back_to_idle()
        self._job = None
        self.window.canvas.discard_preview()
        if self.queue.waiting():
            message += "\n\nThe job left the queue; the next one starts."
        self.window.show_error("Generation failed", message)
