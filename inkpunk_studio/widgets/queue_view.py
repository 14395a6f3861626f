"""The job queue's list (``queueList``) with its buttons: pause/resume, up, down, duplicate, remove.

Binds to a :class:`inkpunk_studio.queue.JobQueue`; reorders by drag and drop or the arrow buttons go straight
to the model. Removing the running job is the window's business (it cancels first): the view emits
``removeRequested`` and leaves the model alone.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..metadata import DISPLAY_NAMES
from ..queue import JobQueue, QueuedJob

_ID = Qt.ItemDataRole.UserRole
PROMPT_CHARS = 48


def job_text(job: QueuedJob, progress: float | None) -> str:
    """One line per job: state, prompt (shortened), size, sampler and steps, images."""
    p = job.params
    prompt = " ".join(p.prompt.split()) or "(no prompt)"
    if len(prompt) > PROMPT_CHARS:
        prompt = prompt[:PROMPT_CHARS - 1] + "…"
    state = "⏸" if progress is None else f"▶ {progress:.0%}"
    extra = f" · ×{p.batch_count}" if p.batch_count > 1 else ""
    extra += " · img2img" if p.init_image is not None else ""
    sampler = DISPLAY_NAMES.get(p.sampler, p.sampler)
    return f"{state}  {prompt}\n{p.width}×{p.height} · {sampler}, {p.steps} steps{extra}"


class _JobList(QListWidget):
    """A list whose internal drag-and-drop moves report the new order."""

    orderChanged = Signal(list)  # job ids

    def dropEvent(self, event: QDropEvent) -> None:
        super().dropEvent(event)  # QListWidget moves the rows itself for an internal move
        order = [self.item(i).data(_ID) for i in range(self.count())]
        QTimer.singleShot(0, self, lambda: self.orderChanged.emit(order))  # the rows are rebuilt: not mid-drop


class QueueView(QWidget):
    removeRequested = Signal(str)  # job id

    def __init__(self, queue: JobQueue, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("queueView")
        self.queue = queue
        self.title = QLabel(self)
        self.title.setObjectName("queueTitle")
        self.list = _JobList(self)
        self.list.setObjectName("queueList")
        self.list.setDragDropMode(QAbstractItemView.DragDropMode.InternalMove)
        self.list.setDefaultDropAction(Qt.DropAction.MoveAction)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setMaximumHeight(170)
        self.list.setWordWrap(True)
        self.pause_button = QPushButton(self)
        self.pause_button.setObjectName("queuePauseButton")
        self.pause_button.setCheckable(True)
        self.up_button = self._button("▲", "queueUpButton", "Run earlier", lambda: self._move(-1))
        self.down_button = self._button("▼", "queueDownButton", "Run later", lambda: self._move(1))
        self.duplicate_button = self._button("Duplicate", "queueDuplicateButton",
                                             "Queue a copy with a new seed", self._duplicate)
        self.remove_button = self._button("Remove", "queueRemoveButton",
                                          "Take the job out of the queue (a running one is cancelled)",
                                          self._remove)
        buttons = QHBoxLayout()
        buttons.setSpacing(4)
        for button in (self.pause_button, self.up_button, self.down_button, self.duplicate_button,
                       self.remove_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.title)
        layout.addWidget(self.list)
        layout.addLayout(buttons)

        remove = QAction("Remove", self.list)
        remove.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        remove.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        remove.triggered.connect(self._remove)
        self.list.addAction(remove)

        self.pause_button.toggled.connect(queue.set_paused)
        self.list.orderChanged.connect(queue.reorder)
        self.list.currentItemChanged.connect(self._update_buttons)
        queue.changed.connect(self.refresh)
        queue.pausedChanged.connect(self._show_paused)
        queue.progressChanged.connect(self._show_progress)
        self.refresh()

    def _button(self, text: str, name: str, tip: str, slot: Callable[[], object]) -> QPushButton:
        button = QPushButton(text, self)
        button.setObjectName(name)
        button.setToolTip(tip)
        button.clicked.connect(slot)
        return button

    # ------------------------------------------------------------ from the model
    def refresh(self) -> None:
        """Rebuild the rows from the model, keeping the selection."""
        selected = self.selected_id()
        self.list.clear()
        for job in self.queue.jobs:
            item = QListWidgetItem(job_text(job, self.queue.progress.get(job.id)))
            item.setData(_ID, job.id)
            item.setToolTip(job.params.prompt)
            flags = item.flags()
            if job.id == self.queue.running_id:  # the running job stays first
                flags &= ~Qt.ItemFlag.ItemIsDragEnabled
            item.setFlags(flags & ~Qt.ItemFlag.ItemIsDropEnabled)
            self.list.addItem(item)
            if job.id == selected:
                self.list.setCurrentItem(item)
        self._show_paused(self.queue.paused)
        self._update_buttons()

    def _show_paused(self, paused: bool) -> None:
        self.pause_button.blockSignals(True)
        self.pause_button.setChecked(paused)
        self.pause_button.blockSignals(False)
        self.pause_button.setText("Resume" if paused else "Pause")
        self.pause_button.setToolTip("Start the waiting jobs again" if paused
                                     else "Let the running job finish, then wait")
        waiting = self.queue.waiting()
        self.title.setText(f"Queue: {waiting} waiting" + (" (paused)" if paused else ""))

    def _show_progress(self, job_id: str, fraction: float) -> None:
        item = self._item(job_id)
        job = self.queue.get(job_id)
        if item is not None and job is not None:
            item.setText(job_text(job, fraction))

    def _item(self, job_id: str) -> QListWidgetItem | None:
        for i in range(self.list.count()):
            if self.list.item(i).data(_ID) == job_id:
                return self.list.item(i)
        return None

    def _update_buttons(self) -> None:
        job_id = self.selected_id()
        waiting = job_id is not None and job_id != self.queue.running_id
        self.up_button.setEnabled(waiting)
        self.down_button.setEnabled(waiting)
        self.duplicate_button.setEnabled(job_id is not None)
        self.remove_button.setEnabled(job_id is not None)

    # ------------------------------------------------------------ actions
    def selected_id(self) -> str | None:
        item = self.list.currentItem()
        return None if item is None else item.data(_ID)

    def select(self, job_id: str) -> None:
        item = self._item(job_id)
        if item is not None:
            self.list.setCurrentItem(item)

    def _move(self, delta: int) -> None:
        job_id = self.selected_id()
        if job_id is not None:
            self.queue.move(job_id, delta)

    def _duplicate(self) -> None:
        job_id = self.selected_id()
        if job_id is not None:
            self.select(self.queue.duplicate(job_id).id)

    def _remove(self) -> None:
        job_id = self.selected_id()
        if job_id is not None:
            self.removeRequested.emit(job_id)
