"""Generate / Cancel buttons and the progress bar (step i/n, seconds per step, time left)."""

from __future__ import annotations

from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QProgressBar, QPushButton, QVBoxLayout, QWidget


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_text(info: dict) -> str:
    """"Step 3/20 · 0.42 s/step · 7 s left", prefixed with "Image 2/4 ·" for batches."""
    parts = []
    if info.get("count", 1) > 1:
        parts.append(f"Image {info['index'] + 1}/{info['count']}")
    parts.append(f"Step {info['step']}/{info['total']}")
    parts.append(f"{info['sec_per_step']:.2f} s/step")
    parts.append(f"{format_duration(info['eta'])} left")
    return " · ".join(parts)


class RunBar(QWidget):
    """The Generate/Cancel row and progress; ``set_mode`` switches what is enabled."""

    MODES = ("idle", "running", "cancelling", "unavailable")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("runBar")
        self.generate_button = QPushButton("Generate", self)
        self.generate_button.setObjectName("generateButton")
        self.generate_button.setToolTip("Generate (Ctrl+Enter); while an image is made, add to the queue")
        self.generate_button.setMinimumHeight(40)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.setToolTip("Stop the current generation (Esc)")
        self.cancel_button.setMinimumHeight(40)
        self.fast_check = QCheckBox("Fast", self)  # inkpunk_studio.fast_mode drives it
        self.fast_check.setObjectName("fastModeCheck")
        self.fast_check.setToolTip("Fast mode: a few-step LoRA (LCM-LoRA), 4 steps at CFG 1 and the tiny decoder; "
                                   "an image in seconds on a CPU. Off: your own sampler, steps and CFG again.")
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setObjectName("progressBar")
        self.progress_bar.setTextVisible(True)

        buttons = QHBoxLayout()
        buttons.setSpacing(8)
        buttons.addWidget(self.fast_check, 0)
        buttons.addWidget(self.generate_button, 3)
        buttons.addWidget(self.cancel_button, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        self.mode = ""
        self.set_mode("unavailable", "Waiting for a model")

    def set_mode(self, mode: str, message: str = "") -> None:
        """idle: ready to generate; running; cancelling; unavailable: no usable model (message says why)."""
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.generate_button.setEnabled(mode != "unavailable")  # while one runs, Generate queues the next
        self.cancel_button.setEnabled(mode == "running")
        self.generate_button.setProperty("busy", mode in ("running", "cancelling"))
        self.generate_button.style().unpolish(self.generate_button)
        self.generate_button.style().polish(self.generate_button)
        if mode == "running":
            self.progress_bar.setRange(0, 0)  # busy until the first step arrives
            self.progress_bar.setFormat(message or "Starting…")
        elif mode == "cancelling":
            self.progress_bar.setFormat("Cancelling…")
        else:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat(message or "Ready")

    def show_progress(self, info: dict) -> None:
        if self.mode != "running":
            return
        self.progress_bar.setRange(0, int(info["total"]))
        self.progress_bar.setValue(int(info["step"]))
        self.progress_bar.setFormat(progress_text(info))
