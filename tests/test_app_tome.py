"""Token merging in the app: the Settings' ratios flow into the request and the PNG, and a restored image sets
them back (as ENSD does)."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

from fixtures_app import (  # noqa: F401  (pytest fixtures, used as arguments)
    RUN_TIMEOUT_MS,
    open_window,
    set_small_params,
    tiny_checkpoint,
)
from PIL import Image
from PySide6.QtWidgets import QDoubleSpinBox

from inkpunk_studio.metadata import ImageParams, read_params
from inkpunk_studio.settings import AppSettings
from inkpunk_studio.widgets.settings_dialog import SettingsDialog, SettingsValues
from inkpunk_studio.worker import GenerationParams


def test_settings_dialog_token_merging_spins(qtbot, tmp_path):
    settings = AppSettings.for_data_dir(tmp_path)
    assert (settings.token_merging_ratio, settings.token_merging_ratio_hr) == (0.0, 0.0)
    dialog = SettingsDialog(SettingsValues.from_settings(settings), str(tmp_path / "out"))
    qtbot.addWidget(dialog)
    spin = dialog.findChild(QDoubleSpinBox, "tokenMergingSpin")
    hr_spin = dialog.findChild(QDoubleSpinBox, "tokenMergingHrSpin")
    assert (spin.minimum(), spin.maximum(), spin.singleStep(), spin.value()) == (0.0, 0.9, 0.1, 0.0)
    assert "speed" in spin.toolTip() and "A1111" in spin.toolTip()
    spin.setValue(0.5)
    hr_spin.setValue(0.3)
    dialog.values().save(settings)
    again = AppSettings.for_data_dir(tmp_path)
    assert (again.token_merging_ratio, again.token_merging_ratio_hr) == (0.5, 0.3)
    again.store.setValue("sampling/token_merging_ratio", "lots")
    again.store.setValue("sampling/token_merging_ratio_hr", "2.5")
    assert (again.token_merging_ratio, again.token_merging_ratio_hr) == (0.0, 0.0)


def test_params_carry_the_ratios_into_request_and_infotext():
    params = GenerationParams(prompt="x", width=64, height=64, token_merging_ratio=0.4)
    request = params.request(1)
    assert (request.token_merging_ratio, request.token_merging_ratio_hr) == (0.4, 0.0)
    assert "Token merging ratio: 0.4" in params.image_params(1).to_parameters_text()
    assert "Token merging ratio hr" not in params.image_params(1).to_parameters_text()  # no hires pass
    # with a hires pass A1111 writes the ratio that pass ran with: its own, else the first pass's
    params.hires = True
    assert params.image_params(1).token_merging_ratio_hr == 0.4
    params.token_merging_ratio_hr = 0.2
    assert params.request(1).token_merging_ratio_hr == 0.2 and params.image_params(1).token_merging_ratio_hr == 0.2
    assert GenerationParams.from_dict(params.to_dict()).token_merging_ratio_hr == 0.2  # queued jobs keep them


def test_generate_writes_token_merging_and_restore_sets_it(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=2)
    window.settings.token_merging_ratio = 0.5
    assert window.current_params().request(1).token_merging_ratio == 0.5
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    [path] = finished.args[0]
    with Image.open(path) as image:
        assert "Token merging ratio: 0.5" in image.text["parameters"]
    assert read_params(path).token_merging_ratio == 0.5

    window.settings.token_merging_ratio = 0.0
    window.restore_from_file(path)
    qtbot.waitUntil(lambda: window.settings.token_merging_ratio == 0.5, timeout=10_000)
    assert "token merging ratio 0.5" in window.statusBar().currentMessage()

    # a hires image: A1111 wrote the ratio its hires pass ran with; the same as the first pass's means "0: same"
    window.apply_image_params(ImageParams(prompt="x", token_merging_ratio=0.3, token_merging_ratio_hr=0.6))
    assert (window.settings.token_merging_ratio, window.settings.token_merging_ratio_hr) == (0.3, 0.6)
    window.apply_image_params(ImageParams(prompt="x", token_merging_ratio=0.5, token_merging_ratio_hr=0.5))
    assert (window.settings.token_merging_ratio, window.settings.token_merging_ratio_hr) == (0.5, 0.0)
    window.apply_image_params(ImageParams(prompt="x", token_merging_ratio=0.95))  # beyond the Settings' 0.9
    assert window.settings.token_merging_ratio == 0.5
    assert "token merging ratio 0.95 is not available" in window.statusBar().currentMessage()
