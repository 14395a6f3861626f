"""Hires fix "Resize to" (A1111's `Hires resize`): the side panel's width/height spins -> GenerationParams ->
GenerationRequest.hires, the infotext (`Hires resize: WxH` instead of `Hires upscale`), queued jobs, and back
on restore."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import pytest
from fixtures_app import (  # noqa: F401  (pytest fixtures, used as arguments)
    RUN_TIMEOUT_MS,
    open_window,
    set_small_params,
    tiny_checkpoint,
)
from PIL import Image
from PySide6.QtWidgets import QSpinBox

from inkpunk_studio import editing
from inkpunk_studio.metadata.params import parse_a1111
from inkpunk_studio.queue import decode_params, encode_params
from inkpunk_studio.widgets.hires_section import HiresSection, hires_summary
from inkpunk_studio.widgets.params_panel import ParamsPanel
from inkpunk_studio.worker import GenerationParams

RESIZE = {"hires": True, "hires_scale": 2.0, "hires_width": 128, "hires_height": 96, "hires_steps": 2,
          "hires_denoise": 0.6, "hires_upscaler": "Latent"}


def test_resize_is_written_as_a1111_read_back_and_kept_by_queued_jobs():
    params = GenerationParams(prompt="a cat", width=64, height=64, steps=2, **RESIZE)
    text = params.image_params(seed=3).to_parameters_text()
    # A1111 calculate_target_resolution: "Hires resize" replaces "Hires upscale"; init's key order
    assert "Hires resize: 128x96, Hires steps: 2, Hires upscaler: Latent" in text
    assert "Hires upscale:" not in text
    parsed = parse_a1111(text)
    assert parsed.notes == [] and parsed.strength is None
    restored = editing.hires_from_infotext(parsed.extra, parsed.strength)
    assert restored == {k: v for k, v in RESIZE.items() if k != "hires_scale"}  # no scale in the image
    # one side 0: the other follows the aspect ratio; a scale image resets the resize to 0 x 0 (A1111's default)
    assert editing.hires_from_infotext({"Hires resize": "0x768"}, 0.5)["hires_width"] == 0
    assert editing.hires_from_infotext({"Hires upscale": "1.5"}, None) == {
        "hires": True, "hires_scale": 1.5, "hires_width": 0, "hires_height": 0, "hires_steps": 0}
    assert "hires_width" not in editing.hires_from_infotext({"Hires resize": "wide"}, None)
    # the session and the job queue keep the resize; the request carries it when the engine has a hires fix
    assert GenerationParams.from_dict(params.to_dict()).hires_values() == RESIZE
    assert decode_params(*encode_params(params)).hires_values() == RESIZE
    if editing.engine_has_hires():
        hires = params.request(seed=1).hires
        assert (hires.width, hires.height) == (128, 96) and hires.sizes(64, 64) == ((128, 128), (128, 96))
    bad = GenerationParams(prompt="x", width=64, height=64, hires=True, hires_width=100)
    if editing.engine_has_hires():
        with pytest.raises(ValueError, match="multiple of 8"):
            bad.request(seed=1)


def test_unrestorable_hires_keys_are_named():
    p = parse_a1111("x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.7, "
                    "Hires resize: 1024x0, Hires upscaler: Latent, Hires sampler: DPM++ 2M, Hires CFG Scale: 5")
    assert p.notes == ["Hires sampler is not restored", "Hires CFG Scale is not restored"]
    assert p.extra["Hires resize"] == "1024x0"


def test_section_resize_spins_take_over_from_the_scale(qtbot):
    section = HiresSection()
    qtbot.addWidget(section)
    width = section.findChild(QSpinBox, "hiresResizeWidthSpin")
    height = section.findChild(QSpinBox, "hiresResizeHeightSpin")
    assert width is section.resize_width_spin and height is section.resize_height_spin
    assert section.values()["hires_width"] == section.values()["hires_height"] == 0
    assert section.scale_spin.isEnabled() and section.summary_label.text() == "Result: 1024x1024 (512x512 × 2)"
    section.set_base_size(512, 768)
    width.setValue(1024)
    assert not section.scale_spin.isEnabled()
    assert section.summary_label.text() == "Result: 1024x1536 (resized from 512x768)"
    height.setValue(1024)
    assert section.summary_label.text() == (
        "Result: 1024x1024 (resized from 512x768, upscaled to 1024x1536 and cropped)")
    assert (section.values()["hires_width"], section.values()["hires_height"]) == (1024, 1024)
    # restored values snap to the spins' multiples of 8 and say so; 0 x 0 hands back to the scale
    assert section.set_values(hires_width=1001, hires_height=4096) == [
        "hires resize width 1001 -> 1000 (0 or multiples of 8 up to 2048)",
        "hires resize height 4096 -> 2048 (0 or multiples of 8 up to 2048)"]
    assert section.set_values(hires_width=0, hires_height=0) == [] and section.scale_spin.isEnabled()
    assert "too large" in hires_summary(1024, 1024, 4.0, 0, 0)


def test_params_panel_size_drives_the_result_line(qtbot):
    panel = ParamsPanel()
    qtbot.addWidget(panel)
    assert panel.set_values(width=768, height=512, hires_width=0, hires_height=1024) == []
    assert panel.hires_section.summary_label.text() == "Result: 1536x1024 (resized from 768x512)"
    assert (panel.values()["hires_width"], panel.values()["hires_height"]) == (0, 1024)


def test_window_generates_at_the_resize_target_and_restores_it(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=2)
    section = window.params_panel.hires_section
    if not editing.engine_has_hires():
        assert not section.check.isEnabled()
        return
    assert window.params_panel.set_values(**RESIZE) == []
    assert window.current_params().hires_values() == RESIZE
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    (path,) = finished.args[0]
    with Image.open(path) as image:
        assert image.size == (128, 96)  # 64x64 upscaled to cover 128x96 (128x128), then cropped
        text = image.info["parameters"]
    assert "Size: 64x64" in text and "Hires resize: 128x96" in text and "Hires upscale:" not in text
    window.params_panel.set_values(hires=False, hires_width=0, hires_height=512, hires_scale=1.5)
    window.restore_from_file(str(path))
    qtbot.waitUntil(lambda: window.params_panel.values()["hires"], timeout=5000)
    values = window.params_panel.values()
    assert {k: values[k] for k in RESIZE} == RESIZE | {"hires_scale": 1.5}  # the scale is not in the image
    assert not section.scale_spin.isEnabled() and "128x96" in section.summary_label.text()
