"""Fixtures for the app tests: a tiny random-weight checkpoint and real windows on isolated data folders.

Import them into a test module: ``from fixtures_app import open_window, tiny_checkpoint`` (tests/ is on
sys.path when pytest runs; pytest finds fixtures in the importing module's namespace).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

SMALL = {"width": 64, "height": 64, "seed": 1234}
MODEL_TIMEOUT_MS = 60_000  # a tiny model loads in ~1-3 s; generous for a loaded 2-core CI machine
RUN_TIMEOUT_MS = 60_000


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny random-weight SD1.x checkpoint for the whole session (64x64 images in ~a second)."""
    from engine.testing import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("models") / "tiny.safetensors")


@pytest.fixture
def open_window(qtbot, tmp_path):
    """Factory: ``open_window(checkpoint=None, data_dir=None, wait_ready=True, precision="fp32")`` -> a shown
    MainWindow on an isolated data folder (its settings.ini included).

    Every window is closed at teardown (which stops its worker thread); the test then checks the thread
    really finished, so a leaked running QThread fails the test that caused it.
    """
    from inkpunk_studio.app import make_window
    from inkpunk_studio.settings import AppSettings

    windows = []

    def factory(checkpoint=None, data_dir=None, wait_ready: bool = True, precision: str = "fp32"):
        data_dir = data_dir or tmp_path / "data"
        settings = AppSettings.for_data_dir(data_dir)
        settings.precision = precision  # "auto" may pick bf16 on a CPU, ~2x slower than fp32 for tiny models
        settings.sync()
        window = make_window(checkpoint=checkpoint, data_dir=data_dir)
        qtbot.addWidget(window)
        windows.append(window)
        window.show()
        if checkpoint is not None and wait_ready:
            wait_model(qtbot, window)
        return window

    yield factory
    for window in windows:
        window.close()
        assert not window.host.is_running(), "worker thread still running after close"


def wait_model(qtbot, window, state: str = "ready") -> None:
    qtbot.waitUntil(lambda: window.host.state == state, timeout=MODEL_TIMEOUT_MS)


def set_small_params(window, prompt: str = "nvinkpunk a tiny test cat", steps: int = 3, **extra) -> None:
    """Prompt plus a 64x64, few-step setup (sizes below the listed 256 are typed, as a person could)."""
    window.prompt_panel.set_prompts(prompt, "blurry")
    values = {**SMALL, "steps": steps, **extra}
    notes = window.params_panel.set_values(**values)
    assert notes == [], notes


def pngs(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.png")) if Path(folder).exists() else []


def leftovers(folder: Path) -> list[Path]:
    """Anything in an output folder that is not a finished PNG (temp files of interrupted writes)."""
    return [p for p in Path(folder).iterdir() if p.suffix != ".png"] if Path(folder).exists() else []


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
