"""Start the desktop app: ``make_window()`` for an existing QApplication, ``main(argv)`` for everything.

``main`` parses ``--checkpoint PATH`` and ``--data-dir DIR``, sets up logging, the QApplication (names for
QSettings, icon, Fusion + the dark style sheet) and a qasync event loop, shows the window at once and lets
the model load on the worker thread in the background.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QFileDialog, QMainWindow, QMessageBox, QWidget

from . import STARTED, paths
from .widgets.theme import apply_theme

log = logging.getLogger(__name__)


def _app_icon() -> QIcon | None:
    icon_file = paths.resource_path("icon.png")
    return QIcon(str(icon_file)) if icon_file.exists() else None


def make_window(checkpoint: str | Path | None = None, data_dir: str | Path | None = None) -> QMainWindow:
    """Build (not show) the main window inside the running QApplication.

    ``checkpoint`` overrides the configured one for this session (no first-run dialog); ``data_dir`` replaces
    the per-user data folder and keeps the settings in ``<data_dir>/settings.ini``. Close the window (or call
    its ``shutdown()``) before dropping it: that stops the worker thread. Raises ``paths.FolderError`` when
    the data folder can't be created (``make_window_or_ask`` then offers another).
    """
    from .main_window import MainWindow
    from .settings import AppSettings

    app = QApplication.instance()
    if app is None:
        raise RuntimeError("make_window needs a QApplication; create one first")
    folder = paths.data_dir(data_dir)
    settings = AppSettings.for_data_dir(data_dir)
    window = MainWindow(settings, folder, checkpoint=str(checkpoint) if checkpoint else None)
    icon = _app_icon()
    if icon is not None:
        window.setWindowIcon(icon)
    return window


def ask_for_data_dir(error: paths.FolderError, parent: QWidget | None = None) -> Path | None:
    """Say why the data folder can't be used and let the person pick another; None when they quit."""
    box = QMessageBox(QMessageBox.Icon.Warning, "Can't use the data folder",
                      f"Inkpunk Studio keeps its images, favorites, models and settings in\n{error.folder}\n"
                      f"but can't create that folder: {error.reason}.\n\nChoose another folder for this "
                      "session (start with --data-dir FOLDER to use it every time), or quit.",
                      QMessageBox.StandardButton.NoButton, parent)
    box.setObjectName("dataDirErrorBox")
    choose = box.addButton("Choose Another Folder…", QMessageBox.ButtonRole.AcceptRole)
    box.addButton("Quit", QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(choose)
    while True:
        box.exec()
        if box.clickedButton() is not choose:
            return None
        start = error.folder.parent if error.folder.parent.is_dir() else Path.home()
        folder = QFileDialog.getExistingDirectory(parent, "Choose a folder for Inkpunk Studio's data",
                                                  str(start))
        if folder:
            return Path(folder)


def make_window_or_ask(checkpoint: str | Path | None = None,
                       data_dir: str | Path | None = None) -> QMainWindow | None:
    """``make_window``, but a data folder that can't be created is explained and another can be chosen
    (repeatedly, if that one fails too). None when the person quits instead."""
    while True:
        try:
            return make_window(checkpoint=checkpoint, data_dir=data_dir)
        except paths.FolderError as exc:
            log.warning("data folder unusable: %s", exc)
            data_dir = ask_for_data_dir(exc)
            if data_dir is None:
                return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="inkpunk-studio", description="Inkpunk Studio desktop app")
    parser.add_argument("--checkpoint", metavar="PATH", help="SD 1.x checkpoint (.safetensors/.ckpt) to load")
    parser.add_argument("--data-dir", metavar="DIR", help="keep images, models and settings in DIR")
    # Qt's own options (-platform, -style, ...) pass through to QApplication
    args, _unknown = parser.parse_known_args(argv)
    return args


def _install_logging() -> None:
    try:
        from . import logsetup
    except ImportError:
        logging.basicConfig(level=logging.INFO)
        return
    try:
        logsetup.install(paths.log_dir())
    except Exception:  # logging must never stop the app from starting
        logging.basicConfig(level=logging.INFO)
        log.exception("could not set up the log file")


def main(argv: list[str] | None = None) -> int:
    """Run the desktop app until its window closes; returns the exit code."""
    import qasync

    from .worker import set_app_loop

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    _install_logging()
    QApplication.setApplicationName(paths.APP_NAME)
    QApplication.setOrganizationName(paths.ORG_NAME)
    QApplication.setApplicationDisplayName("Inkpunk Studio")
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "inkpunk-studio", *argv])
    icon = _app_icon()
    if icon is not None:
        app.setWindowIcon(icon)
    apply_theme(app)

    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    set_app_loop(loop)
    window = make_window_or_ask(checkpoint=args.checkpoint, data_dir=args.data_dir)
    if window is None:
        log.info("no usable data folder: quitting")
        return 1
    app.aboutToQuit.connect(window.shutdown)
    window.show()
    # Once the event loop has shown it: how long a person waited for the window (the model loads behind it).
    QTimer.singleShot(0, lambda: log.info("window up %.2f s after start", time.perf_counter() - STARTED))
    with loop:
        loop.run_forever()
    return 0
