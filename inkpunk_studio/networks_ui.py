"""The window's side of the model folders: the Networks tab, the model combo (`modelCombo`), "Convert to
.safetensors", the networks of a Generate click, and what a restored image used that is missing here.

One controller object so main_window.py only creates it and calls `resolve(params)` / `check_restored(meta)`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QWidget,
)

import engine

from . import paths
from .metadata import ImageParams
from .missing_networks import Missing, find_missing, use_matches
from .networks import ModelFolders, convert_to_safetensors, resolve_params
from .widgets.network_highlighter import MissingTagHighlighter
from .widgets.networks_panel import NetworksPanel

if TYPE_CHECKING:
    from .main_window import MainWindow

log = logging.getLogger(__name__)


class NetworksController(QObject):
    missingFound = Signal(list)  # [Missing] of a restored image (tests listen)
    converted = Signal(str)  # path of the new .safetensors file

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.panel = NetworksPanel(window.tasks, self.folders)
        self.panel.insertRequested.connect(self.insert)
        self.highlighter = MissingTagHighlighter(window.prompt_panel.prompt_edit.document())
        self.panel.refreshed.connect(lambda: self.highlighter.set_known(self.panel.lora_names()))
        self._last_prompt_edit: QPlainTextEdit = window.prompt_panel.prompt_edit
        app = QApplication.instance()
        if app is not None:
            app.focusChanged.connect(self._focus_changed)

        self.model_combo = QComboBox()
        self.model_combo.setObjectName("modelCombo")
        self.model_combo.setToolTip("The checkpoint: models/ and models/Stable-diffusion of the data folder, and "
                                    "the extra model folders of Settings")
        self.model_combo.activated.connect(self._model_chosen)
        self.model_bar = QWidget()
        self.model_bar.setObjectName("modelBar")
        row = QHBoxLayout(self.model_bar)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Model"))
        row.addWidget(self.model_combo, 1)

        self.convert_action = QAction("Convert to .safetensors", window)
        self.convert_action.setObjectName("convertAction")
        self.convert_action.triggered.connect(self.convert_current)
        self.refresh_models()
        window.host.stateChanged.connect(lambda *_: self.refresh_models())

    # ---------------------------------------------------------------- folders
    def folders(self) -> ModelFolders:
        return ModelFolders([paths.models_dir(self.window.data_dir), *self.window.settings.model_folders])

    def refresh(self) -> None:
        """Rescan everything (after Settings change the folders, or a conversion)."""
        self.panel.refresh()
        self.refresh_models()

    def refresh_models(self) -> None:
        current = getattr(self.window, "_checkpoint", "") or self.window.settings.checkpoint or ""
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for f in self.folders().scan("checkpoint"):
            self.model_combo.addItem(f.name, str(f.path))
        if current and self.model_combo.findData(str(current)) < 0:
            self.model_combo.addItem(Path(current).stem, str(current))
        self.model_combo.setCurrentIndex(self.model_combo.findData(str(current)) if current else -1)
        self.model_combo.blockSignals(False)
        self.convert_action.setEnabled(Path(current).suffix.lower() in (".ckpt", ".pt", ".pth") if current
                                       else False)

    def _model_chosen(self, index: int) -> None:
        path = self.model_combo.itemData(index)
        if path and path != getattr(self.window, "_checkpoint", None):
            self.window.load_checkpoint(path)  # loads on the worker; the window stays responsive
        self.refresh_models()

    # ---------------------------------------------------------------- prompt
    def _focus_changed(self, _old: QWidget | None, new: QWidget | None) -> None:
        panel = self.window.prompt_panel
        if new in (panel.prompt_edit, panel.negative_edit):
            self._last_prompt_edit = new

    def insert(self, text: str) -> None:
        """Insert a LoRA tag or an embedding word at the cursor of the prompt box last used."""
        edit = self._last_prompt_edit
        cursor = edit.textCursor()
        before = edit.toPlainText()[: cursor.position()]
        if before and not before[-1].isspace() and before[-1] not in "(,":
            text = " " + text
        cursor.insertText(text)
        edit.setTextCursor(cursor)
        edit.setFocus()

    def resolve(self, params) -> None:
        """Fill params' LoRAs/embeddings/VAE; raises ValueError (MissingNetworks) before anything runs."""
        resolve_params(params, self.folders(), self.window.settings.vae)

    # ---------------------------------------------------------------- restore
    def check_restored(self, meta: ImageParams) -> None:
        """Look for what the image used and this machine lacks, in the I/O pool; report when done."""
        self.window.tasks.spawn(self._check(meta))

    async def _check(self, meta: ImageParams) -> None:
        current = getattr(self.window, "_checkpoint", None)
        try:
            missing = await self.window.tasks.run(find_missing, meta, self.folders(), current)
        except OSError as exc:
            log.warning("checking the restored image's networks failed: %s", exc)
            return
        self.missingFound.emit(missing)
        if missing:
            self._report(meta, missing)

    def _report(self, meta: ImageParams, missing: list[Missing]) -> None:
        lines = "\n".join("• " + m.describe() for m in missing)
        matches = [m for m in missing if m.match is not None and m.kind in ("lora", "embedding")]
        box = self.window.show_error("Missing models", f"This image was made with files not found here:\n\n{lines}")
        if matches:
            button = box.addButton("Use the matching files", QMessageBox.ButtonRole.AcceptRole)
            button.clicked.connect(lambda: self.use_matches(missing))
        model = next((m for m in missing if m.kind == "checkpoint" and m.match is not None), None)
        if model is not None:
            load = box.addButton(f"Load {model.match.name}", QMessageBox.ButtonRole.ActionRole)
            load.clicked.connect(lambda: self.window.load_checkpoint(model.match))

    def use_matches(self, missing: list[Missing]) -> None:
        panel = self.window.prompt_panel
        prompt, negative = use_matches(panel.prompt(), panel.negative_prompt(), missing)
        panel.set_prompts(prompt, negative)

    # ---------------------------------------------------------------- conversion
    def convert_current(self) -> None:
        current = getattr(self.window, "_checkpoint", None) or self.window.settings.checkpoint
        if current:
            self.window.tasks.spawn(self._convert(Path(current)))

    async def _convert(self, path: Path) -> None:
        self.window.statusBar().showMessage(f"Converting {path.name} to .safetensors…")
        try:
            out = await self.window.tasks.run(convert_to_safetensors, path)
        except (ValueError, engine.CheckpointError, OSError) as exc:
            self.window.show_error("Can't convert", str(exc))
            return
        self.window.statusBar().showMessage(f"Wrote {out.name} (the original {path.name} is kept)", 8000)
        self.refresh_models()
        self.converted.emit(str(out))
