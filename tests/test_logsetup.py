"""inkpunk_studio.logsetup: the log file, missing std streams, and the excepthook (file + dialog)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from inkpunk_studio import logsetup

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter: install() changes process-wide hooks, so keep it out of pytest's."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_install_writes_log_file_and_is_idempotent(tmp_path: Path) -> None:
    proc = _run(
        """
        import logging, sys
        from pathlib import Path
        from inkpunk_studio import logsetup
        first = logsetup.install(Path(sys.argv[1]))
        count = len(logging.getLogger().handlers)
        second = logsetup.install(Path(sys.argv[1]))
        assert first == second, (first, second)
        assert len(logging.getLogger().handlers) == count, logging.getLogger().handlers
        assert sys.excepthook is logsetup.excepthook
        logging.getLogger("engine.test").info("hello from the engine")
        print(first)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    log_file = Path(proc.stdout.strip())
    assert log_file == (tmp_path / "InkpunkStudio.log").resolve()
    text = log_file.read_text(encoding="utf-8")
    assert "hello from the engine" in text
    assert "Inkpunk Studio log started" in text


def test_missing_std_streams_are_replaced(tmp_path: Path) -> None:
    # What a windowed (console=False) PyInstaller build looks like: no stdout, no stderr.
    proc = _run(
        """
        import sys, logging
        from pathlib import Path
        sys.stdout = None
        sys.stderr = None
        from inkpunk_studio import logsetup
        path = logsetup.install(Path(sys.argv[1]))
        print("this must not raise")
        sys.stderr.write("nor this\\n")
        logging.getLogger("x").warning("a warning with no console")
        path.with_name("ok").write_text("ok")
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ok").read_text() == "ok"
    assert "a warning with no console" in (tmp_path / "InkpunkStudio.log").read_text(encoding="utf-8")


def test_uncaught_exception_lands_in_the_log(tmp_path: Path) -> None:
    proc = _run(
        """
        import sys, threading
        from pathlib import Path
        from inkpunk_studio import logsetup
        logsetup.install(Path(sys.argv[1]))
        def worker():
            raise ValueError("thread went wrong")
        t = threading.Thread(target=worker, name="worker-1")
        t.start(); t.join()
        raise RuntimeError("boom at top level")
        """,
        tmp_path,
    )
    assert proc.returncode == 1
    text = (tmp_path / "InkpunkStudio.log").read_text(encoding="utf-8")
    assert "Uncaught exception" in text
    assert "RuntimeError: boom at top level" in text
    assert "ValueError: thread went wrong" in text
    assert "Traceback (most recent call last)" in text
    # A terminal still sees it too (WARNING and up are echoed to a real stderr).
    assert "boom at top level" in proc.stderr


def test_unwritable_log_dir_falls_back_to_temp(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    proc = _run(
        """
        import sys
        from pathlib import Path
        from inkpunk_studio import logsetup
        print(logsetup.install(Path(sys.argv[1]) / "file-not-dir" / "logs"))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_file()


def _error_dialogs() -> list[QMessageBox]:
    return [
        w
        for w in QApplication.topLevelWidgets()
        if isinstance(w, QMessageBox) and w.objectName() == "errorDialog" and w.isVisible()
    ]


def _exc_info(message: str) -> tuple:
    try:
        raise RuntimeError(message)
    except RuntimeError:
        return sys.exc_info()


def _run_loop(ms: int, *actions) -> None:
    """Run a real event loop (loopLevel 1, as under app.exec()) for ms milliseconds."""
    loop = QEventLoop()
    for delay, action in actions:
        QTimer.singleShot(delay, action)
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def test_dialog_while_event_loop_runs_does_not_block(qapp) -> None:
    seen: list[str] = []

    def collect() -> None:
        for box in _error_dialogs():
            seen.append(box.informativeText() + "\n" + box.detailedText())
            box.close()

    _run_loop(1500, (0, lambda: logsetup.excepthook(*_exc_info("slot failed"))), (300, collect))
    assert len(seen) == 1
    assert "RuntimeError: slot failed" in seen[0]
    assert "Traceback" in seen[0]
    assert not _error_dialogs()


def test_dialog_from_worker_thread_appears_on_gui_thread(qapp) -> None:
    seen: list[str] = []

    def fail_in_thread() -> None:
        t = threading.Thread(target=lambda: logsetup.excepthook(*_exc_info("worker failed")))
        t.start()
        t.join()

    def collect() -> None:
        for box in _error_dialogs():
            assert box.thread() == qapp.thread()
            seen.append(box.informativeText())
            box.close()

    _run_loop(1500, (0, fail_in_thread), (500, collect))
    assert seen and "worker failed" in seen[0]


def test_dialog_without_event_loop_is_modal_until_closed(qapp) -> None:
    # At start-up or exit there is no running loop: the dialog blocks so the person gets to read it.
    seen: list[str] = []

    def close_it() -> None:
        for box in _error_dialogs():
            seen.append(box.informativeText())
            box.done(0)

    QTimer.singleShot(300, close_it)
    logsetup.excepthook(*_exc_info("startup failed"))  # returns once close_it has run
    assert seen and "startup failed" in seen[0]
    assert not logsetup._state.dialog_open
