"""Never lose an image (issue 11): the output folder checked before a run, an image that can't be saved kept
in memory with Save As…, the model hash taken at load time, the caption from the job's own parameters
(issue 16), and the warning before a very large size with the time to expect."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path

import pytest
from fixtures_app import (  # noqa: F401  (pytest fixtures, used as arguments)
    RUN_TIMEOUT_MS,
    open_window,
    pngs,
    set_small_params,
    tiny_checkpoint,
)
from PySide6.QtWidgets import QMessageBox, QPushButton

from inkpunk_studio.fileio import TEMP_PREFIX, check_output_folder, describe_write_error
from inkpunk_studio.metadata import read_params
from inkpunk_studio.step_times import StepTimes, size_warning


def _use_output(window, folder: Path) -> None:
    window.settings.output_dir = str(folder)
    window.settings.sync()


# ---------------------------------------------------------------- plain functions
def test_check_output_folder(tmp_path):
    assert check_output_folder(tmp_path / "new" / "outputs") is None  # created
    assert (tmp_path / "new" / "outputs").is_dir()
    assert not [p for p in (tmp_path / "new" / "outputs").iterdir()]  # the probe file is gone
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert check_output_folder(blocker) == f"{blocker} is a file, not a folder."
    assert check_output_folder(blocker / "below") == f"{blocker} is a file, not a folder."
    full = check_output_folder(tmp_path, need_bytes=1 << 62)
    assert full is not None and "nearly full" in full and str(tmp_path) in full


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "is full"), (errno.EACCES, "not writable"),
                                             (errno.EROFS, "read-only"), (errno.EIO, "Input/output error")])
def test_write_errors_name_the_folder_never_the_temp_file(tmp_path, code, words):
    tmp = tmp_path / f"{TEMP_PREFIX}20260101-000000-1.png.1a2b3c4d"
    text = describe_write_error(OSError(code, "whatever the OS says", str(tmp)), tmp_path)
    assert words in text and str(tmp_path) in text
    assert TEMP_PREFIX not in text


def test_step_times_estimate_scales_by_pixels_and_persist(tmp_path):
    times = StepTimes(tmp_path / "step_times.json")
    assert times.estimate("cpu float32", 512, 512) is None
    times.record("cpu float32", 512, 512, 4.0)
    times.record("cpu float32", 768, 768, 10.0)
    times.record("cuda float16", 512, 512, 0.1)
    assert times.estimate("cpu float32", 1024, 1024) == (pytest.approx(10.0 * 1024 * 1024 / (768 * 768)), "768x768")
    assert times.estimate("cpu float32", 512, 640)[1] == "512x512"
    times.save()
    again = StepTimes(tmp_path / "step_times.json")
    assert again.times == times.times
    (tmp_path / "bad.json").write_text("{not json")
    assert StepTimes(tmp_path / "bad.json").times == {}


def test_size_warning_only_far_above_native():
    assert size_warning(768, 768, 25, 1, "cpu float32", None) is None
    assert size_warning(1024, 768, 25, 1, "cpu float32", None) is None
    text = size_warning(2048, 2048, 20, 2, "cpu float32", (150.0, "512x512"))
    assert "16×" in text and "2 min 30 s per step" in text and "1 h 40 min for 20 steps (2 images)" in text
    assert "512×512" in text
    assert "no speed has been measured" in size_warning(1024, 1024, 20, 1, "cpu float32", None)


# ---------------------------------------------------------------- the window
def test_model_hash_is_taken_at_load_so_a_moved_checkpoint_still_saves(qtbot, open_window, tiny_checkpoint,
                                                                      tmp_path):
    own = tmp_path / "inkpunk.safetensors"
    shutil.copyfile(tiny_checkpoint, own)
    expected = hashlib.sha256(own.read_bytes()).hexdigest()[:10]
    window = open_window(checkpoint=own)
    own.rename(tmp_path / "renamed.safetensors")
    (tmp_path / "renamed.safetensors").unlink()  # moved, then deleted: the loaded model still works
    set_small_params(window, steps=2)
    errors = []
    window.errorShown.connect(lambda title, text: errors.append((title, text)))
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    assert errors == []
    (path,) = finished.args[0]
    params = read_params(path)
    assert (params.model_name, params.model_hash) == ("inkpunk", expected)


def test_output_folder_that_is_a_file_is_refused_before_the_run(qtbot, open_window, tiny_checkpoint, tmp_path):
    window = open_window(checkpoint=tiny_checkpoint)
    blocker = tmp_path / "outputs-is-a-file"
    blocker.write_text("not a folder")
    _use_output(window, blocker)
    set_small_params(window, steps=2)
    with qtbot.waitSignal(window.errorShown, timeout=5000) as shown:
        assert not window.generate()
    title, text = shown.args
    assert title == "Can't save images to the output folder"
    assert f"{blocker} is a file, not a folder." in text
    assert not window.host.busy and window.run_bar.generate_button.isEnabled()
    assert blocker.read_text() == "not a folder"


def test_save_failing_mid_run_keeps_the_image_and_offers_save_as(qtbot, open_window, tiny_checkpoint, tmp_path):
    window = open_window(checkpoint=tiny_checkpoint)
    out = tmp_path / "out"
    _use_output(window, out)
    set_small_params(window, prompt="nvinkpunk kept in memory", steps=3)

    def break_folder(info: dict) -> None:  # after the run started: the folder is replaced by a file
        if info["step"] == 1 and out.is_dir():
            shutil.rmtree(out)
            out.write_text("now a file")

    window.host.progress.connect(break_folder)
    errors = []
    window.errorShown.connect(lambda title, text: errors.append((title, text)))
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    assert finished.args[0] == []
    assert [title for title, _ in errors] == ["Could not save the image"]
    text = errors[0][1]
    assert f"{out} is a file, not a folder." in text and "Save As" in text and TEMP_PREFIX not in text
    box = window.message_box
    assert box is not None and any(b.text() == "Save As…" for b in box.findChildren(QPushButton))
    # the image is on the canvas, with Save As… offered, and kept in memory
    assert window.canvas.image() is not None and window.canvas.path is None
    save_as = window.canvas_panel.save_as_button
    assert save_as.isVisibleTo(window) and window.canvas_panel.unsaved_key is not None
    assert window.canvas_panel.caption.text().startswith("Not saved")
    assert len(window.unsaved) == 1 and window.save_unsaved_action.isEnabled()

    dest = tmp_path / "elsewhere" / "rescued"
    dest.parent.mkdir()
    key = window.canvas_panel.unsaved_key
    with qtbot.waitSignal(window.unsaved.saved, timeout=10_000):
        window.unsaved.save_to(key, dest)
    rescued = dest.with_name("rescued.png")
    params = read_params(rescued)
    assert params is not None and (params.prompt, params.seed, params.steps) == ("nvinkpunk kept in memory", 1234, 3)
    assert len(window.unsaved) == 0 and not window.save_unsaved_action.isEnabled()
    assert not save_as.isVisibleTo(window)
    assert window.canvas.path == str(rescued)  # now that file: star and restore work on it
    assert window.canvas_panel.caption.text().startswith("rescued.png  ·  seed 1234")


def test_closing_with_an_unsaved_image_asks_first(qtbot, open_window, tiny_checkpoint, tmp_path):
    window = open_window(checkpoint=tiny_checkpoint)
    out = tmp_path / "out"
    _use_output(window, out)
    set_small_params(window, steps=2)

    def break_folder(info: dict) -> None:
        if info["step"] == 1 and out.is_dir():
            out.rmdir()
            out.write_text("now a file")

    window.host.progress.connect(break_folder)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS):
        assert window.generate()
    assert len(window.unsaved) == 1
    assert not window.close()  # refused: the image is only in memory
    box = window.unsaved.close_box
    assert box is not None and box.isVisible() and window.isVisible()
    box.button(QMessageBox.StandardButton.Cancel).click()
    qtbot.waitUntil(lambda: window.unsaved.close_box is None, timeout=5000)
    assert window.isVisible() and window.host.is_running()
    assert not window.close()
    window.unsaved.close_box.findChild(QPushButton, "closeAnywayButton").click()
    qtbot.waitUntil(lambda: not window.host.is_running(), timeout=10_000)
    assert not window.isVisible() and len(window.unsaved) == 0


def test_caption_comes_from_the_job_not_from_widgets_edited_meanwhile(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=3, sampler="euler")

    def edit_for_the_next_job(info: dict) -> None:
        if info["step"] == 1:
            window.params_panel.set_values(steps=40, sampler="ddim", width=128, height=128, seed=99)

    window.host.progress.connect(edit_for_the_next_job)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS):
        assert window.generate()
    caption = window.canvas_panel.caption.text()
    assert "seed 1234" in caption and "64×64" in caption and "3 steps" in caption, caption
    assert "Euler" in caption and "DDIM" not in caption, caption
    assert window.history_strip.paths()  # saved as usual


def test_checkpoint_error_names_the_file_once(qtbot, open_window, tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    window = open_window(checkpoint=empty, wait_ready=False)
    with qtbot.waitSignal(window.errorShown, timeout=RUN_TIMEOUT_MS) as shown:
        pass
    assert shown.args[1].count("empty.ckpt") == 1, shown.args[1]


def test_large_size_asks_first_with_the_expected_time(qtbot, open_window, tiny_checkpoint, tmp_path):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=2)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS):
        assert window.generate()  # 64x64: no question; the speed is measured and remembered
    device = window._device_key()
    assert window.step_times.estimate(device, 64, 64) is not None
    qtbot.waitUntil(lambda: (window.data_dir / "step_times.json").is_file(), timeout=10_000)
    window.step_times.record(device, 64, 64, 0.5)  # a known speed, for a known estimate

    set_small_params(window, steps=3, width=1024, height=1024)
    assert not window.generate()
    box = window.size_box
    assert isinstance(box, QMessageBox) and box.isVisible()
    assert "4× the pixels" in box.text()
    assert "2 min 08 s per step, 6 min 24 s for 3 steps" in box.text()  # 0.5 s x 256 x 3
    assert not window.host.busy
    box.button(QMessageBox.StandardButton.Cancel).click()
    qtbot.waitUntil(lambda: window.size_box is None, timeout=5000)
    assert not window.host.busy

    assert not window.generate()  # ask again, and go ahead this time
    cancelled = []
    window.generationCancelled.connect(lambda: cancelled.append(True))
    window.size_box.findChild(QPushButton, "generateAnywayButton").click()
    assert window.host.busy
    window.cancel()
    qtbot.waitUntil(lambda: cancelled == [True], timeout=RUN_TIMEOUT_MS)
    assert pngs(window.output_dir()) and len(pngs(window.output_dir())) == 1  # only the first, small run


def test_large_size_after_the_hires_pass_asks_first(qtbot, open_window, tiny_checkpoint):
    """The question (and the folder's space check) go by the saved size: a 512x512 first pass with a 2x hires
    fix makes 1024x1024 images, whose second pass runs its own steps at that size."""
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=3, width=512, height=512)
    device = window._device_key()
    window.step_times.record(device, 64, 64, 0.5)
    params = window.current_params()
    params.hires, params.hires_scale, params.hires_steps = True, 2.0, 2
    assert params.output_size == (1024, 1024) and params.output_steps == 2
    window.set_params(params)
    assert not window.generate()
    box = window.size_box
    assert isinstance(box, QMessageBox) and "1024×1024" in box.text() and "for 2 steps" in box.text()
    box.button(QMessageBox.StandardButton.Cancel).click()
    qtbot.waitUntil(lambda: window.size_box is None, timeout=5000)
    params.hires_width, params.hires_height = 512, 256  # Hires resize takes over from the scale
    assert params.output_size == (512, 256)
    params.hires = False
    assert params.output_size == (512, 512) and params.output_steps == 3


def test_cli_says_a_folder_is_a_folder(tmp_path, capsys):
    from inkpunk_studio.cli import main

    folder = tmp_path / "model.safetensors"
    folder.mkdir()
    assert main(["--checkpoint", str(folder), "--prompt", "x", "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert f"{folder} is a folder, not a checkpoint file" in err and "no checkpoint file" not in err
