"""Optional downloads after the first run: the fast-mode LoRAs and TAESD, one small dialog for each.

The transfer is first_run's (``download_file`` / ``hub_download``): bytes go to ``<name>.part`` and a later
attempt resumes with an HTTP Range request; the finished file is checked against the Hub's size and sha256.
:class:`DownloadDialog` shows what the file is and how big, then progress with Cancel (the part is kept:
Resume continues), a failure in words with Retry (offline included), or lets the person choose a local file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLayout,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .first_run import (
    DownloadCancelled,
    DownloadProgress,
    ProgressFn,
    describe_download_error,
    hub_download,
)

log = logging.getLogger(__name__)

FetchFn = Callable[[ProgressFn, threading.Event], Path]  # (on_progress, cancel) -> the finished file
LORA_FILTER = "LoRA files (*.safetensors *.pt *.ckpt *.bin);;All files (*)"


@dataclass(frozen=True)
class HubFile:
    """One file on the Hugging Face Hub and where it goes under a models folder."""

    repo_id: str
    filename: str
    dest: str  # relative to the models folder, e.g. "Lora/lcm-lora-sdv1-5.safetensors"
    title: str  # "LCM-LoRA for SD 1.5"
    size: str = ""  # "135 MB", for the words ("" when not known in advance)

    def target(self, models_dir: str | Path) -> Path:
        return Path(models_dir) / self.dest

    def fetcher(self, models_dir: str | Path) -> FetchFn:
        """The real download of this file into ``models_dir`` (resumable), for DownloadDialog."""
        dest = self.target(models_dir)
        return lambda on_progress, cancel: hub_download(self.repo_id, self.filename, dest, on_progress, cancel)


# madebyollin/taesd: diffusers' AutoencoderTiny layout, encoder and decoder in one file (engine.taesd)
TAESD = HubFile("madebyollin/taesd", "diffusion_pytorch_model.safetensors",
                "VAE-approx/taesd/diffusion_pytorch_model.safetensors", "TAESD, the tiny autoencoder for SD 1.x",
                "10 MB")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


class DownloadDialog(DownloadProgress, QDialog):
    """Non-blocking (``open()``) dialog for one optional file. Emits ``fileReady(path)`` and accepts when the
    download finished or a local file was chosen.

    States as the first-run dialog's: "choose", "downloading", "paused" (after Cancel; Resume continues from
    the partial file), "failed" (the reason in words, Retry), "done". ``choose_filter`` None: no local file.
    """

    fileReady = Signal(str)
    stateChanged = Signal(str)

    def __init__(self, tasks, file: HubFile, dest: Path, fetch: FetchFn, intro: str,
                 choose_filter: str | None = LORA_FILTER, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("downloadDialog")
        self.setWindowTitle(f"Download {file.title}")
        self._tasks, self._file, self._dest, self._fetch = tasks, file, Path(dest), fetch
        self._cancel: threading.Event | None = None
        self._last_report = 0.0
        self.state = ""
        size = f" ({file.size})" if file.size else ""
        self._label = f"Download{size}"

        text = QLabel(intro, self)
        text.setObjectName("downloadIntro")
        text.setWordWrap(True)
        text.setTextFormat(Qt.TextFormat.RichText)
        self.download_button = QPushButton(self._label, self)
        self.download_button.setObjectName("downloadButton")
        self.download_button.setProperty("accent", True)
        self.download_button.clicked.connect(self.start_download)
        self.choose_button = QPushButton("Choose a file…", self)
        self.choose_button.setObjectName("chooseFileButton")
        self.choose_button.clicked.connect(self._browse)
        self.choose_button.setVisible(choose_filter is not None)
        self._filter = choose_filter or ""
        self.progress = QProgressBar(self)
        self.progress.setObjectName("downloadProgress")
        self.status = QLabel("", self)
        self.status.setObjectName("downloadStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.cancel_button = QPushButton("Cancel download", self)
        self.cancel_button.setObjectName("cancelDownloadButton")
        self.cancel_button.clicked.connect(self.cancel_download)
        close = QPushButton("Close", self)
        close.clicked.connect(self.reject)

        buttons = QHBoxLayout()
        buttons.addWidget(self.choose_button)
        buttons.addWidget(self.download_button)
        bottom = QHBoxLayout()
        bottom.addWidget(self.cancel_button)
        bottom.addStretch(1)
        bottom.addWidget(close)
        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        layout.setSpacing(12)
        layout.addWidget(text)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(bottom)
        self.setMinimumWidth(480)
        self._set_state("choose")

    # --- a local file
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, f"Choose {self._file.title}", str(Path.home()), self._filter)
        if path:
            self.choose_file(path)

    def choose_file(self, path: str | Path) -> bool:
        """Use a file already on disk (it stays where it is); a missing one is refused with a reason."""
        path = Path(path)
        if not path.is_file():
            self.status.setText(f"{path} does not exist.")
            return False
        self._finish(path)
        return True

    # --- the download
    def start_download(self) -> None:
        if self.state == "downloading":
            return
        self._cancel = threading.Event()
        self._set_state("downloading")
        self._tasks.spawn(self._download(self._cancel))

    def cancel_download(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    async def _download(self, cancel: threading.Event) -> None:
        try:
            path = await self._tasks.run(self._fetch, self._report, cancel)
        except DownloadCancelled:
            self._set_state("paused")
            return
        except Exception as exc:  # offline, disk full, HTTP errors: in words, with Retry
            log.warning("downloading %s failed: %s", self._file.title, exc, exc_info=True)
            alternative = ("use Choose a file… if you already have it" if self.choose_button.isVisibleTo(self)
                           else f"put the file into {self._dest.parent} yourself")
            self._set_state("failed", describe_download_error(exc, alternative, f"{self._file.title} needs "
                                                              f"{self._file.size or 'some room'}"))
            return
        self._finish(Path(path))

    def _progress_text(self, done: int, total: int | None) -> str:
        return f"Downloading {self._file.title}: {_mb(done)}" + (f" of {_mb(total)}" if total else "")

    # --- states
    def _finish(self, path: Path) -> None:
        self._set_state("done", f"Using {path}")
        self.fileReady.emit(str(path))
        self.accept()

    def _alternative_button(self) -> QPushButton:
        return self.choose_button

    def _download_label(self) -> str:
        return self._label

    def _download_target(self) -> Path:
        return self._dest

    def _size_text(self, n: int) -> str:
        return _mb(n)

    def done(self, result: int) -> None:  # closing while downloading stops the transfer (the .part stays)
        self.cancel_download()
        super().done(result)
