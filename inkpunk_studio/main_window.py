"""The main window: a composition of focused widgets around one WorkerHost.

Layout: a sidebar (prompts, the img2img init image, parameters, Generate/Cancel with progress) on the left;
on the right two tabs, the canvas with its toolbar row (restore, star) and the favorites Library (Ctrl+L),
above the history strip. The window only wires things together: widgets emit what the person did, the
window turns it into a GenerationParams/GenerationJob for the WorkerHost, and the host's plain-data signals
come back to widget methods. Favorites are wired by :class:`FavoritesController`; the job run loop (the queue's
jobs on the worker, their progress, images and outcome) is :class:`RunController`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

import engine

from . import history, paths
from . import queue as job_queue
from .editing import MASK_NOT_STORED, hires_from_infotext, inpaint_from_infotext, is_inpainting
from .fast_mode import FastModeController
from .favorites import FavoritesController, library_dir
from .first_run import CHECKPOINT_FILTER, FirstRunDialog
from .metadata import ImageParams, read_params
from .networks_ui import NetworksController
from .run_controller import RunController, caption
from .saving import UnsavedImages
from .sd_upscale import SdUpscale
from .settings import AppSettings
from .step_times import StepTimes
from .widgets.canvas import CanvasPanel
from .widgets.history_strip import HistoryStrip
from .widgets.init_image_panel import InitImagePanel
from .widgets.mask_editor import MaskEditor
from .widgets.params_panel import ParamsPanel
from .widgets.prompt_panel import PromptPanel, load_presets
from .widgets.queue_view import QueueView
from .widgets.run_bar import RunBar
from .widgets.settings_dialog import SettingsDialog, SettingsValues
from .worker import AsyncTasks, GenerationJob, GenerationParams, WorkerHost

log = logging.getLogger(__name__)


class MainWindow(QMainWindow):
    generationFinished = Signal(list)  # paths of the images saved by this run
    generationCancelled = Signal()
    errorShown = Signal(str, str)  # title, text: every error message box (tests and logs listen)

    def __init__(self, settings: AppSettings, data_dir: Path, checkpoint: str | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("mainWindow")
        self.setWindowTitle("Inkpunk Studio")
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.message_box: QMessageBox | None = None
        self.first_run_dialog: FirstRunDialog | None = None
        self._closed = False
        self._history_task = None
        self._show_serial = 0  # the latest image asked for wins when several load at once

        self.tasks = AsyncTasks()
        self.host = WorkerHost(self)
        self.unsaved = UnsavedImages(self.tasks, self)
        self.prompt_panel = PromptPanel(self.tasks, load_presets(paths.resource_path("presets.json")))
        self.prompt_panel.set_emphasis(settings.emphasis)  # the token counters count as the encoder will
        self.init_panel = InitImagePanel(self.tasks)
        self.params_panel = ParamsPanel(engine.SAMPLERS, engine.DISPLAY_NAMES)
        self.run_bar = RunBar()
        self.queue = job_queue.JobQueue(self.data_dir / job_queue.DB_NAME, self)  # Generate clicks in line
        self.queue_view = QueueView(self.queue)
        self.canvas_panel = CanvasPanel()
        self.canvas = self.canvas_panel.canvas
        self.mask_editor = MaskEditor(self.canvas_panel)  # mask mode: inpainting, outpainting, upscale
        self.history_strip = HistoryStrip()
        self.favorites = FavoritesController(self, library_dir(self.data_dir))
        self.networks = NetworksController(self)  # Networks tab, model combo, LoRA/embedding/VAE resolution
        self.model_label = QLabel("No model")
        self.model_label.setObjectName("modelStatusLabel")
        self.runs = RunController(self, self.data_dir / "step_times.json")  # the queue's jobs on the worker
        self._build_layout()
        self._build_menus()
        self._connect()

        self._restore_session()
        self.fast_mode = FastModeController(self)  # the Fast switch (after the session's params are back)
        self.prompt_panel.prompt_edit.setFocus()  # type at once (not in the Library's search box)
        self.reload_history()
        self.networks.refresh()
        if self.queue.notes:
            QTimer.singleShot(0, lambda: self._show_status("; ".join(self.queue.notes), 15000))
        self._checkpoint = checkpoint or settings.checkpoint
        if self._checkpoint:
            self.load_checkpoint(self._checkpoint, remember=False)
        else:
            self.run_bar.set_mode("unavailable", "Choose a checkpoint to start")
            QTimer.singleShot(0, self.show_first_run)

    # ------------------------------------------------------------------ building
    @staticmethod
    def _column(name: str, margins: tuple[int, int, int, int], spacing: int,
                widgets: list[tuple[QWidget, int]]) -> QWidget:
        box = QWidget()
        box.setObjectName(name)
        layout = QVBoxLayout(box)
        layout.setContentsMargins(*margins)
        layout.setSpacing(spacing)
        for widget, stretch in widgets:
            layout.addWidget(widget, stretch)
        return box

    def _build_layout(self) -> None:
        sidebar = self._column("sidebar", (14, 14, 14, 14), 12,
                               [(self.networks.model_bar, 0), (self.prompt_panel, 1), (self.init_panel, 0), (self.params_panel, 0),
                                (self.run_bar, 0), (self.queue_view, 0)])
        scroll = QScrollArea()
        scroll.setObjectName("sidebarScroll")
        scroll.setWidget(sidebar)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(max(360, sidebar.minimumSizeHint().width() + 14))

        self.canvas_panel.add_tool_widget(self.favorites.star_button)
        self.stage_tabs = QTabWidget()
        self.stage_tabs.setObjectName("stageTabs")
        self.stage_tabs.setDocumentMode(True)
        self.stage_tabs.tabBar().setDrawBase(False)
        self.stage_tabs.addTab(self.canvas_panel, "Canvas")
        self.stage_tabs.addTab(self.favorites.page, "Library")
        self.stage_tabs.addTab(self.networks.panel, "Networks")
        self.favorites.bind_tabs(self.stage_tabs)
        right = self._column("stage", (10, 6, 14, 10), 8, [(self.stage_tabs, 1), (self.history_strip, 0)])

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(scroll)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([400, 900])
        self.setCentralWidget(self.splitter)
        self.statusBar().addPermanentWidget(self.model_label)

    def _action(self, text: str, slot, shortcuts=(), name: str = "") -> QAction:
        action = QAction(text, self)
        if name:
            action.setObjectName(name)
        if shortcuts:
            action.setShortcuts([QKeySequence(s) for s in shortcuts])
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_menus(self) -> None:
        self.open_action = self._action("Open Checkpoint…", self.browse_checkpoint, ["Ctrl+O"], "openCheckpointAction")
        self.settings_action = self._action("Settings…", self.show_settings, ["Ctrl+,"], "settingsAction")
        folder_action = self._action("Open Output Folder", self.open_output_folder, name="openOutputAction")
        self.save_unsaved_action = self._action("Save Unsaved Images…", self.unsaved.save_all_as,
                                                name="saveUnsavedAction")
        self.save_unsaved_action.setEnabled(False)
        quit_action = self._action("Quit", self.close, [QKeySequence.StandardKey.Quit], "quitAction")
        self.generate_action = self._action("Generate", self.generate, ["Ctrl+Return", "Ctrl+Enter"],
                                            "generateAction")
        self.cancel_action = self._action("Cancel", self.cancel, ["Esc"], "cancelAction")
        file_menu = self.menuBar().addMenu("&File")
        for item in (self.open_action, self.networks.convert_action, folder_action, self.save_unsaved_action, None,
                     self.settings_action, None, quit_action):
            file_menu.addSeparator() if item is None else file_menu.addAction(item)
        run_menu = self.menuBar().addMenu("&Image")
        run_menu.addAction(self.generate_action)
        run_menu.addAction(self.cancel_action)
        run_menu.addAction(self._action("Restore Parameters", self.restore_current, ["Ctrl+R"], "restoreAction"))
        run_menu.addSeparator()
        self.favorite_action = self._action("Add to Favorites", self.favorites.add_current, ["Ctrl+D"],
                                            "favoriteAction")
        run_menu.addAction(self.favorite_action)
        run_menu.addAction(self._action("Use as Init Image", self.use_current_as_init, ["Ctrl+I"],
                                        "useAsInitAction"))
        run_menu.addAction(self._action("Open Init Image…", self.init_panel.choose_file, ["Ctrl+Shift+O"],
                                        "openInitImageAction"))
        run_menu.addAction(self._action("Clear Init Image", self.init_panel.clear, name="clearInitAction"))
        self.image_menu = run_menu
        view_menu = self.menuBar().addMenu("&View")
        view_menu.addAction(self.favorites.toggle_action)
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(self._action("About Inkpunk Studio", self.show_about, name="aboutAction"))

    def _connect(self) -> None:
        self.run_bar.generate_button.clicked.connect(self.generate)
        self.run_bar.cancel_button.clicked.connect(self.cancel)
        self.host.stateChanged.connect(self._on_model_state)
        self.host.modelFailed.connect(self._on_model_failed)
        self.canvas_panel.saveAsRequested.connect(self.unsaved.save_as)
        self.unsaved.changed.connect(lambda count: self.save_unsaved_action.setEnabled(count > 0))
        self.unsaved.saveFailed.connect(lambda _key, message: self.show_error("Could not save the image", message))
        self.runs.finished.connect(self.generationFinished)
        self.runs.cancelled.connect(self.generationCancelled)
        self.history_strip.imageSelected.connect(self.show_history_image)
        self.canvas_panel.restoreRequested.connect(self.restore_from_file)
        self.prompt_panel.presetApplied.connect(self._on_preset)
        self.canvas.dropped.connect(self.init_panel.load)
        self.canvas.dropRejected.connect(self._show_status)
        self.params_panel.noteShown.connect(self._show_status)
        self.init_panel.loadFailed.connect(self._show_status)
        self.init_panel.imageSet.connect(self._on_init_image_set)
        self.init_panel.restoreRequested.connect(self.apply_image_params)
        self.init_panel.cleared.connect(lambda: self._show_status("Init image cleared: back to text-to-image"))
        self.favorites.install_history_menu(self.history_strip)
        self.queue_view.removeRequested.connect(self.remove_job)
        self.queue.storeFailed.connect(self._show_status)
        self.mask_editor.message.connect(self._show_status)
        self.mask_editor.imageWritten.connect(lambda _path: self.reload_history())
        self.mask_editor.sdUpscaleRequested.connect(self.sd_upscale)

    # ------------------------------------------------------------------ parameters
    def current_params(self) -> GenerationParams:
        """What the panels describe now; with an init image, img2img (the image fitted to the chosen size).
        The noise source, ENSD and emphasis mode come from the Settings."""
        values = self.params_panel.values()
        init = self.init_panel.fitted(values["width"], values["height"])
        return GenerationParams(prompt=self.prompt_panel.prompt(), negative_prompt=self.prompt_panel.negative_prompt(),
                                init_image=init, strength=self.init_panel.strength(), rng=self.settings.rng,
                                ensd=self.settings.ensd, emphasis=self.settings.emphasis,
                                s_min_uncond=self.settings.s_min_uncond,  # NGMS, Skip Early CFG
                                s_min_uncond_all=self.settings.s_min_uncond_all,
                                skip_early_cond=self.settings.skip_early_cond,
                                token_merging_ratio=self.settings.token_merging_ratio,
                                token_merging_ratio_hr=self.settings.token_merging_ratio_hr, **values)

    def set_params(self, params: GenerationParams) -> list[str]:
        """Set the panels from ``params`` (the Settings' rng/ensd/emphasis are not touched)."""
        self.prompt_panel.set_prompts(params.prompt, params.negative_prompt)
        self.init_panel.set_strength(params.strength)
        return self.params_panel.set_values(
            sampler=params.sampler, schedule=params.schedule, steps=params.steps, cfg_scale=params.cfg_scale,
            seed=params.seed, random_seed=params.seed is None, width=params.width, height=params.height,
            batch_count=params.batch_count, clip_skip=params.clip_skip, variation_seed=params.variation_seed,
            random_variation_seed=params.variation_seed is None, variation_strength=params.variation_strength,
            **params.hires_values())

    def apply_image_params(self, meta: ImageParams) -> list[str]:
        """Restore prompts and settings from an image's metadata, the Settings' noise source, ENSD and emphasis
        included. What could not be restored or had to change (``meta.notes``, the panels' notes) is said in
        the status bar, as is a changed Setting; the notes are returned."""
        self.prompt_panel.set_prompts(meta.prompt, meta.negative_prompt)
        notes = meta.notes + self.params_panel.set_values(
            sampler=meta.sampler, schedule=meta.schedule, steps=meta.steps, cfg_scale=meta.cfg_scale,
            seed=meta.seed, random_seed=meta.seed is None, width=meta.width, height=meta.height,
            clip_skip=meta.clip_skip, variation_seed=meta.variation_seed,
            random_variation_seed=meta.variation_seed is None, variation_strength=meta.variation_strength,
            **hires_from_infotext(meta.extra, meta.strength))
        if meta.strength is not None:
            self.init_panel.set_strength(meta.strength)
        inpaint, inpaint_notes = inpaint_from_infotext(meta.extra)  # mask blur, content, only masked, padding
        notes += inpaint_notes + self.mask_editor.set_inpaint_values(**inpaint)
        if is_inpainting(meta.extra):
            notes.append(MASK_NOT_STORED)
        changed = self._restore_sampling_settings(meta, notes)
        message = "Parameters restored"
        if changed:
            message += f"; Settings now: {', '.join(changed)}"
        if notes:
            message += f" (not restored or adjusted: {'; '.join(notes)})"
        self.statusBar().showMessage(message, 10000 if notes or changed else 6000)
        self.networks.check_restored(meta)  # missing LoRAs/embeddings/VAE/model, by name and hash
        return notes

    def _restore_sampling_settings(self, meta: ImageParams, notes: list[str]) -> list[str]:
        """The Settings an image records (RNG, ENSD, emphasis, NGMS, Skip Early CFG, token merging), set as
        A1111's override settings would be; returns what changed, in words."""
        changed: list[str] = []
        # token merging: A1111 writes the hires pass's ratio even when it is the first pass's (0 here: the same)
        hr = 0.0 if meta.token_merging_ratio_hr == meta.token_merging_ratio else meta.token_merging_ratio_hr
        tome = (("token_merging_ratio", meta.token_merging_ratio, "token merging ratio"),
                ("token_merging_ratio_hr", hr, "token merging ratio (hires)"))
        for name, value, label in (("rng", meta.rng, "random numbers"), ("ensd", meta.ensd, "ENSD"),
                                   ("emphasis", meta.emphasis, "emphasis"),
                                   ("s_min_uncond", meta.s_min_uncond, "NGMS"),
                                   ("s_min_uncond_all", meta.s_min_uncond_all, "NGMS all steps"),
                                   ("skip_early_cond", meta.skip_early_cond, "Skip Early CFG"), *tome):
            if getattr(self.settings, name) == value:
                continue
            try:
                setattr(self.settings, name, value)
            except ValueError:
                notes.append(f"{label} {value!r} is not available")
                continue
            changed.append(f"{label} {str(value).upper() if name == 'rng' else value}")
        if changed:
            self.settings.sync()
            self.prompt_panel.set_emphasis(self.settings.emphasis)
        return changed

    def output_dir(self) -> Path:
        chosen = self.settings.output_dir
        return Path(chosen).expanduser() if chosen else paths.outputs_dir(self.data_dir)

    # ------------------------------------------------------------------ generation
    def generate(self) -> bool:
        """Queue a job with the current parameters (a snapshot); it starts at once if nothing else runs (behind
        a model still loading, if need be).

        False when nothing was queued: no model, bad values, an output folder that can't take the images, or a
        very large size that waits for the person's "Generate Anyway" (``size_box``).
        """
        self.params_panel.commit_edits()  # Ctrl+Enter while a size box still shows a half-typed value
        if not self.host.model_usable():
            self.statusBar().showMessage("No model loaded: choose a checkpoint first (File ▸ Open Checkpoint…)", 6000)
            return False
        params = self.current_params()
        self.mask_editor.apply_to(params)  # mask mode with a mask: inpaint the canvas image at its size
        try:
            self.networks.resolve(params)  # LoRA tags -> files (unknown names refused), embeddings, VAE
            self.fast_mode.apply(params)  # fast mode's LoRA, the decoder, TAESD
            params.request(params.seed)  # the engine's own validation, before anything starts
        except ValueError as exc:
            self.show_error("Can't generate", str(exc))
            return False
        return self.runs.submit(params, self.output_dir())  # checks the folder, asks about a very large size

    def sd_upscale(self, path: str, factor: int, strength: float) -> bool:
        """SD upscale of the saved image ``path`` (issue 15): its parameters go into the panels (as a restore
        does), and a worker job refines its Lanczos upscale tile by tile; the result lands beside ``path``.
        False (with a status line) when the worker is busy, no model is usable or the image has no
        parameters."""
        if self._closed or self.host.busy or not self.host.model_usable():
            self._show_status("SD upscale needs a loaded model and no generation running", 6000)
            return False
        meta = read_params(path)
        if meta is None or meta.seed is None:
            self._show_status(f"SD upscale needs the image's parameters; {Path(path).name} has none", 8000)
            return False
        self.apply_image_params(meta)
        params = self.current_params()
        try:
            self.networks.resolve(params)
            self.fast_mode.apply(params)
            tile = min(512, params.width, params.height) // 8 * 8  # A1111: the request size, 64 px overlap
            spec = SdUpscale(path, factor, strength, tile=tile, overlap=min(64, tile // 8))
            spec.check_request(params.request(params.seed))  # e.g. a strength too low for the steps, now
        except ValueError as exc:
            self.show_error("Can't SD upscale", str(exc))
            return False
        job = GenerationJob(params=params, output_dir=Path(path).parent, preview=self.settings.preview_enabled,
                            sd_upscale=spec)
        return self.runs.run_direct(job, f"SD upscale ×{factor}…")

    def remove_job(self, job_id: str) -> None:
        """Take a job out of the queue; the running one is cancelled (and leaves when the cancel arrives)."""
        self.runs.remove_job(job_id)

    def cancel(self) -> None:
        """Stop the running job (it leaves the queue); the queue goes on with the next unless paused."""
        self.runs.cancel()

    @property
    def step_times(self) -> StepTimes:
        """Seconds per step by device and size (the large-size warning's estimate), kept by the runs."""
        return self.runs.step_times

    @property
    def size_box(self) -> QMessageBox | None:
        """The open "A very large image" question, if any."""
        return self.runs.size_box

    def _device_key(self) -> str:
        return self.runs.device_key()

    # ------------------------------------------------------------------ model
    def load_checkpoint(self, path: str | Path, remember: bool = True) -> None:
        """Load a checkpoint on the worker (the window stays usable); ``remember`` stores it in the settings."""
        path = str(path)
        self._checkpoint = path
        if remember:
            self.settings.checkpoint = path
            self.settings.sync()
        self.host.load_model(path, self.settings.device, self.settings.precision)

    def browse_checkpoint(self) -> None:
        start = str(Path(self._checkpoint).parent) if self._checkpoint else str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Open a checkpoint", start, CHECKPOINT_FILTER)
        if path:
            self.load_checkpoint(path)

    def _on_model_state(self, state: str, message: str) -> None:
        if message:
            self.model_label.setText(message)
            self.statusBar().showMessage(message, 4000)
        if state == "ready":
            self.setWindowTitle(f"Inkpunk Studio — {self.host.model_info.get('name', '')}")
        self.runs.show_idle(state)  # a waiting job starts, or the run bar says what the model allows

    def _on_model_failed(self, path: str, message: str) -> None:
        name = Path(path).name
        what = message if name in message else f"{name}:\n{message}"  # engine messages name the file already
        self.show_error("Could not load the checkpoint",
                        f"{what}\n\nChoose another checkpoint with File ▸ Open Checkpoint…", offer_checkpoint=True)

    def show_first_run(self) -> None:
        if self._closed or self.host.state != "none" or self.first_run_dialog is not None:
            return
        dialog = FirstRunDialog(self.tasks, paths.models_dir(self.data_dir), parent=self)
        dialog.checkpointChosen.connect(self.load_checkpoint)
        dialog.finished.connect(self._first_run_closed)
        self.first_run_dialog = dialog
        dialog.open()

    def _first_run_closed(self) -> None:
        self.first_run_dialog = None

    # ------------------------------------------------------------------ history
    def reload_history(self) -> None:
        """(Re)fill the strip from the output folder, thumbnails loading in the background."""
        folder = self.output_dir()
        if self._history_task is not None:
            self._history_task.cancel()
        self.history_strip.clear_all()
        self._history_task = self.tasks.spawn(history.load_history(folder, self.tasks, self.history_strip))

    def show_history_image(self, path: str) -> None:
        self.favorites.show_library(False)
        if self.canvas.path == path and not self.canvas.is_preview():
            return
        self._show_serial += 1
        self.tasks.spawn(self._show_file(path, self._show_serial))

    async def _show_file(self, path: str, serial: int) -> None:
        image = await self.tasks.run(history.load_qimage, path)
        meta = await self.tasks.run(read_params, path)
        if serial != self._show_serial:
            return  # another image was asked for meanwhile
        if image is None:
            self.statusBar().showMessage(f"Could not open {Path(path).name}", 6000)
            return
        if not self.host.busy or not self.canvas.is_preview():
            self.canvas_panel.show_file(image, path, caption(path, meta))

    def restore_current(self) -> None:
        """Ctrl+R: the selected favorite while the Library has the focus, else the image on the canvas."""
        if not self.favorites.restore_selected() and self.canvas.path:
            self.restore_from_file(self.canvas.path)

    def restore_from_file(self, path: str) -> None:
        self.tasks.spawn(self._restore(path))

    async def _restore(self, path: str) -> None:
        meta = await self.tasks.run(read_params, path)
        if meta is None:
            self.statusBar().showMessage(f"{Path(path).name} has no generation parameters", 6000)
            return
        self.apply_image_params(meta)

    # ------------------------------------------------------------ img2img
    def use_as_init_image(self, path: str) -> None:
        self.init_panel.load(path)

    def use_current_as_init(self) -> None:
        """Ctrl+I: the selected favorite while the Library has the focus, else the image on the canvas."""
        if self.favorites.init_image_selected():
            return
        if self.canvas.path and not self.canvas.is_preview():
            self.use_as_init_image(self.canvas.path)
        else:
            self._show_status("No finished image on the canvas: drop a picture on it instead")

    def _on_init_image_set(self, name: str, meta: ImageParams | None) -> None:
        offer = " It carries generation parameters: “Use its parameters” restores them." if meta else ""
        self._show_status(f"Init image: {name} (img2img, strength {self.init_panel.strength():.2f}).{offer}",
                          12000 if meta else 6000)

    def _show_status(self, message: str, msecs: int = 8000) -> None:
        self.statusBar().showMessage(message, msecs)

    def open_output_folder(self) -> None:
        folder = self.output_dir()
        try:
            paths.ensure_folder(folder)
        except paths.FolderError as exc:
            box = self.show_error("Can't open the output folder",
                                  f"{folder}\ncan't be created: {exc.reason}.\n\nChoose another folder for "
                                  "your images (also in Settings).")
            box.addButton("Choose Output Folder…", QMessageBox.ButtonRole.AcceptRole).clicked.connect(
                self.choose_output_folder)
            return
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def choose_output_folder(self) -> None:
        """Pick the folder new images are saved to (the history strip then shows that folder)."""
        start = self.output_dir()
        while not start.is_dir() and start != start.parent:
            start = start.parent
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder for your images", str(start))
        if folder:
            self.settings.output_dir = folder
            self.settings.sync()
            self.reload_history()
            self._show_status(f"Images now go to {folder}")

    # ------------------------------------------------------------------ dialogs
    def show_error(self, title: str, text: str, offer_checkpoint: bool = False,
                   actions: tuple[tuple[str, Callable[[], object]], ...] = ()) -> QMessageBox:
        """A non-blocking (window-modal, ``open()``ed) warning; also emitted as ``errorShown``.

        ``actions``: extra (button text, callback) pairs; a click runs the callback and closes the box.
        """
        log.warning("%s: %s", title, text)
        if self.message_box is not None:
            self.message_box.close()
        box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Close, self)
        box.setObjectName("errorBox")
        if offer_checkpoint:
            choose = box.addButton("Choose Checkpoint…", QMessageBox.ButtonRole.AcceptRole)
            choose.clicked.connect(self.browse_checkpoint)
        for label, callback in actions:
            button = box.addButton(label, QMessageBox.ButtonRole.AcceptRole)
            button.clicked.connect(callback)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(self._message_box_closed)
        self.message_box = box
        box.open()
        self.errorShown.emit(title, text)
        return box

    def _message_box_closed(self) -> None:
        self.message_box = None

    def show_settings(self) -> None:
        vaes = [(f.name, str(f.path)) for f in self.networks.folders().scan("vae")]
        dialog = SettingsDialog(SettingsValues.from_settings(self.settings), str(paths.outputs_dir(self.data_dir)),
                                self, vae_files=vaes)
        dialog.accepted.connect(self._settings_accepted)
        self.fast_mode.bind_settings_dialog(dialog)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.settings_dialog = dialog
        dialog.open()

    def _settings_accepted(self) -> None:
        self.apply_settings(self.settings_dialog.values())

    def apply_settings(self, new: SettingsValues) -> None:
        old = SettingsValues.from_settings(self.settings)
        new.save(self.settings)
        self.prompt_panel.set_emphasis(new.emphasis)
        if new.output_dir != old.output_dir:
            self.reload_history()
        if new.model_folders != old.model_folders:
            self.networks.refresh()
        model_changed = (new.checkpoint, new.device, new.precision) != (self._checkpoint, old.device, old.precision)
        if new.checkpoint and model_changed:  # while a job runs, the load waits behind it on the worker
            self.load_checkpoint(new.checkpoint, remember=False)

    def show_about(self) -> None:
        QMessageBox.about(self, "About Inkpunk Studio",
                          "<b>Inkpunk Studio</b><br>Stable Diffusion 1.x on your own machine, with a from-scratch "
                          f"PyTorch engine.<br><br>Images: {self.output_dir()}<br>Data: {self.data_dir}")

    # ------------------------------------------------------------------ session
    def _restore_session(self) -> None:
        geometry = self.settings.geometry()
        if geometry is None or not self.restoreGeometry(geometry):
            self.resize(QSize(1360, 880))
        state = self.settings.window_state()
        if state is not None:
            self.restoreState(state)
        last = self.settings.last_params()
        if last:
            self.set_params(GenerationParams.from_dict(last))

    def _on_preset(self, name: str) -> None:
        self.statusBar().showMessage(f"Preset: {name}", 3000)

    def shutdown(self) -> None:
        """Save the session, cancel any generation and stop the worker thread (waits for it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.runs.close()
        try:
            self.settings.save_window(self.saveGeometry(), self.saveState())
            self.settings.save_last_params(self.current_params().to_dict())
            self.settings.sync()
        except Exception:  # never block closing on a settings problem
            log.exception("could not save the session")
        if self.first_run_dialog is not None:
            self.first_run_dialog.cancel_download()
        self.host.shutdown()
        self.queue.close()  # unfinished jobs (the running one included) wait for the next start
        self.favorites.close()
        self.tasks.shutdown()

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self._closed and not self.unsaved.confirm_close(self.close):  # images only in memory: ask
            event.ignore()
            return
        self.shutdown()
        super().closeEvent(event)
