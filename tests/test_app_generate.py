"""Generating through the real window and worker thread with a tiny random-weight checkpoint."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

from pathlib import Path

from fixtures_app import (  # noqa: F401  (pytest fixtures, used as arguments)
    RUN_TIMEOUT_MS,
    Timer,
    leftovers,
    open_window,
    pngs,
    set_small_params,
    tiny_checkpoint,
)
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QProgressBar, QPushButton

from inkpunk_studio.metadata import read_params


def test_generate_saves_png_with_parameters_and_a_preview_per_step(qtbot, open_window, tiny_checkpoint, tmp_path):
    window = open_window(checkpoint=tiny_checkpoint, wait_ready=False)
    assert window.host.state == "loading"  # the window is up at once; Generate queues behind the load
    set_small_params(window, prompt="nvinkpunk a fox, ink splatter", steps=4)
    events = []
    window.host.progress.connect(events.append)

    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        qtbot.mouseClick(window.findChild(QPushButton, "generateButton"), Qt.MouseButton.LeftButton)
    paths = finished.args[0]

    assert len(paths) == 1
    path = Path(paths[0])
    assert path.is_file() and path.parent == tmp_path / "data" / "outputs"
    params = read_params(path)
    assert params is not None
    assert params.prompt == "nvinkpunk a fox, ink splatter"
    assert params.negative_prompt == "blurry"
    assert (params.seed, params.steps, params.width, params.height) == (1234, 4, 64, 64)
    assert (params.sampler, params.schedule, params.model_name) == ("dpmpp_2m", "karras", "tiny")
    # one event per step, each with a preview image at latent resolution
    assert [e["step"] for e in events] == [1, 2, 3, 4]
    assert all(e["preview"] is not None and e["preview"].width() == 8 for e in events)
    # the final image is on the canvas, in the history strip, and the UI is idle again
    assert window.canvas.path == str(path) and not window.canvas.is_preview()
    assert window.history_strip.paths()[0] == str(path)
    assert window.findChild(QPushButton, "generateButton").isEnabled()
    assert not window.findChild(QPushButton, "cancelButton").isEnabled()
    assert window.findChild(QProgressBar, "progressBar").format() == "Ready"
    assert window.params_panel.reuse_seed_button.isEnabled()
    assert window.model_label.text().startswith("Model ready: tiny (cpu, ")


def test_batch_with_random_seed_uses_consecutive_seeds_and_ctrl_enter(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=1, batch_count=3)
    window.params_panel.randomize_seed()
    totals = []
    window.host.progress.connect(totals.append)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    seeds = [read_params(p).seed for p in finished.args[0]]
    assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]
    assert [e["step"] for e in totals] == [1, 2, 3] and {e["total"] for e in totals} == {3}
    assert window.history_strip.paths()[:3] == list(reversed(finished.args[0]))  # newest first
    assert window.params_panel.seed_spin.value() == -1  # still "Random" for the next click
    window.params_panel.reuse_last_seed()
    assert window.params_panel.seed_spin.value() == seeds[-1]


def test_cancel_mid_run_returns_to_idle_quickly_and_saves_nothing(qtbot, open_window, tiny_checkpoint, tmp_path):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=100)
    steps = []
    window.host.progress.connect(steps.append)
    finished = []
    window.generationFinished.connect(finished.append)
    assert window.generate()
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=RUN_TIMEOUT_MS)

    timer = Timer()
    with qtbot.waitSignal(window.generationCancelled, timeout=5_000):
        qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert timer.elapsed < 1.0, f"cancel took {timer.elapsed:.2f} s"
    assert len(steps) < 100 and finished == []
    assert pngs(tmp_path / "data" / "outputs") == [] and leftovers(tmp_path / "data" / "outputs") == []
    assert window.findChild(QPushButton, "generateButton").isEnabled()
    assert not window.canvas.has_image()  # the half-done preview is gone

    # the worker is still usable
    set_small_params(window, steps=1)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        window.generate()
    # cancelling again puts the last finished image back in place of the preview
    set_small_params(window, steps=100)
    steps.clear()
    assert window.generate()
    qtbot.waitUntil(lambda: len(steps) >= 1 and window.canvas.is_preview(), timeout=RUN_TIMEOUT_MS)
    with qtbot.waitSignal(window.generationCancelled, timeout=5_000):
        window.findChild(QPushButton, "cancelButton").click()
    assert window.canvas.path == finished.args[0][0] and not window.canvas.is_preview()


def test_closing_during_a_run_cancels_and_stops_the_thread(qtbot, qtlog, open_window, tiny_checkpoint, tmp_path):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=100)
    steps = []
    window.host.progress.connect(steps.append)
    assert window.generate()
    qtbot.waitUntil(lambda: len(steps) >= 1, timeout=RUN_TIMEOUT_MS)

    timer = Timer()
    window.close()
    assert timer.elapsed < 5.0
    assert not window.host.is_running()
    outputs = tmp_path / "data" / "outputs"
    assert pngs(outputs) == [] and leftovers(outputs) == []
    assert not [r for r in qtlog.records if "Destroyed while thread" in r.message]
    # the session was saved on the way out
    assert window.settings.last_params()["steps"] == 100


def test_a_worker_host_dropped_without_shutdown_still_stops_its_thread(qtbot, tiny_checkpoint, tmp_path):
    import gc

    from inkpunk_studio.worker import GenerationJob, GenerationParams, WorkerHost

    host = WorkerHost()
    host.load_model(tiny_checkpoint, dtype="fp32")
    steps = []
    host.progress.connect(steps.append)
    job = GenerationJob(GenerationParams(prompt="x", steps=200, width=64, height=64), output_dir=tmp_path / "out")
    assert host.generate(job)
    qtbot.waitUntil(lambda: len(steps) >= 1, timeout=RUN_TIMEOUT_MS)
    thread = host._thread
    del host
    gc.collect()  # the finalizer cancels the job and waits for the thread
    assert job.cancel.is_set() and thread.isFinished()
    assert pngs(tmp_path / "out") == []
