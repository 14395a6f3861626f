"""First run: no checkpoint configured yet. Locate one on disk, or download Inkpunk Diffusion v2.

The download is a coroutine on the app's qasync loop; the blocking HTTP transfer runs in the I/O pool and
reports progress back to the GUI thread. It resumes: bytes go to ``<name>.part`` next to the destination and a
later attempt asks the server for the rest with an HTTP Range request (huggingface_hub >= 1.0 deletes its
own partial files on failure, so it can't resume for us). The finished file is checked against the size and,
when the Hub gives one, the sha256 ETag of its LFS object, then renamed into place.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QShowEvent
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

log = logging.getLogger(__name__)

REPO_ID = "Envvi/Inkpunk-Diffusion"
FILENAME = "Inkpunk-Diffusion-v2.ckpt"
DOWNLOAD_LABEL = "Download Inkpunk Diffusion v2 (2.1 GB)"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
CHECKPOINT_FILTER = "Stable Diffusion checkpoints (*.safetensors *.ckpt);;All files (*)"
_CHUNK = 1 << 20

ProgressFn = Callable[[int, "int | None"], None]
DownloadFn = Callable[[Path, ProgressFn, threading.Event], Path]


class DownloadCancelled(Exception):
    """The person cancelled; the partial file is kept for a resume."""


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download_file(url: str, dest: str | Path, on_progress: ProgressFn, cancel: threading.Event, *,
                  expected_size: int | None = None, sha256: str | None = None, headers: dict | None = None,
                  session=None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest``, resuming from ``dest.part``; raises DownloadCancelled or OSError."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (expected_size is None or dest.stat().st_size == expected_size):
        on_progress(dest.stat().st_size, dest.stat().st_size)
        return dest
    if session is None:
        from huggingface_hub.utils import get_session

        session = get_session()
    part = part_path(dest)
    done = part.stat().st_size if part.exists() else 0
    if expected_size is not None and done > expected_size:
        done = 0  # not ours (or the file changed upstream): start over
    request_headers = dict(headers or {})
    if done:
        request_headers["Range"] = f"bytes={done}-"
    with session.stream("GET", url, headers=request_headers, follow_redirects=True, timeout=timeout) as response:
        if response.status_code == 416 and expected_size is not None and done == expected_size:
            pass  # everything is already in the .part file
        elif response.status_code == 200:
            done = 0  # the server ignored the Range header: write from the start
        elif response.status_code != 206:
            raise OSError(f"download failed: HTTP {response.status_code} from {url}")
        total = expected_size
        if total is None:
            length = response.headers.get("Content-Length")
            total = done + int(length) if length and length.isascii() and length.isdigit() else None
        on_progress(done, total)
        if response.status_code in (200, 206):
            with open(part, "ab" if done else "wb") as f:
                for chunk in response.iter_bytes(_CHUNK):
                    if cancel.is_set():
                        raise DownloadCancelled("download cancelled")
                    f.write(chunk)
                    done += len(chunk)
                    on_progress(done, total)
                f.flush()
                os.fsync(f.fileno())
    if cancel.is_set():
        raise DownloadCancelled("download cancelled")
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        raise OSError(f"download incomplete: got {size} of {expected_size} bytes; try again to resume")
    if sha256 and _sha256(part, cancel) != sha256.lower():
        part.unlink(missing_ok=True)
        raise OSError("the downloaded file is corrupt (checksum mismatch) and was removed; try again")
    os.replace(part, dest)
    return dest


def _sha256(path: Path, cancel: threading.Event) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            if cancel.is_set():
                raise DownloadCancelled("download cancelled")
            digest.update(block)
    return digest.hexdigest()


def download_inkpunk(dest_dir: Path, on_progress: ProgressFn, cancel: threading.Event) -> Path:
    """Download (or resume) Inkpunk-Diffusion-v2.ckpt from the Hugging Face Hub into ``dest_dir``."""
    return hub_download(REPO_ID, FILENAME, Path(dest_dir) / FILENAME, on_progress, cancel)


def hub_download(repo_id: str, filename: str, dest: str | Path, on_progress: ProgressFn,
                 cancel: threading.Event) -> Path:
    """Download (or resume) `filename` of the Hub repository `repo_id` to `dest`, checked against the Hub's
    size and, for LFS files, sha256 (downloads.py uses it for the fast-mode LoRAs and TAESD)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo_id, filename)
    meta = get_hf_file_metadata(url)
    etag = (meta.etag or "").strip('"').lower()
    sha256 = etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None  # LFS ETags are the file's sha256
    return download_file(meta.location or url, Path(dest), on_progress, cancel,
                         expected_size=meta.size, sha256=sha256, headers=build_hf_headers())


_NETWORK_ERRORS = {"ConnectError", "NetworkError", "ConnectionError", "RemoteProtocolError", "ProxyError",
                   "LocalEntryNotFoundError"}
