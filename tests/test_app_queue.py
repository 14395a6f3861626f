"""The job queue in the real window: Generate while busy queues a snapshot; order, pause, remove, duplicate,
the queue surviving a restart (the interrupted job starts again), and reordering by drag and drop."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import os
import subprocess
import sys
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
from inkpunk_studio.queue import JobQueue, JobStore
from inkpunk_studio.worker import GenerationParams

REPO = Path(__file__).resolve().parents[1]


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


def _queue_three(window) -> None:
    for n, seed in ((1, 11), (2, 22), (3, 33)):
        set_small_params(window, prompt=f"nvinkpunk job {n}", steps=1, seed=seed)
        assert window.generate()


def test_pause_reorder_remove_and_duplicate_from_the_list(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    runs = _collect_finished(window)
    _click(qtbot, window, "queuePauseButton")
    assert window.queue.paused and window.findChild(QPushButton, "queuePauseButton").text() == "Resume"
    _queue_three(window)
    assert not window.host.busy and window.queue.waiting() == 3  # paused: nothing starts
    assert [r.split("\n")[0] for r in _rows(window)] == [f"⏸  nvinkpunk job {n}" for n in (1, 2, 3)]

    qlist = window.findChild(QListWidget, "queueList")
    qlist.setCurrentRow(2)
    _click(qtbot, window, "queueUpButton")  # 1 3 2
    assert qlist.currentRow() == 1
    qlist.setCurrentRow(2)
    qlist.setFocus()
    qtbot.keyClick(qlist, Qt.Key.Key_Delete)  # 1 3
    qlist.setCurrentRow(0)
    _click(qtbot, window, "queueDuplicateButton")  # 1 1' 3
    assert qlist.currentRow() == 1
    copy_seed = window.queue.jobs[1].params.seed
    assert copy_seed != 11 and [j.params.prompt for j in window.queue.jobs] == [
        "nvinkpunk job 1", "nvinkpunk job 1", "nvinkpunk job 3"]

    _click(qtbot, window, "queuePauseButton")  # resume: the three run one after another
    qtbot.waitUntil(lambda: len(runs) == 3, timeout=3 * RUN_TIMEOUT_MS)
    made = [(read_params(r[0]).prompt, read_params(r[0]).seed) for r in runs]
    assert made == [("nvinkpunk job 1", 11), ("nvinkpunk job 1", copy_seed), ("nvinkpunk job 3", 33)]
    qtbot.waitUntil(lambda: len(window.queue) == 0 and not window.host.busy, timeout=5000)


def test_cancel_drops_the_running_job_and_the_next_one_runs(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    runs = _collect_finished(window)
    set_small_params(window, prompt="nvinkpunk long", steps=150)
    assert window.generate()
    set_small_params(window, prompt="nvinkpunk short", steps=1)
    assert window.generate()
    qtbot.waitUntil(lambda: window.queue.progress.get(window.queue.running_id, 0) > 0, timeout=RUN_TIMEOUT_MS)
    assert _rows(window)[0].startswith("▶ ") and "%" in _rows(window)[0].split()[1]
    qlist = window.findChild(QListWidget, "queueList")
    qlist.setCurrentRow(0)
    assert not window.findChild(QPushButton, "queueUpButton").isEnabled()  # the running job stays first
    with qtbot.waitSignal(window.generationCancelled, timeout=RUN_TIMEOUT_MS):
        _click(qtbot, window, "queueRemoveButton")  # removing the running job cancels it
    qtbot.waitUntil(lambda: len(runs) == 1, timeout=RUN_TIMEOUT_MS)
    assert read_params(runs[0][0]).prompt == "nvinkpunk short"
    qtbot.waitUntil(lambda: len(window.queue) == 0, timeout=5000)


def test_the_queue_survives_a_restart_and_the_interrupted_job_starts_again(qtbot, open_window, tiny_checkpoint,
                                                                          tmp_path):
    data = tmp_path / "data"
    window = open_window(checkpoint=tiny_checkpoint, data_dir=data)
    set_small_params(window, prompt="nvinkpunk interrupted", steps=150, seed=5)
    assert window.generate()
    set_small_params(window, prompt="nvinkpunk waiting", steps=1, seed=6, width=128)
    assert window.generate()
    qtbot.waitUntil(lambda: window.queue.progress.get(window.queue.running_id, 0) > 0, timeout=RUN_TIMEOUT_MS)
    window.close()  # quits mid-run, as a crash would (the jobs are on disk since they were queued)

    again = open_window(checkpoint=tiny_checkpoint, data_dir=data, wait_ready=False)
    assert [j.params.prompt for j in again.queue.jobs] == ["nvinkpunk interrupted", "nvinkpunk waiting"]
    assert again.queue.jobs[1].params.width == 128
    cancelled = []
    again.generationCancelled.connect(lambda: cancelled.append(True))
    qtbot.waitUntil(lambda: again.queue.running_id == again.queue.jobs[0].id and again.host.busy,
                    timeout=RUN_TIMEOUT_MS)  # starts by itself once the model loads
    again.queue.set_paused(True)  # the running one goes on; the waiting one stays after a restart
    with qtbot.waitSignal(again.generationCancelled, timeout=RUN_TIMEOUT_MS):
        again.cancel()
    assert [j.params.prompt for j in again.queue.jobs] == ["nvinkpunk waiting"] and not again.host.busy
    again.close()

    third = open_window(checkpoint=tiny_checkpoint, data_dir=data)
    assert third.queue.paused and [j.params.seed for j in third.queue.jobs] == [6]
    assert not third.host.busy and "paused" in third.queue_view.title.text()
    runs = _collect_finished(third)
    third.queue.set_paused(False)
    qtbot.waitUntil(lambda: len(runs) == 1, timeout=RUN_TIMEOUT_MS)
    meta = read_params(runs[0][0])
    assert (meta.prompt, meta.seed, meta.width) == ("nvinkpunk waiting", 6, 128)
    assert Path(runs[0][0]).parent == data / "outputs"


def test_a_failed_job_leaves_the_queue_and_the_next_one_runs(qtbot, open_window, tiny_checkpoint, tmp_path):
    data = tmp_path / "data"
    (data / "models" / "Lora").mkdir(parents=True)
    (data / "models" / "Lora" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{oops")
    window = open_window(checkpoint=tiny_checkpoint, data_dir=data)
    runs = _collect_finished(window)
    errors = []
    window.errorShown.connect(lambda title, text: errors.append((title, text)))
    window.queue.set_paused(True)
    set_small_params(window, prompt="a fox <lora:broken:1>", steps=1)
    assert window.generate()
    assert window.queue.jobs[0].params.loras[0][0].name == "broken.safetensors"  # resolved at the click
    set_small_params(window, prompt="nvinkpunk after the failure", steps=1)
    assert window.generate()
    window.queue.set_paused(False)
    qtbot.waitUntil(lambda: len(runs) == 1, timeout=2 * RUN_TIMEOUT_MS)
    assert read_params(runs[0][0]).prompt == "nvinkpunk after the failure"
    assert errors[0][0] == "Generation failed" and "broken.safetensors" in errors[0][1]
    assert "The job left the queue; the next one starts." in errors[0][1]
    qtbot.waitUntil(lambda: len(window.queue) == 0, timeout=5000)


# The child: the queue's view on the queue's database, reordered by a mouse drag (argv: db path, source row,
# target row, "above"/"below" it). The drag loop runs nested inside the mouse move that starts it, so the rest
# of the gesture (moves onto the target, release) is queued on a timer first. Prints the rows' prompts.
_DRAG_CHILD = """
import sys
from PySide6.QtCore import QPoint, Qt, QTimer
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QListWidget
from inkpunk_studio.queue import JobQueue
from inkpunk_studio.widgets.queue_view import QueueView

