# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)
"""Robustness of the GUI layer (issue 11): a Qt binding that corrupts reference counts, odd digits typed in
the number boxes, out-of-range sizes, data folders that can't be created, silent changes on restore."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest
from fixtures_app import open_window  # noqa: F401  (a pytest fixture, used as an argument)
from PySide6.QtCore import QEvent, Qt, QTimer
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox

ROOT = Path(__file__).resolve().parent.parent

# Emits Signal(int) and runs timer-driven slots (QTimer.singleShot and a QTimer's timeout) many times, and
# prints how far the reference counts of None and True moved. A healthy binding moves them by a handful
# (caches); PySide6 6.12.0 on Python 3.10/3.11 takes one from True per emit and one from None per
# singleShot until CPython aborts with "Fatal Python error: bool_dealloc".
_REFCOUNT_CHILD = textwrap.dedent("""
    import json, sys
    from PySide6.QtCore import QCoreApplication, QObject, QTimer, Signal

    N = int(sys.argv[1])

    class Emitter(QObject):
        number = Signal(int)
        flag = Signal(bool)

    class Ticker(QObject):
        def __init__(self):
            super().__init__()
            self.ticks = 0

        def tick(self):
            self.ticks += 1
            if self.ticks >= N:
                self.timer.stop()
                QTimer.singleShot(0, single)

    app = QCoreApplication([])
    received = [0]

    def receive(value):  # keeps no reference to the value
        received[0] += 1

    emitter = Emitter()
    emitter.number.connect(receive)
    emitter.flag.connect(receive)
    singles = [0]

    def single():
        singles[0] += 1
        if singles[0] >= N:
            app.quit()
        else:
            QTimer.singleShot(0, single)

    def counts():
        return sys.getrefcount(None), sys.getrefcount(True)

    for i in range(50):  # warm up caches before measuring
        emitter.number.emit(i)
    before = counts()
    for i in range(N):
        emitter.number.emit(i)
        emitter.flag.emit(i % 2 == 0)
    after_emit = counts()
    ticker = Ticker()
    ticker.timer = QTimer()
    ticker.timer.setInterval(0)
    ticker.timer.timeout.connect(ticker.tick)
    ticker.timer.start()
    app.exec()
    after_timers = counts()
    print(json.dumps({"emit": [after_emit[0] - before[0], after_emit[1] - before[1]],
                      "timers": [after_timers[0] - after_emit[0], after_timers[1] - after_emit[1]],
                      "received": received[0], "singles": singles[0],
                      "ticks": ticker.ticks}), flush=True)
