"""Logging for the app and the bundle: a rotating log file, safe std streams, and an excepthook.

A windowed PyInstaller build has no console: ``sys.stdout``/``sys.stderr`` are ``None`` there, so a stray
``print`` or a library's warning would raise, and an uncaught exception would vanish without a trace.
:func:`install` fixes all three:

* every log record goes to ``InkpunkStudio.log`` in the per-user log folder (rotated at 2 MB, 3 backups);
* missing std streams are replaced by ``os.devnull`` writers;
* uncaught exceptions (main thread, Python threads, Qt slots) are logged with their traceback and, when a
  ``QApplication`` exists, shown to the person in a message box that says where the log is.

Qt is imported lazily inside the hook, so the CLI can use this module without loading Qt.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import logging.handlers
import os
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from types import TracebackType
from typing import IO, Any

APP_NAME = "InkpunkStudio"
LOG_FILE_NAME = "InkpunkStudio.log"
CRASH_FILE_NAME = "crash.log"
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s"

log = logging.getLogger("inkpunk_studio")


class _State:
    file_handler: logging.handlers.RotatingFileHandler | None = None
    console_handler: logging.Handler | None = None
    log_path: Path | None = None
    crash_file: IO[str] | None = None
    dialog_bridge: Any = None  # QObject that shows the dialog on the GUI thread; made on first use
    dialog_open = False
    open_box: Any = None


_state = _State()
_lock = threading.Lock()


def default_log_dir() -> Path:
    """The per-user log folder, e.g. ``~/.local/state/InkpunkStudio/log`` on Linux."""
    import platformdirs

    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


def log_path() -> Path | None:
    """The current log file, or None before :func:`install`."""
    return _state.log_path


def install(log_dir: Path | None = None) -> Path:
    """Set up logging, std streams and the excepthook; returns the log file's path.

    Idempotent: calling it again with the same folder changes nothing; with another folder it moves the log
    file there. If the folder can't be created (read-only home, odd sandbox) the log goes to the temp folder.
    """
    with _lock:
        _ensure_std_streams()
        level = os.environ.get("INKPUNK_LOG_LEVEL", "INFO").upper()
        logging.getLogger().setLevel(getattr(logging, level, logging.INFO))
        path = _open_log_file(Path(log_dir) if log_dir is not None else default_log_dir())
        _install_console_handler()
        sys.excepthook = excepthook
        threading.excepthook = _thread_excepthook
        _install_qt_message_handler()
        return path


def _ensure_std_streams() -> None:
    # In a windowed build (console=False) there is no console: writes to None would raise AttributeError.
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115


def _open_log_file(log_dir: Path) -> Path:
    # An unwritable folder (read-only home, odd sandbox) falls back to the temp folder.
    for folder in (log_dir, Path(tempfile.gettempdir()) / APP_NAME):
        path = (folder / LOG_FILE_NAME).resolve()
        if _state.file_handler is not None and _state.log_path == path:
            return path
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=2 * 1024 * 1024, backupCount=3, encoding="utf-8"
            )
            break
        except OSError:
            if folder != log_dir:
                raise
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    if _state.file_handler is not None:
        root.removeHandler(_state.file_handler)
        _state.file_handler.close()
    root.addHandler(handler)
    _state.file_handler = handler
    _state.log_path = path
    _enable_faulthandler(path.parent)
    log.info("Inkpunk Studio log started (pid %d, Python %s)", os.getpid(), sys.version.split()[0])
    return path


def _enable_faulthandler(log_dir: Path) -> None:
    # A hard crash inside Qt or torch kills the process before any Python hook runs; faulthandler still
    # writes the Python stack of every thread into crash.log.
    try:
        crash = open(log_dir / CRASH_FILE_NAME, "a", encoding="utf-8")  # noqa: SIM115
    except OSError:
        return
    faulthandler.enable(file=crash, all_threads=True)
    if _state.crash_file is not None:
        _state.crash_file.close()
    _state.crash_file = crash


def _install_console_handler() -> None:
    # Warnings and errors also reach a terminal when there is one (a source run, not the windowed bundle).
    if _state.console_handler is not None or _is_devnull(sys.stderr):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    _state.console_handler = handler


def _is_devnull(stream: Any) -> bool:
    return getattr(stream, "name", None) == os.devnull


def _install_qt_message_handler() -> None:
    # Route qWarning()/qCritical() into the log, but only if the app has already loaded Qt.
    if "PySide6.QtCore" not in sys.modules:
        return
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler

    qt_log = logging.getLogger("qt")
    levels = {
        QtMsgType.QtDebugMsg: logging.DEBUG,
        QtMsgType.QtInfoMsg: logging.INFO,
        QtMsgType.QtWarningMsg: logging.WARNING,
        QtMsgType.QtCriticalMsg: logging.ERROR,
        QtMsgType.QtFatalMsg: logging.CRITICAL,
    }

    def handler(mode: Any, context: Any, message: str) -> None:
        qt_log.log(levels.get(mode, logging.WARNING), "%s", message)

    qInstallMessageHandler(handler)


def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """Log an uncaught exception with its traceback and show it in a dialog when a QApplication exists."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    try:
        log.critical("Uncaught exception", exc_info=(exc_type, exc, tb))
        details = "".join(traceback.format_exception(exc_type, exc, tb))
        _show_dialog(f"{exc_type.__name__}: {exc}", details)
    except Exception:  # noqa: BLE001 - the hook itself must never raise; fall back to the default printout
        with contextlib.suppress(Exception):
            sys.__excepthook__(exc_type, exc, tb)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    exc = args.exc_value if args.exc_value is not None else args.exc_type()
    excepthook(args.exc_type, exc, args.exc_traceback)


