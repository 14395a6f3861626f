"""The hires fix in the window: the side panel's section -> GenerationParams -> GenerationRequest.hires, its
infotext (A1111's `Hires upscale`, `Hires steps`, `Hires upscaler`, `Denoising strength`) written and restored.

The section follows the engine: with GenerationRequest.hires it is usable, without it it is disabled and a
hires request is refused with a clear message (no pretending)."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_app import (  # noqa: F401  (pytest fixtures, used as arguments)
    RUN_TIMEOUT_MS,
    open_window,
    set_small_params,
    tiny_checkpoint,
)
from PIL import Image

from inkpunk_studio import editing
from inkpunk_studio.metadata.params import parse_a1111
from inkpunk_studio.widgets.params_panel import ParamsPanel
from inkpunk_studio.worker import GenerationParams

HIRES = {"hires": True, "hires_scale": 2.0, "hires_width": 0, "hires_height": 0, "hires_steps": 3,
         "hires_denoise": 0.55, "hires_upscaler": "Lanczos"}


def test_hires_infotext_is_written_as_a1111_and_read_back():
    params = GenerationParams(prompt="a cat", width=64, height=64, steps=4, **HIRES)
    meta = params.image_params(seed=5)
    text = meta.to_parameters_text()
    assert "Hires upscale: 2, Hires steps: 3, Hires upscaler: Lanczos" in text
    assert "Denoising strength: 0.55" in text and "Size: 64x64" in text  # Size: the first pass's, as A1111
    parsed = parse_a1111(text)
    assert editing.hires_from_infotext(parsed.extra, parsed.strength) == HIRES
    assert editing.hires_from_infotext({}, 0.3) == {"hires": False}
    assert editing.hires_from_infotext({"Hires upscale": "1.5"}, None) == {"hires": True, "hires_scale": 1.5,
                                                                           "hires_width": 0, "hires_height": 0,
                                                                           "hires_steps": 0}
    # an init image turns the hires fix off (A1111: txt2img only): nothing about it is written
    img2img = GenerationParams(init_image=Image.new("RGB", (64, 64)), width=64, height=64, strength=0.4, **HIRES)
    assert not img2img.uses_hires and "Hires" not in img2img.image_params(seed=1).to_parameters_text()


def test_hires_fields_are_kept_with_the_session_and_bad_names_dropped():
    data = GenerationParams(**HIRES).to_dict()
    assert {k: data[k] for k in HIRES} == HIRES
    assert GenerationParams.from_dict(data).hires_values() == HIRES
    odd = GenerationParams.from_dict({**data, "hires_upscaler": "ESRGAN 4x", "hires_scale": "big"})
    assert odd.hires_upscaler == "Latent" and odd.hires_scale == 2.0


def test_the_request_carries_the_hires_fix_when_the_engine_has_it():
    params = GenerationParams(prompt="a cat", width=64, height=64, steps=4, **HIRES)
    if editing.engine_has_hires():
        import engine

        request = params.request(seed=1)
        assert request.hires == engine.HiresFix(scale=2.0, steps=3, denoise=0.55, upscaler="Lanczos")
    else:
        with pytest.raises(ValueError, match="hires fix is not available"):
            params.request(seed=1)
    params.hires = False
    assert getattr(params.request(seed=1), "hires", None) is None


def test_params_panel_hires_section(qtbot):
    panel = ParamsPanel()
    qtbot.addWidget(panel)
    section = panel.hires_section
    assert section.check.isEnabled() == editing.engine_has_hires()
    assert panel.values()["hires"] is False
    notes = panel.set_values(**{**HIRES, "hires": False})
    assert notes == []
    assert {k: v for k, v in panel.values().items() if k.startswith("hires_")} == {
        k: v for k, v in HIRES.items() if k != "hires"}
    assert panel.set_values(hires_upscaler="ESRGAN 4x") == ["hires upscaler 'ESRGAN 4x' is not available"]
    assert panel.set_values(hires_scale=9.0) == ["hires upscale 9.0 -> 4"]
    turned_on = panel.set_values(hires=True)
    if section.check.isEnabled():
        assert turned_on == [] and panel.values()["hires"] is True
        panel.show()
        assert section.details.isVisible()
    else:
        assert turned_on == ["hires fix is not available in this build"] and panel.values()["hires"] is False


def test_window_hires_generation_and_restore(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=2)
    if not editing.engine_has_hires():
        assert not window.findChild(type(window.params_panel.hires_section.check), "hiresCheck").isEnabled()
        return
    notes = window.params_panel.set_values(**{**HIRES, "hires_steps": 2, "hires_upscaler": "Latent"})
    assert notes == []
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    (path,) = finished.args[0]
    with Image.open(path) as image:
        assert image.size == (128, 128)
        text = image.info["parameters"]
    assert "Hires upscale: 2" in text and "Size: 64x64" in text and "Hires steps: 2" in text
    window.params_panel.set_values(hires=False, hires_scale=1.5)
    window.restore_from_file(str(path))
    qtbot.waitUntil(lambda: window.params_panel.values()["hires"], timeout=5000)
    values = window.params_panel.values()
    assert (values["hires_scale"], values["hires_steps"], values["hires_upscaler"]) == (2.0, 2, "Latent")
    assert Path(path).is_file()