app = QApplication([])
queue = JobQueue(sys.argv[1])
view = QueueView(queue)
view.resize(360, 260)
view.show()
assert QTest.qWaitForWindowExposed(view)
qlist = view.findChild(QListWidget, "queueList")
viewport, window = qlist.viewport(), view.windowHandle()
source, target = qlist.visualItemRect(qlist.item(int(sys.argv[2]))), qlist.visualItemRect(qlist.item(int(sys.argv[3])))
start = source.center()
end = QPoint(target.center().x(), target.top() + 2 if sys.argv[4] == "above" else target.bottom() - 2)
at = lambda point: viewport.mapTo(view, point)
drops = []
qlist.orderChanged.connect(drops.append)

def finish():
    for step in range(1, 9):
        QTest.mouseMove(window, at(start + (end - start) * step / 8))
    QTest.mouseRelease(window, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(end))

QTest.mousePress(window, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(start))
QTimer.singleShot(50, finish)
for dy in (4, 8, 12, 16, 20):  # past QApplication.startDragDistance() (10): the drag starts
    QTest.mouseMove(window, at(start + QPoint(0, dy if end.y() > start.y() else -dy)))
for _ in range(100):  # the order is emitted once the drop is over
    QTest.qWait(50)
    if drops:
        break
queue.close()
print("\\n".join(qlist.item(i).text().split("\\n")[0].split("  ", 1)[1] for i in range(qlist.count())))
"""


def _drag_in_child(db: Path, source: int, target: int, where: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), QT_QPA_PLATFORM="minimal")
    done = subprocess.run([sys.executable, "-c", _DRAG_CHILD, str(db), str(source), str(target), where],
                          check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def _stored_prompts(db: Path) -> list[str]:
    store = JobStore(db)
    try:
        jobs, notes = store.load()
    finally:
        store.close()
    assert notes == []
    return [job.params.prompt for job in jobs]


def test_drag_and_drop_in_the_queue_list_reorders_the_stored_queue(tmp_path):
    """Rows of ``queueList`` dragged with the mouse as a person would; the new order is in the database.

    Not under the offscreen platform the other tests use: its QOffscreenDrag ends every drag at once (no drag
    loop, the drop never happens), and a hand-made QDropEvent is refused by the list's InternalMove mode (its
    source() is None: Qt only knows a drag's source while a real drag runs). So the view runs in a child
    process on Qt's "minimal" platform, whose QSimpleDrag runs the real drag loop on the mouse events
    (QTest's, sent to the window as a windowing system would); the mouse press, moves and release go through
    the view's own drag start and drop, and the test reads the stored order back.
    """
    db = tmp_path / "queue.sqlite3"
    queue = JobQueue(db)
    for n in (1, 2, 3, 4):
        queue.add(GenerationParams(prompt=f"job {n}", width=64, height=64, steps=1, seed=n), tmp_path / "out")
    queue.close()

    assert _drag_in_child(db, 0, 3, "below") == ["job 2", "job 3", "job 4", "job 1"]  # the first to the end
    assert _stored_prompts(db) == ["job 2", "job 3", "job 4", "job 1"]
    assert _drag_in_child(db, 3, 1, "above") == ["job 2", "job 1", "job 3", "job 4"]  # between two rows
    assert _stored_prompts(db) == ["job 2", "job 1", "job 3", "job 4"]
    again = JobQueue(db)  # as the app reads it at the next start
    assert [job.params.seed for job in again.jobs] == [2, 1, 3, 4]
    again.close()
