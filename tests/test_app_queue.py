"""The job queue in the real window: Generate while busy queues a snapshot; order, pause, remove, duplicate,
and the queue surviving a restart (the interrupted job starts again)."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

from pathlib import Path

from fixtures_app import (  # noqa: F401  (pytest fixtures, used as arguments)
    RUN_TIMEOUT_MS,
    open_window,
    set_small_params,
    tiny_checkpoint,
)
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QListWidget, QPushButton

from inkpunk_studio.metadata import read_params


def _rows(window) -> list[str]:
    qlist = window.findChild(QListWidget, "queueList")
    return [qlist.item(i).text() for i in range(qlist.count())]


def _click(qtbot, window, name: str) -> None:
    button = window.findChild(QPushButton, name)
    assert button.isEnabled(), name
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _collect_finished(window) -> list[list[str]]:
    runs: list[list[str]] = []
    window.generationFinished.connect(runs.append)
    return runs


def test_generate_while_running_queues_a_snapshot_with_its_own_captions(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    runs = _collect_finished(window)
    set_small_params(window, prompt="nvinkpunk first job", steps=4, seed=111)
    assert window.generate() and window.host.busy
    assert window.run_bar.generate_button.isEnabled()  # Generate stays available: it queues
    set_small_params(window, prompt="nvinkpunk second job", steps=2, seed=222, width=128)
    assert window.generate()
    assert window.queue.waiting() == 1 and len(window.queue) == 2
    rows = _rows(window)
    assert rows[0].startswith("▶") and "first job" in rows[0] and "64×64 · DPM++ 2M, 4 steps" in rows[0]
    assert rows[1].startswith("⏸") and "second job" in rows[1] and "128×64" in rows[1]
    set_small_params(window, prompt="edited after both clicks", steps=3, seed=333)  # must not leak into them

    captions = []
    window.host.imageSaved.connect(lambda info: captions.append(window.canvas_panel.caption.text()))
    qtbot.waitUntil(lambda: len(runs) == 1, timeout=RUN_TIMEOUT_MS)
    first = read_params(runs[0][0])
    assert (first.prompt, first.seed, first.steps) == ("nvinkpunk first job", 111, 4)
    qtbot.waitUntil(lambda: len(runs) == 2, timeout=RUN_TIMEOUT_MS)
    second = read_params(runs[1][0])
    assert (second.prompt, second.seed, second.steps, second.width) == ("nvinkpunk second job", 222, 2, 128)
    assert "seed 111" in captions[0] and "64×64" in captions[0] and "4 steps" in captions[0]
    assert "seed 222" in captions[1] and "128×64" in captions[1] and "2 steps" in captions[1]
    assert window.history_strip.paths()[:2] == [runs[1][0], runs[0][0]]
    qtbot.waitUntil(lambda: not window.host.busy and len(window.queue) == 0, timeout=5000)
    assert _rows(window) == [] and window.run_bar.progress_bar.format() == "Ready"