_TIMEOUT_ERRORS = {"TimeoutException", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout",
                   "Timeout"}
_RESOLVE_TEXTS = ("name or service not known", "temporary failure in name resolution",
                  "nodename nor servname", "getaddrinfo failed", "no address associated")
_ALTERNATIVE = "use Locate a checkpoint… if you already have the file"


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and all(exc is not e for e in seen) and len(seen) < 20:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def describe_download_error(exc: BaseException, alternative: str = _ALTERNATIVE,
                            size: str = "the checkpoint needs 2.1 GB") -> str:
    """A failed download in words, with what to do: not "[Errno -2] Name or service not known".

    Recognises errors by class name along the cause chain, so the HTTP stack's version (httpx, httpx2,
    requests) does not matter. `alternative` is the other way to get the file ("use Locate a checkpoint… if
    you already have the file"), `size` what the disk needs; both for the words (downloads.py reuses this).
    """
    what_to_do = ("Connect to the internet and press Retry download (it continues where it stopped), or "
                  f"{alternative}.")
    for cause in _causes(exc):
        names = {c.__name__ for c in type(cause).__mro__}
        if "OfflineModeIsEnabled" in names:
            return ("Downloads are switched off on this computer (the HF_HUB_OFFLINE environment variable "
                    f"is set). Unset it and press Retry download, or {alternative}.")
        if isinstance(cause, socket.gaierror) or any(t in str(cause).lower() for t in _RESOLVE_TEXTS):
            return f"No internet connection: the Hugging Face Hub could not be reached. {what_to_do}"
        if names & _TIMEOUT_ERRORS or isinstance(cause, (TimeoutError, socket.timeout)):
            return f"The Hugging Face Hub did not answer in time (a slow or broken connection). {what_to_do}"
        if names & _NETWORK_ERRORS:
            return f"The connection to the Hugging Face Hub failed. {what_to_do}"
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"The disk is full. Free some space ({size}) and press Retry download; it continues "
                    "where it stopped.")
        if isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            where = cause.filename or "permission denied"
            return (f"The models folder can't be written ({where}). Start the app with --data-dir FOLDER on "
                    f"a writable drive, or {alternative}.")
    return f"Download failed: {exc}"


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


class DownloadProgress:
    """What the download dialogs (this one and downloads.DownloadDialog) share: the download thread's reports,
    at most ten a second, shown on the GUI thread, and the buttons, bar and status line per state. A dialog has
    `state`, `progress`, `status`, `download_button`, `cancel_button`, `stateChanged`, `_tasks`,
    `_last_report`, and says the rest through `_alternative_button()` (locate/choose a file), `_download_label()`,
    `_download_target()` (the file the .part belongs to), `_size_text(n)` and `_progress_text(done, total)`."""

    def _report(self, done: int, total: int | None) -> None:  # the download thread
        now = time.monotonic()
        if now - self._last_report >= 0.1 or (total is not None and done >= total):
            self._last_report = now
            self._tasks.call_soon_threadsafe(self._show_progress, done, total)

    def _show_progress(self, done: int, total: int | None) -> None:
        if self.state != "downloading":
            return
        if total:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * done / total))
        else:
            self.progress.setRange(0, 0)
        self.status.setText(self._progress_text(done, total))

    def _set_state(self, state: str, message: str = "") -> None:
        self.state = state
        downloading = state == "downloading"
        self._alternative_button().setEnabled(not downloading)
        self.download_button.setEnabled(not downloading and state != "done")
        self.download_button.setText({"paused": "Resume download", "failed": "Retry download"}.get(
            state, self._download_label()))
        self.cancel_button.setVisible(downloading)
        self.progress.setVisible(state in ("downloading", "paused", "failed"))
        if downloading:
            self.progress.setRange(0, 0)
            message = message or "Connecting to the Hugging Face Hub…"
        elif self.progress.maximum() == 0:  # stop the busy animation: nothing is happening any more
            self.progress.setRange(0, 1000)
            self.progress.setValue(0)
        if state == "paused":
            part = part_path(self._download_target())
            kept = part.stat().st_size if part.exists() else 0
            message = message or (f"Download paused; {self._size_text(kept)} kept. Resume continues where it "
                                  "stopped." if kept else "Download cancelled.")
        self.status.setText(message)
        self._fit_height()
        self.stateChanged.emit(state)

    def _fit_height(self) -> None:
        """Grow to show wrapped text in full (a layout's minimum size ignores height-for-width)."""
        layout = self.layout()
        if layout is None:
            return
        layout.activate()
        need = self.heightForWidth(self.width())
        if need > self.height():
            self.resize(self.width(), need)


