"""Issue 15's "Inpaint area: Only masked": the masked region cropped with padding, generated at the panel's
size, pasted back into the whole canvas over the feathered mask; A1111's infotext fields written and restored."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures_app import (  # noqa: F401  (pytest fixtures, used as arguments)
    RUN_TIMEOUT_MS,
    open_window,
    set_small_params,
    tiny_checkpoint,
)
from PIL import Image, ImageDraw

from engine.inpaint import blur_mask
from inkpunk_studio import editing
from inkpunk_studio.metadata import read_params
from inkpunk_studio.worker import GenerationParams


def _canvas(size: tuple[int, int] = (128, 96)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def test_crop_is_around_the_blurred_mask_with_padding_at_the_request_size():
    image, mask = _canvas(), _mask((128, 96), (80, 20, 99, 39))
    crop, crop_mask, box = editing.only_masked_crop(image, mask, 64, 64, blur=2, padding=8)
    assert crop.size == crop_mask.size == (64, 64)
    # blur 2 reaches int(2.5 * 2 + 0.5) = 5 px out; then 8 px of padding: (67, 7, 113, 53), already square
    assert box == (67, 7, 113, 53)
    assert np.asarray(crop_mask).max() == 255 and np.asarray(crop_mask)[0].max() == 0
    with pytest.raises(ValueError, match="padding"):
        editing.only_masked_crop(image, mask, 64, 64, blur=2, padding=-1)
    with pytest.raises(ValueError, match="empty"):
        editing.only_masked_crop(image, Image.new("L", (128, 96)), 64, 64, blur=2, padding=8)


def test_paste_back_keeps_everything_outside_the_feathered_mask():
    image, mask = _canvas(), _mask((128, 96), (80, 20, 99, 39))
    result = Image.new("RGB", (64, 64), (255, 0, 255))
    pasted = editing.only_masked_paste(result, image, mask, blur=2, padding=8, width=64, height=64)
    assert pasted.size == image.size
    before, after = np.asarray(image), np.asarray(pasted)
    outside = np.asarray(blur_mask(mask, 2)) == 0
    assert np.array_equal(after[outside], before[outside])
    assert (after[25:35, 85:95] == (255, 0, 255)).all()  # fully masked: the generated pixels


def test_params_request_the_crop_and_record_a1111_fields():
    image, mask = _canvas(), _mask((128, 96), (80, 20, 99, 39))
    params = GenerationParams(prompt="x", width=64, height=64, init_image=image, mask=mask, mask_blur=2,
                              only_masked=True, mask_padding=8, steps=2)
    request = params.request(1)
    assert (request.width, request.height) == (64, 64)
    assert request.init_image.size == request.mask.size == (64, 64) and request.mask_blur == 0
    extra = params.image_params(1).extra
    assert extra["Inpaint area"] == "Only masked" and extra["Masked area padding"] == "8"
    assert editing.only_masked_from_infotext(extra) == {"only_masked": True, "mask_padding": 8}
    assert editing.only_masked_from_infotext({"Mask blur": "4"}) == {"only_masked": False}
    assert "Inpaint area" not in GenerationParams(init_image=image, mask=mask).image_params(1).extra
    back = GenerationParams.from_dict(params.to_dict())  # the queue and the settings keep the option
    assert (back.only_masked, back.mask_padding) == (True, 8)


def _generate(qtbot, window) -> Path:
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    (path,) = finished.args[0]
    return Path(path)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_only_masked_through_the_window(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=3, width=128, height=128)
    first = _generate(qtbot, window)
    assert window.canvas.path == str(first)

    editor = window.mask_editor
    editor.set_mask_mode(True)
    assert not editor.padding_spin.isEnabled()
    editor.only_masked_check.setChecked(True)
    assert editor.only_masked_check.isEnabled() and editor.padding_spin.isEnabled()
    assert editor.padding_spin.value() == 32
    editor.padding_spin.setValue(8)
    editor.blur_spin.setValue(2)
    editor.strength_spin.setValue(0.9)
    mask = _mask((128, 128), (80, 20, 99, 39))
    editor.layer.set_pil(mask, undoable=False)

    set_small_params(window, steps=3, seed=99)  # the request size: 64x64
    second = _generate(qtbot, window)
    before, after = _pixels(first), _pixels(second)
    assert after.shape == before.shape == (128, 128, 3)  # the whole canvas, not the crop
    outside = np.asarray(blur_mask(mask, 2)) == 0
    assert np.array_equal(after[outside], before[outside])
    assert np.abs(after[22:38, 82:98] - before[22:38, 82:98]).mean() > 2  # the masked part was repainted
    assert np.array_equal(np.asarray(Image.open(editing.mask_path(second))), np.asarray(mask))

    meta = read_params(second)
    assert (meta.width, meta.height, meta.seed) == (64, 64, 99)  # A1111 records the request size
    assert meta.extra.get("Inpaint area") == "Only masked" and meta.extra.get("Masked area padding") == "8"

    editor.only_masked_check.setChecked(False)
    editor.padding_spin.setValue(40)
    window.apply_image_params(meta)
    assert editor.only_masked_check.isChecked() and editor.padding_spin.value() == 8
    window.apply_image_params(read_params(first))  # a picture without the field: whole picture again
    assert not editor.only_masked_check.isChecked()