def _show_dialog(summary: str, details: str) -> None:
    if "PySide6.QtWidgets" not in sys.modules:
        return
    from PySide6.QtCore import QThread
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if not isinstance(app, QApplication):
        return
    bridge = _dialog_bridge(app)
    if QThread.currentThread() == app.thread():
        bridge.show_error(summary, details)
    else:
        bridge.requested.emit(summary, details)  # queued to the GUI thread: widgets live only there


def _dialog_bridge(app: Any) -> Any:
    if _state.dialog_bridge is not None:
        return _state.dialog_bridge
    from PySide6.QtCore import QObject, QThread, Signal, Slot
    from PySide6.QtWidgets import QMessageBox

    class ErrorDialogBridge(QObject):
        requested = Signal(str, str)

        def __init__(self) -> None:
            super().__init__()
            self.requested.connect(self.show_error)

        @Slot(str, str)
        def show_error(self, summary: str, details: str) -> None:
            if _state.dialog_open:  # one dialog at a time; the rest are in the log
                return
            box = QMessageBox(QMessageBox.Icon.Critical, "Inkpunk Studio", "Something went wrong.")
            where = f"\n\nThe details were written to:\n{_state.log_path}" if _state.log_path else ""
            box.setInformativeText(summary[:2000] + where)
            box.setDetailedText(details)
            box.setObjectName("errorDialog")
            _state.dialog_open = True
            box.finished.connect(_dialog_closed)
            if QThread.currentThread().loopLevel() > 0:
                # The event loop runs (an error in a slot): don't block it with a nested loop.
                # Keep a Python reference: a parentless box would be deleted when this slot returns.
                _state.open_box = box
                box.open()
            else:
                # No event loop yet or any more (an error at start or exit): block so the person sees it.
                box.exec()
                _state.dialog_open = False

    bridge = ErrorDialogBridge()
    if bridge.thread() != app.thread():
        bridge.moveToThread(app.thread())
    _state.dialog_bridge = bridge
    return bridge


def _dialog_closed(*_: Any) -> None:
    _state.dialog_open = False
    box, _state.open_box = _state.open_box, None
    if box is not None:
        box.deleteLater()
