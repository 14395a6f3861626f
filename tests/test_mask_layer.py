"""The canvas mask: strokes with real mouse events, eraser, brush size keys, undo/redo, invert, the exported
"L" image, masks kept beside their images, outpainting's extended canvas and Lanczos upscaling."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QImage, QWheelEvent
from PySide6.QtWidgets import QApplication

from inkpunk_studio import editing
from inkpunk_studio.widgets.canvas import CanvasPanel
from inkpunk_studio.widgets.mask_editor import MaskEditor, qimage_to_pil

SIZE = 64


@pytest.fixture
def editor(qtbot):
    panel = CanvasPanel()
    qtbot.addWidget(panel)
    panel.resize(400, 400)
    editor = MaskEditor(panel)
    image = QImage(SIZE, SIZE, QImage.Format.Format_RGB32)
    image.fill(QColor(40, 80, 120))
    panel.canvas.set_image(image, None)
    panel.show()
    qtbot.waitExposed(panel)
    editor.set_mask_mode(True)
    return editor


def at(editor: MaskEditor, x: float, y: float) -> QPoint:
    """The widget position of image pixel (x, y)."""
    rect = editor.canvas.image_rect()
    return QPoint(round(rect.x() + (x + 0.5) * rect.width() / SIZE), round(rect.y() + (y + 0.5) * rect.height() / SIZE))


def stroke(qtbot, editor: MaskEditor, points: list[tuple[int, int]]) -> None:
    canvas = editor.canvas
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=at(editor, *points[0]))
    for point in points[1:]:
        qtbot.mouseMove(canvas, at(editor, *point))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=at(editor, *points[-1]))


def mask_array(editor: MaskEditor) -> np.ndarray:
    return np.asarray(editor.layer.to_pil())


def test_mask_mode_shows_the_row_and_a_blank_mask_at_image_resolution(editor):
    assert editor.row.isVisible() and editor.mask_button.isChecked()
    mask = editor.layer.to_pil()
    assert mask.mode == "L" and mask.size == (SIZE, SIZE)
    assert editor.layer.is_empty() and editor.inpaint_inputs() is None
    editor.set_mask_mode(False)
    assert not editor.row.isVisible() and not editor.brush.active


def test_a_mouse_stroke_paints_white_along_its_path_only(qtbot, editor):
    editor.size_spin.setValue(8)
    stroke(qtbot, editor, [(10, 32), (30, 32), (50, 32)])
    mask = mask_array(editor)
    assert mask[32, 10] == 255 and mask[32, 30] == 255 and mask[32, 50] == 255
    assert mask[10, 30] == 0 and mask[55, 30] == 0  # rows far from the stroke stay black
    assert mask[:, 0].max() == 0 and mask[:, 60:].max() == 0  # a brush of 8 px reaches 4 px past the ends
    image, exported = editor.inpaint_inputs()
    assert image.mode == "RGB" and image.size == (SIZE, SIZE) and image.getpixel((5, 5)) == (40, 80, 120)
    assert exported.mode == "L" and np.array_equal(np.asarray(exported), mask)


def test_eraser_undo_redo_clear_and_invert(qtbot, editor):
    editor.size_spin.setValue(10)
    stroke(qtbot, editor, [(5, 20), (58, 20)])
    painted = mask_array(editor).copy()
    editor.eraser_button.click()
    stroke(qtbot, editor, [(32, 10), (32, 30)])
    erased = mask_array(editor)
    assert erased[20, 32] == 0 and erased[20, 10] == 255
    assert editor.undo_button.isEnabled()
    editor.undo_button.click()
    assert np.array_equal(mask_array(editor), painted)
    editor.redo_button.click()
    assert np.array_equal(mask_array(editor), erased)
    editor.invert_button.click()
    assert np.array_equal(mask_array(editor), 255 - erased)
    editor.clear_button.click()
    assert editor.layer.is_empty()
    editor.layer.undo_stack.undo()  # the clear
    editor.layer.undo_stack.undo()  # the invert
    assert np.array_equal(mask_array(editor), erased)


def test_brush_size_keys_and_ctrl_wheel(qtbot, editor):
    editor.size_spin.setValue(40)
    qtbot.mouseClick(editor.canvas, Qt.MouseButton.LeftButton, pos=at(editor, 2, 2))  # gives it the focus
    qtbot.keyClick(editor.canvas, Qt.Key.Key_BracketRight)
    bigger = editor.layer.brush_size
    assert bigger > 40 and editor.size_spin.value() == bigger
    qtbot.keyClick(editor.canvas, Qt.Key.Key_BracketLeft)
    qtbot.keyClick(editor.canvas, Qt.Key.Key_BracketLeft)
    assert editor.layer.brush_size < 40
    before = editor.layer.brush_size
    wheel = QWheelEvent(QPointF(50, 50), QPointF(50, 50), QPoint(0, 0), QPoint(0, 240), Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.ControlModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(editor.canvas, wheel)  # through the canvas's event filter, as a real wheel
    assert editor.layer.brush_size > before


def test_the_overlay_and_brush_circle_are_drawn_over_the_image(qtbot, editor):
    editor.size_spin.setValue(16)
    stroke(qtbot, editor, [(5, 5), (20, 5)])
    qtbot.mouseMove(editor.canvas, at(editor, 40, 40))
    shot = editor.canvas.grab().toImage()
    inside = shot.pixelColor(at(editor, 12, 5))
    outside = shot.pixelColor(at(editor, 12, 52))
    assert (outside.red(), outside.green(), outside.blue()) == (40, 80, 120)
    assert inside.red() > 120  # magenta over blue


def test_a_new_image_size_resets_the_mask_and_a_saved_mask_comes_back(qtbot, editor, tmp_path):
    stroke(qtbot, editor, [(10, 10), (20, 20)])
    picture = Image.new("RGB", (96, 64), (1, 2, 3))
    path = tmp_path / "pic.png"
    picture.save(path)
    saved = Image.new("L", (96, 64), 0)
    saved.paste(255, (0, 0, 30, 30))
    assert editing.save_mask(saved, path) == tmp_path / "pic.mask.png"
    editor.panel.show_file(QImage(str(path)), str(path))
    assert np.array_equal(mask_array(editor), np.asarray(saved))
    other = QImage(80, 80, QImage.Format.Format_RGB32)
    other.fill(0)
    editor.canvas.set_image(other, None)
    assert editor.layer.size().width() == 80 and editor.layer.is_empty()


def test_outpaint_button_extends_the_image_and_masks_the_new_part(qtbot, editor):
    editor.outpaint_spin.setValue(16)
    editor.outpaint_buttons["right"].click()
    image, mask = editor.inpaint_inputs()
    assert image.size == (SIZE + 16, SIZE) and mask.size == image.size
    m = np.asarray(mask)
    assert m[:, SIZE:].min() == 255 and m[:, : SIZE - editing.OUTPAINT_SEAM].max() == 0
    assert 0 < m[30, SIZE - 8] < 255  # the soft seam
    assert image.getpixel((SIZE + 10, 30)) == (40, 80, 120)  # the edge stretched outwards
    assert editor.canvas.path is None and editor.panel.caption.text().startswith("Extended right")


@pytest.mark.parametrize("side", editing.SIDES)
def test_extend_canvas_each_side(side):
    image = Image.new("RGB", (48, 32), (9, 9, 9))
    image.putpixel((0, 0), (200, 0, 0))
    old_mask = Image.new("L", (48, 32), 0)
    old_mask.putpixel((47, 31), 255)
    grown, mask = editing.extend_canvas(image, side, 8, old_mask, seam=4)
    horizontal = side in ("left", "right")
    assert grown.size == ((56, 32) if horizontal else (48, 40)) and mask.size == grown.size
    offset = {"left": (8, 0), "right": (0, 0), "top": (0, 8), "bottom": (0, 0)}[side]
    assert grown.getpixel(offset) == (200, 0, 0)  # the original, shifted
    assert mask.getpixel((47 + offset[0], 31 + offset[1])) == 255  # the old mask, shifted with it
    strip = {"left": (0, 0, 8, 32), "right": (48, 0, 56, 32), "top": (0, 0, 48, 8), "bottom": (0, 32, 48, 40)}[side]
    assert np.asarray(mask.crop(strip)).min() == 255


def test_extend_canvas_and_upscale_refuse_bad_values():
    image = Image.new("RGB", (16, 16))
    with pytest.raises(ValueError, match="side"):
        editing.extend_canvas(image, "up", 8)
    with pytest.raises(ValueError, match="multiple of 8"):
        editing.extend_canvas(image, "left", 12)
    with pytest.raises(ValueError, match="16x16"):
        editing.extend_canvas(image, "left", 8, Image.new("L", (8, 8)))
    with pytest.raises(ValueError, match="2 or 4"):
        editing.upscale(image, 3)


def test_upscale_button_saves_a_lanczos_copy_with_the_text_chunks(qtbot, editor, tmp_path):
    from PIL import PngImagePlugin

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (32, 24, 3), dtype=np.uint8))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 3, Seed: 1")
    path = tmp_path / "cat.png"
    picture.save(path, pnginfo=info)
    editor.panel.show_file(QImage(str(path)), str(path))
    written = []
    editor.imageWritten.connect(written.append)
    target = editor.upscale_shown(2)
    assert target == tmp_path / "cat-x2.png" and written == [str(target)]
    with Image.open(target) as result:
        assert result.size == (48, 64) and result.info["parameters"] == "a cat\nSteps: 3, Seed: 1"
        expected = picture.resize((48, 64), Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(result.convert("RGB")), np.asarray(expected))
    assert editor.canvas.path == str(target)
    assert editing.upscaled_path(path, 2) == tmp_path / "cat-x2-1.png"


def test_qimage_to_pil_keeps_pixels():
    image = QImage(5, 3, QImage.Format.Format_RGB32)
    image.fill(QColor(1, 2, 3))
    image.setPixelColor(4, 2, QColor(250, 100, 7))
    pil = qimage_to_pil(image)
    assert pil.size == (5, 3) and pil.getpixel((4, 2)) == (250, 100, 7) and pil.getpixel((0, 0)) == (1, 2, 3)


def test_mask_files_are_not_history_images(tmp_path):
    from inkpunk_studio.history import scan_images

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    editing.save_mask(Image.new("L", (8, 8)), tmp_path / "a.png")
    assert [p.name for p in scan_images(tmp_path)] == ["a.png"]
    assert editing.load_mask(tmp_path / "a.png", (8, 8)).mode == "L"
    assert editing.load_mask(tmp_path / "a.png", (16, 16)) is None  # a mask for another size is none


def test_options_the_engine_lacks_are_shown_disabled_with_a_reason(editor):
    combo = editor.content_combo
    model = combo.model()
    usable = [combo.itemData(i) for i in range(combo.count()) if model.item(i).isEnabled()]
    assert tuple(usable) == editing.supported_masked_content() and combo.count() == len(editing.MASKED_CONTENT)
    for i in range(combo.count()):
        assert model.item(i).isEnabled() or "not implement" in model.item(i).toolTip()
    assert editor.only_masked_check.isEnabled()  # "Only masked" is implemented (tests/test_only_masked.py)


def test_masked_content_goes_to_the_request_as_the_engine_allows():
    from inkpunk_studio.worker import GenerationParams

    image, mask = Image.new("RGB", (64, 64), (9, 9, 9)), Image.new("L", (64, 64), 255)
    params = GenerationParams(width=64, height=64, init_image=image, mask=mask, mask_blur=2, masked_content="fill")
    meta = params.image_params(seed=1)
    assert meta.extra == {"Mask blur": "2", "Masked content": "fill"}
    if editing.engine_takes("masked_content"):
        assert params.request(seed=1).masked_content == "fill"
    else:
        with pytest.raises(ValueError, match="not available in this build"):
            params.request(seed=1)
    params.masked_content = "original"
    assert params.request(seed=1).mask is mask
    assert params.image_params(seed=1).extra == {"Mask blur": "2"}
    params.masked_content = "sparkles"
    with pytest.raises(ValueError, match="masked content must be one of"):
        params.request(seed=1)