class FirstRunDialog(DownloadProgress, QDialog):
    """Non-blocking setup dialog (show it with ``open()``). Emits ``checkpointChosen(path)`` and accepts.

    States: "choose" (two big buttons), "downloading" (progress + Cancel), "paused" (after a cancel: Resume
    continues from the partial file), "failed" (message + Retry), "done".
    """

    checkpointChosen = Signal(str)
    stateChanged = Signal(str)

    def __init__(self, tasks, models_dir: Path, download_fn: DownloadFn = download_inkpunk,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("firstRunDialog")
        self.setWindowTitle("Welcome to Inkpunk Studio")
        self._tasks = tasks
        self._models_dir = Path(models_dir)
        self._download_fn = download_fn
        self._cancel: threading.Event | None = None
        self._task = None
        self._last_report = 0.0
        self.state = ""

        title = QLabel("Inkpunk Studio needs a Stable Diffusion 1.x checkpoint", self)
        title.setProperty("role", "title")
        title.setWordWrap(True)  # a large title font (or a translation) must wrap, not be cut at the edge
        intro = QLabel("Pick a <b>.safetensors</b> or <b>.ckpt</b> file you already have, or download "
                       "Inkpunk Diffusion v2 by Envvi from the Hugging Face Hub.", self)
        intro.setWordWrap(True)
        self.locate_button = QPushButton("Locate a checkpoint…", self)
        self.locate_button.setObjectName("locateButton")
        self.locate_button.clicked.connect(self._browse)
        self.download_button = QPushButton(DOWNLOAD_LABEL, self)
        self.download_button.setObjectName("downloadButton")
        self.download_button.setProperty("accent", True)
        self.download_button.clicked.connect(self.start_download)
        self.progress = QProgressBar(self)
        self.progress.setObjectName("downloadProgress")
        self.status = QLabel("", self)
        self.status.setObjectName("downloadStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.cancel_button = QPushButton("Cancel download", self)
        self.cancel_button.setObjectName("cancelDownloadButton")
        self.cancel_button.clicked.connect(self.cancel_download)
        self.later_button = QPushButton("Later", self)
        self.later_button.setToolTip("Close; choose a checkpoint later with File ▸ Open Checkpoint…")
        self.later_button.clicked.connect(self.reject)

        buttons = QHBoxLayout()
        buttons.addWidget(self.locate_button)
        buttons.addWidget(self.download_button)
        bottom = QHBoxLayout()
        bottom.addWidget(self.cancel_button)
        bottom.addStretch(1)
        bottom.addWidget(self.later_button)
        layout = QVBoxLayout(self)
        # The dialog is never narrower than its contents need (an explicit minimum width used to win over
        # the layout's, cutting the title and the download button at the dialog's edge).
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        layout.setSpacing(12)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(bottom)
        self._set_state("choose")

    # --- locate
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a checkpoint", str(Path.home()), CHECKPOINT_FILTER)
        if path:
            self.choose_file(path)

    def choose_file(self, path: str | Path) -> bool:
        """Accept an existing .safetensors/.ckpt file; otherwise say why and stay open."""
        path = Path(path)
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            self.status.setText(f"{path.name} is not a .safetensors or .ckpt file.")
            return False
        if not path.is_file():
            self.status.setText(f"{path} does not exist.")
            return False
        self._finish(path)
        return True

    # --- download
    def start_download(self) -> None:
        if self.state == "downloading":
            return
        self._cancel = threading.Event()
        self._set_state("downloading")
        self._task = self._tasks.spawn(self._download(self._cancel))

    def cancel_download(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    async def _download(self, cancel: threading.Event) -> None:
        try:
            path = await self._tasks.run(self._download_fn, self._models_dir, self._report, cancel)
        except DownloadCancelled:
            self._set_state("paused")
            return
        except Exception as exc:  # network errors, disk full, ...: say so and offer a retry
            log.warning("download failed: %s", exc, exc_info=True)
            self._set_state("failed", describe_download_error(exc))
            return
        self._finish(Path(path))

    def _progress_text(self, done: int, total: int | None) -> str:
        return f"Downloading {FILENAME}: {_gb(done)}" + (f" of {_gb(total)}" if total else "")

    # --- states
    def _finish(self, path: Path) -> None:
        self._set_state("done", f"Using {path}")
        self.checkpointChosen.emit(str(path))
        self.accept()

    def _alternative_button(self) -> QPushButton:
        return self.locate_button

    def _download_label(self) -> str:
        return DOWNLOAD_LABEL

    def _download_target(self) -> Path:
        return self._models_dir / FILENAME

    def _size_text(self, n: int) -> str:
        return _gb(n)

    def showEvent(self, event: QShowEvent) -> None:  # opened again after a finished setup: start over
        if self.state == "done":
            self._set_state("choose")
        super().showEvent(event)

    def done(self, result: int) -> None:  # closing while downloading stops the transfer (the .part stays)
        self.cancel_download()
        super().done(result)