""")


def test_qt_binding_keeps_reference_counts_of_none_and_true_flat() -> None:
    """Catches a Qt binding release that corrupts refcounts (PySide6 6.12.0 on Python < 3.12 aborts the app
    after ~150 images); pyproject.toml excludes the known one, this test catches the next."""
    n = 2000
    proc = subprocess.run(
        [sys.executable, "-c", _REFCOUNT_CHILD, str(n)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert proc.returncode == 0, (
        f"the Qt binding crashed emitting signals (exit {proc.returncode}): {proc.stderr.strip()[-400:]}"
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["received"] == 2 * n + 50 and result["singles"] == n and result["ticks"] == n
    none_emit, true_emit = result["emit"]
    none_timers, true_timers = result["timers"]
    # per event the leak is one reference; a few dozen over thousands of events would be caching
    for label, delta in (
        ("None after emits", none_emit),
        ("True after emits", true_emit),
        ("None after timer slots", none_timers),
        ("True after timer slots", true_timers),
    ):
        assert abs(delta) < 50, f"refcount of {label} moved by {delta} over {n} events: the Qt binding leaks"


def _spec_check_requirements(root: Path):
    """inkpunk_studio.spec's check_requirements, run against the pyproject.toml in ``root`` (the spec itself
    only runs inside PyInstaller)."""
    spec = (ROOT / "inkpunk_studio.spec").read_text(encoding="utf-8")
    tree = ast.parse(spec)
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check_requirements"]
    assert fn, "inkpunk_studio.spec has no check_requirements()"
    namespace = {"tomllib": pytest.importorskip("tomllib"), "ROOT": root}
    code = compile(ast.Module(fn, type_ignores=[]), "inkpunk_studio.spec", "exec")
    exec(code, namespace)  # noqa: S102 - our own spec's code
    return namespace["check_requirements"]


def test_pyproject_excludes_the_leaking_pyside_release() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pyside = [d for d in project["dependencies"] if d.lower().startswith("pyside6-essentials")]
    assert pyside and all("!=6.12.0" in d.replace(" ", "") for d in pyside), pyside


def test_bundle_spec_refuses_an_excluded_installed_release(tmp_path: Path) -> None:
    installed = version("PySide6-Essentials")
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\ndependencies = ["PySide6-Essentials>=6.6,!={installed}"]\n', encoding="utf-8"
    )
    with pytest.raises(SystemExit, match=f"PySide6-Essentials {re.escape(installed)} does not satisfy"):
        _spec_check_requirements(tmp_path)()
    (tmp_path / "pyproject.toml").write_text(
        '[project]\ndependencies = ["PySide6-Essentials>=6.6"]\n', encoding="utf-8"
    )
    _spec_check_requirements(tmp_path)()  # no error


# ---------------------------------------------------------------- number boxes typed by hand
@pytest.fixture
def panel(qtbot):
    import engine
    from inkpunk_studio.widgets.params_panel import ParamsPanel

    widget = ParamsPanel(engine.SAMPLERS, engine.DISPLAY_NAMES)
    qtbot.addWidget(widget)
    widget.show()
    return widget


def _type(qtbot, widget, text: str) -> None:
    """Real key events: QTest's keyClicks for Latin-1 (a French keyboard's ``²``), a QKeyEvent carrying the
    character for the rest (QTest asserts on characters it has no key code for, such as ``①``)."""
    for char in text:
        if ord(char) < 256:
            qtbot.keyClicks(widget, char)
            continue
        for kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease):
            QApplication.sendEvent(
                widget, QKeyEvent(kind, Qt.Key.Key_unknown, Qt.KeyboardModifier.NoModifier, char)
            )


def _retype(qtbot, line_edit, text: str) -> None:
    line_edit.setFocus()
    line_edit.selectAll()
    qtbot.keyClick(line_edit, Qt.Key.Key_Delete)
    _type(qtbot, line_edit, text)


@pytest.mark.parametrize("odd", ["²", "①", "٣"])
def test_seed_box_survives_superscripts_and_circled_digits(qtbot, panel, odd) -> None:
    spin = panel.seed_spin
    _retype(qtbot, spin.lineEdit(), "12" + odd)
    qtbot.keyClick(spin.lineEdit(), Qt.Key.Key_Return)
    if odd == "٣":  # an Arabic-Indic three is a decimal digit int() reads: 123
        assert spin.value() == 123
    else:
        assert spin.value() == 12  # the odd key was refused
    assert spin.lineEdit().text() == str(spin.value())


@pytest.mark.parametrize("which", ["width_combo", "height_combo"])
@pytest.mark.parametrize("odd", ["²", "①"])
def test_size_boxes_survive_superscripts_and_circled_digits(qtbot, panel, which, odd) -> None:
    combo = getattr(panel, which)
    _retype(qtbot, combo.lineEdit(), "7" + odd + "68")
    qtbot.keyClick(combo.lineEdit(), Qt.Key.Key_Return)
    assert combo.value() == 768
    assert combo.currentText() == "768"


@pytest.mark.parametrize("key", [Qt.Key.Key_Return, Qt.Key.Key_Tab])
def test_typing_4096_as_size_clamps_to_2048_and_says_so(qtbot, panel, key) -> None:
    notes: list[str] = []
    panel.noteShown.connect(notes.append)
    combo = panel.width_combo
    _retype(qtbot, combo.lineEdit(), "4096")
    qtbot.keyClick(combo.lineEdit(), key)
    assert combo.value() == 2048
    assert combo.currentText() == "2048"
    assert notes == ["width 4096 -> 2048 (the largest size is 2048)"]


def test_typed_size_off_the_grid_rounds_with_a_note(qtbot, panel) -> None:
    notes: list[str] = []
    panel.noteShown.connect(notes.append)
    _retype(qtbot, panel.height_combo.lineEdit(), "500")
    qtbot.keyClick(panel.height_combo.lineEdit(), Qt.Key.Key_Return)
    assert panel.height_combo.value() == 512
    assert notes == ["height 500 -> 512 (sizes are multiples of 64)"]


def test_full_width_digits_type_a_size(qtbot, panel) -> None:
    _retype(qtbot, panel.width_combo.lineEdit(), "７６８")
    qtbot.keyClick(panel.width_combo.lineEdit(), Qt.Key.Key_Return)
    assert panel.width_combo.value() == 768
    assert panel.width_combo.currentText() == "768"


# ---------------------------------------------------------------- restoring parameters says what changed
def test_restoring_a_huge_seed_says_it_was_capped(panel) -> None:
    from inkpunk_studio.widgets.seed_spin import MAX_SEED

    notes = panel.set_values(seed=99999999999999999999999)
    assert panel.seed_spin.value() == MAX_SEED
    assert notes == [f"seed 99999999999999999999999 -> {MAX_SEED} (seeds go up to {MAX_SEED})"]


def test_restoring_a_nan_cfg_keeps_the_old_value_and_says_so(panel) -> None:
    panel.cfg_spin.setValue(6.0)
    notes = panel.set_values(cfg_scale=float("nan"))
    assert panel.cfg_spin.value() == 6.0
    assert notes == ["CFG scale nan is not a number, kept 6"]
    assert panel.set_values(cfg_scale=float("inf")) == ["CFG scale inf is not a number, kept 6"]
    assert panel.set_values(cfg_scale=99.0) == ["CFG scale 99.0 -> 30"]


def test_restoring_in_the_window_shows_the_changes_in_the_status_line(open_window) -> None:
    from inkpunk_studio.metadata import ImageParams

    window = open_window()
    meta = ImageParams(
        prompt="a cat", seed=99999999999999999999999, cfg_scale=float("nan"), width=512, height=512
    )
    notes = window.apply_image_params(meta)
    assert len(notes) == 2
    message = window.statusBar().currentMessage()
    assert "seed 99999999999999999999999 ->" in message and "CFG scale nan is not a number" in message


# ---------------------------------------------------------------- folders that can't be created
def _when_visible(kind, act, tries: int = 200) -> None:
    """Once a top-level ``kind`` widget is showing (a modal dialog's own event loop runs meanwhile), act."""
    shown = [w for w in QApplication.topLevelWidgets() if isinstance(w, kind) and w.isVisible()]
    if shown:
        act(shown[0])
    elif tries:
        QTimer.singleShot(20, lambda: _when_visible(kind, act, tries - 1))


def _click(box: QMessageBox, text: str) -> None:
    [button] = [b for b in box.buttons() if b.text().startswith(text)]
    button.click()


def _pick_folder(folder: Path):
    def act(dialog: QFileDialog) -> None:
        dialog.setDirectory(str(folder))  # a folder dialog accepts the folder it shows
        dialog.accept()

    return act


def test_data_dir_given_as_a_file_is_explained_and_another_can_be_chosen(qtbot, tmp_path) -> None:
    from inkpunk_studio.app import make_window_or_ask

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file", encoding="utf-8")
    good = tmp_path / "good"
    good.mkdir()
    texts: list[str] = []

    def answer(box: QMessageBox) -> None:
        texts.append(box.text())
        _when_visible(QFileDialog, _pick_folder(good))
        _click(box, "Choose Another Folder")

    _when_visible(QMessageBox, answer)
    window = make_window_or_ask(data_dir=blocker / "sub")
    assert window is not None
    qtbot.addWidget(window)
    try:
        assert window.data_dir == good
        assert blocker.read_text(encoding="utf-8") == "a file"  # nothing lost
        [text] = texts
        assert str(blocker / "sub") in text and "a file is in the way" in text and "Traceback" not in text
    finally:
        window.close()
    assert not window.host.is_running()


def test_data_dir_problem_quit_returns_no_window(qtbot, tmp_path) -> None:
    from inkpunk_studio.app import make_window_or_ask

    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    _when_visible(QMessageBox, lambda box: _click(box, "Quit"))
    assert make_window_or_ask(data_dir=blocker) is None


def test_main_with_an_unusable_data_dir_quits_cleanly_without_a_traceback(tmp_path) -> None:
    """The real entry point in a subprocess: the message box (answered Quit) instead of a traceback dialog."""
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    child = textwrap.dedent(f"""
        import sys
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QApplication, QMessageBox
        app = QApplication(["inkpunk-studio"])
        def answer():
            for w in QApplication.topLevelWidgets():
                if isinstance(w, QMessageBox) and w.isVisible():
                    print("BOX:", w.windowTitle(), "|", w.text().replace(chr(10), " "), flush=True)
                    [b] = [b for b in w.buttons() if b.text() == "Quit"]
                    b.click()
                    return
            QTimer.singleShot(20, answer)
        QTimer.singleShot(0, answer)
        from inkpunk_studio.app import main
        sys.exit(main(["--data-dir", {str(blocker)!r}]))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", child],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "BOX: Can't use the data folder |" in proc.stdout and "a file is in the way" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_open_output_folder_that_cant_be_created_offers_another(qtbot, open_window, tmp_path) -> None:
    window = open_window()
    blocker = tmp_path / "blocker"
    blocker.write_text("x", encoding="utf-8")
    window.settings.output_dir = str(blocker / "outputs")
    errors: list[tuple[str, str]] = []
    window.errorShown.connect(lambda title, text: errors.append((title, text)))
    window.open_output_folder()  # no exception
    [(title, text)] = errors
    assert title == "Can't open the output folder" and "a file is in the way" in text
    chosen = tmp_path / "images"
    chosen.mkdir()
    _when_visible(QFileDialog, _pick_folder(chosen))
    _click(window.message_box, "Choose Output Folder")
    assert window.output_dir() == chosen


def test_settings_refuse_an_output_folder_that_cant_be_created(qtbot, tmp_path) -> None:
    from inkpunk_studio.widgets.settings_dialog import SettingsDialog, SettingsValues

    blocker = tmp_path / "blocker"
    blocker.write_text("x", encoding="utf-8")
    dialog = SettingsDialog(SettingsValues("", "auto", "auto", "", True), str(tmp_path / "default"))
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.output_edit.setText(str(blocker / "out"))
    dialog.accept()
    assert dialog.isVisible() and dialog.result() != dialog.DialogCode.Accepted
    assert "a file is in the way" in dialog.error_label.text()
    dialog.output_edit.setText(str(tmp_path / "new" / "out"))
    with qtbot.waitSignal(dialog.accepted, timeout=1000):
        dialog.accept()
    assert (tmp_path / "new" / "out").is_dir()


def test_describe_os_error_says_it_in_words(tmp_path) -> None:
    import errno

    from inkpunk_studio import paths

    assert "read-only" in paths.describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/x"))
    assert paths.describe_os_error(OSError(errno.ENOSPC, "No space left on device")) == "the disk is full"
    assert (
        paths.describe_os_error(OSError(errno.EROFS, "Read-only file system")) == "it is on a read-only drive"
    )


# ---------------------------------------------------------------- first-run dialog
def _cut_off(dialog) -> list[str]:
    """Visible labels and buttons that are narrower (or, wrapped, shorter) than their text needs."""
    from PySide6.QtWidgets import QLabel, QPushButton

    QApplication.processEvents()
    cut = []
    for widget in dialog.findChildren(QLabel) + dialog.findChildren(QPushButton):
        if not widget.isVisible() or not widget.text():
            continue
        if isinstance(widget, QLabel) and widget.wordWrap():
            if widget.height() < widget.heightForWidth(widget.width()):
                cut.append(
                    f"{widget.text()[:40]!r}: {widget.height()} < {widget.heightForWidth(widget.width())}"
                )
        elif widget.width() < widget.sizeHint().width():
            cut.append(f"{widget.text()[:40]!r}: {widget.width()} < {widget.sizeHint().width()}")
    return cut


@pytest.fixture
def first_run(qtbot, tmp_path):
    from huggingface_hub.utils import get_session

    from inkpunk_studio.first_run import FirstRunDialog, download_file
    from inkpunk_studio.widgets.theme import apply_theme
    from inkpunk_studio.worker import AsyncTasks

    client = type(get_session())()  # the Hub's HTTP client class, without its offline-mode guard

    def unreachable(dest_dir, on_progress, cancel):
        # the real transfer code against a host that can't exist (RFC 6761: .invalid never resolves)
        return download_file(
            "http://inkpunk-test.invalid/model.ckpt",
            dest_dir / "model.ckpt",
            on_progress,
            cancel,
            session=client,
            timeout=10,
        )

    apply_theme(QApplication.instance())  # the style sheet's fonts are what cut the text before
    tasks = AsyncTasks()
    dialog = FirstRunDialog(tasks, tmp_path / "models", download_fn=unreachable)
    qtbot.addWidget(dialog)
    dialog.open()
    yield dialog
    dialog.close()
    tasks.shutdown()
    client.close()


def test_first_run_dialog_shows_its_whole_text(first_run) -> None:
    assert _cut_off(first_run) == []


def test_offline_download_failure_says_no_connection_and_what_to_do(qtbot, first_run) -> None:
    first_run.download_button.click()
    assert first_run.progress.maximum() == 0  # busy while connecting
    qtbot.waitUntil(lambda: first_run.state == "failed", timeout=20_000)
    text = first_run.status.text()
    assert text.startswith("No internet connection") and "Errno" not in text
    assert "Retry download" in text and "Locate a checkpoint" in text
    assert first_run.download_button.text() == "Retry download" and first_run.locate_button.isEnabled()
    assert first_run.progress.maximum() > 0, "the progress bar still shows its busy animation"
    assert _cut_off(first_run) == []


def test_hub_offline_mode_failure_is_explained(qtbot, tmp_path) -> None:
    from huggingface_hub import constants

    from inkpunk_studio.first_run import describe_download_error, download_inkpunk

    assert constants.HF_HUB_OFFLINE, "tests run with HF_HUB_OFFLINE=1 (conftest.py)"
    with pytest.raises(Exception) as info:  # the real download function, refused by the Hub client
        download_inkpunk(tmp_path, lambda done, total: None, __import__("threading").Event())
    message = describe_download_error(info.value)
    assert "HF_HUB_OFFLINE" in message and "Locate a checkpoint" in message


def test_full_disk_and_unknown_download_errors_are_described() -> None:
    import errno

    from inkpunk_studio.first_run import describe_download_error

    assert describe_download_error(OSError(errno.ENOSPC, "No space left on device")).startswith(
        "The disk is full"
    )
    assert describe_download_error(OSError("HTTP 500 from x")) == "Download failed: HTTP 500 from x"


# ---------------------------------------------------------------- layering
def test_prompt_panel_counts_tokens_without_the_worker_module() -> None:
    """Widgets reach the engine through a small service (inkpunk_studio.tokens), not the worker (issue 16)."""
    child = (
        "import sys, inkpunk_studio.widgets.prompt_panel as p; "
        "print(p.count_prompt.__module__, 'inkpunk_studio.worker' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", child],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["inkpunk_studio.tokens", "False"]


def test_generate_pressed_while_a_size_is_half_typed_uses_what_the_box_shows(qtbot, open_window) -> None:
    window = open_window()
    notes: list[str] = []
    window.params_panel.noteShown.connect(notes.append)
    combo = window.params_panel.width_combo
    _retype(qtbot, combo.lineEdit(), "4096")
    assert combo.value() == 512  # still being typed
    window.generate()  # Ctrl+Enter from the box (no model here, so it stops after applying the edits)
    assert combo.value() == 2048 and combo.currentText() == "2048"
    assert notes == ["width 4096 -> 2048 (the largest size is 2048)"]
