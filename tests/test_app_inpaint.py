"""Inpainting and outpainting through the real window: a mask painted with mouse events on the canvas, a
generation with the tiny model on the real worker, and only the masked region changed."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

from pathlib import Path

import numpy as np
from fixtures_app import (  # noqa: F401  (pytest fixtures, used as arguments)
    RUN_TIMEOUT_MS,
    open_window,
    set_small_params,
    tiny_checkpoint,
)
from PIL import Image
from PySide6.QtCore import QPoint, Qt

from inkpunk_studio import editing
from inkpunk_studio.metadata import read_params


def _generate(qtbot, window) -> Path:
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    (path,) = finished.args[0]
    return Path(path)


def _at(window, x: float, y: float, size: tuple[int, int]) -> QPoint:
    rect = window.canvas.image_rect()
    return QPoint(round(rect.x() + (x + 0.5) * rect.width() / size[0]),
                  round(rect.y() + (y + 0.5) * rect.height() / size[1]))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_painted_mask_repaints_only_the_masked_region(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=3)
    first = _generate(qtbot, window)
    assert window.canvas.path == str(first)

    editor = window.mask_editor
    qtbot.mouseClick(editor.mask_button, Qt.MouseButton.LeftButton)
    assert editor.mask_mode() and editor.row.isVisible()
    editor.size_spin.setValue(12)
    editor.blur_spin.setValue(2)
    editor.strength_spin.setValue(0.9)
    canvas, size = window.canvas, (64, 64)
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=_at(window, 20, 32, size))
    for x in (26, 32, 38, 44):
        qtbot.mouseMove(canvas, _at(window, x, 32, size))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=_at(window, 44, 32, size))
    painted = np.asarray(editor.layer.to_pil())
    assert painted[32, 20:45].min() == 255 and painted[:20].max() == 0 and painted[45:].max() == 0

    set_small_params(window, steps=3, seed=99)
    second = _generate(qtbot, window)
    before, after = _pixels(first), _pixels(second)
    # brush radius 6 + blur kernel radius int(2.5 * 2 + 0.5) = 5 + antialiasing: nothing beyond 12 px moves
    assert np.array_equal(after[:20], before[:20]) and np.array_equal(after[45:], before[45:])
    assert np.array_equal(after[:, :7], before[:, :7]) and np.array_equal(after[:, 58:], before[:, 58:])
    assert np.abs(after[28:37, 22:43] - before[28:37, 22:43]).mean() > 2  # the masked stroke was repainted

    kept = editing.mask_path(second)
    assert kept.is_file() and np.array_equal(np.asarray(Image.open(kept)), painted)
    assert str(kept) not in window.history_strip.paths()
    meta = read_params(second)
    assert (meta.width, meta.height, meta.strength, meta.seed) == (64, 64, 0.9, 99)
    assert meta.extra.get("Mask blur") == "2"

    # the first image has no mask file: showing it keeps the (cleared) mask; the second brings its own back
    editor.clear_button.click()
    window.show_history_image(str(first))
    qtbot.waitUntil(lambda: window.canvas.path == str(first), timeout=5000)
    assert editor.layer.is_empty()
    window.show_history_image(str(second))
    qtbot.waitUntil(lambda: window.canvas.path == str(second), timeout=5000)
    assert np.array_equal(np.asarray(editor.layer.to_pil()), painted)


def test_outpainting_extends_the_image_and_keeps_the_old_part(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=2)
    first = _generate(qtbot, window)
    editor = window.mask_editor
    editor.outpaint_spin.setValue(32)
    editor.set_mask_mode(True)
    editor.blur_spin.setValue(0)
    qtbot.mouseClick(editor.outpaint_buttons["right"], Qt.MouseButton.LeftButton)
    assert window.canvas.image().width() == 96 and window.canvas.path is None

    grown = _generate(qtbot, window)
    before, after = _pixels(first), _pixels(grown)
    assert after.shape == (64, 96, 3)
    keep = 64 - editing.OUTPAINT_SEAM
    assert np.array_equal(after[:, :keep], before[:, :keep])  # the old image, outside the seam, untouched
    strip = after[:, 64:]
    assert strip.std() > 1  # the new part was generated, not left as the stretched edge
    assert (read_params(grown).width, read_params(grown).height) == (96, 64)


def test_restore_sets_the_inpainting_options_and_says_the_mask_is_not_in_the_image(qtbot, open_window,
                                                                                   tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=2)
    first = _generate(qtbot, window)
    editor = window.mask_editor
    editor.set_mask_mode(True)
    content = "fill" if "fill" in editing.supported_masked_content() else "original"
    assert editor.set_inpaint_values(only_masked=True, mask_padding=8, mask_blur=3, masked_content=content) == []
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 40, 40))
    editor.layer.set_pil(mask, undoable=False)
    second = _generate(qtbot, window)
    with Image.open(second) as image:
        text = image.info["parameters"]
    assert "Mask blur: 3, Inpaint area: Only masked, Masked area padding: 8" in text
    assert ("Masked content: fill" in text) == (content == "fill")

    def options() -> tuple:
        return (editor.only_masked_check.isChecked(), editor.padding_spin.value(), editor.blur_spin.value(),
                editor.content_combo.currentData())

    editor.set_inpaint_values(only_masked=False, mask_padding=40, mask_blur=9, masked_content="original")
    window.restore_from_file(str(second))
    qtbot.waitUntil(lambda: editor.only_masked_check.isChecked(), timeout=5000)
    assert options() == (True, 8, 3, content)
    assert editing.MASK_NOT_STORED in window.statusBar().currentMessage()
    # a txt2img picture: the whole picture again, blur and content as they were, and no word about a mask
    notes = window.apply_image_params(read_params(first))
    assert options() == (False, 8, 3, content) and editing.MASK_NOT_STORED not in notes
    assert editor.set_inpaint_values(mask_blur=99, masked_content="sparkles") == [
        "mask blur 99 -> 64", "masked content 'sparkles' is not available"]
