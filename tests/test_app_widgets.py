"""Widgets and state without generating: invalid input can't be entered, token counts, presets, settings."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import json
import sys

from fixtures_app import open_window, tiny_checkpoint  # noqa: F401  (pytest fixtures, used as arguments)
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QPlainTextEdit, QSpinBox

import engine
from engine.prompt import token_count
from inkpunk_studio import paths
from inkpunk_studio.settings import AppSettings
from inkpunk_studio.widgets.params_panel import ParamsPanel, nearest_size
from inkpunk_studio.widgets.prompt_panel import load_presets, token_label
from inkpunk_studio.widgets.run_bar import progress_text
from inkpunk_studio.widgets.seed_spin import MAX_SEED, SeedSpinBox
from inkpunk_studio.widgets.settings_dialog import SettingsValues
from inkpunk_studio.worker import GenerationParams


def test_window_has_the_named_widgets_and_counts_tokens(qtbot, open_window, tmp_path):
    window = open_window()
    for name, kind in [("promptEdit", QPlainTextEdit), ("negativePromptEdit", QPlainTextEdit),
                       ("samplerCombo", QComboBox), ("stepsSpin", QSpinBox), ("cfgSpin", QDoubleSpinBox),
                       ("widthCombo", QComboBox), ("heightCombo", QComboBox), ("batchSpin", QSpinBox)]:
        assert isinstance(window.findChild(kind, name), kind), name
    for name in ("seedSpin", "generateButton", "cancelButton", "progressBar", "canvas", "historyList"):
        assert window.findChild(object, name) is not None, name

    prompt = window.findChild(QPlainTextEdit, "promptEdit")
    qtbot.keyClicks(prompt, "nvinkpunk a cat")
    expected = token_label(engine.count_tokens("nvinkpunk a cat"))
    qtbot.waitUntil(lambda: window.prompt_panel.prompt_tokens.text() == expected, timeout=15_000)
    long_prompt = ", ".join(["ink splatter"] * 40)
    prompt.setPlainText(long_prompt)
    n, limit = token_count(long_prompt)  # A1111's chunks: a comma near a chunk's end moves words to the next
    assert n > 75 and limit == 75 * -(-n // 75)
    qtbot.waitUntil(lambda: window.prompt_panel.prompt_tokens.text() == f"{n}/{limit}", timeout=15_000)
    # the sampler list is the engine's, with A1111 display names
    combo = window.findChild(QComboBox, "samplerCombo")
    assert [combo.itemData(i) for i in range(combo.count())] == list(engine.SAMPLERS)
    assert combo.itemText(0) == engine.DISPLAY_NAMES[engine.SAMPLERS[0]]


def test_invalid_values_cannot_be_entered(qtbot):
    panel = ParamsPanel(engine.SAMPLERS, engine.DISPLAY_NAMES)
    qtbot.addWidget(panel)
    width = panel.width_combo
    width.lineEdit().selectAll()
    qtbot.keyClicks(width.lineEdit(), "abc")
    assert width.currentText() == "512" and width.value() == 512  # letters rejected
    width.lineEdit().selectAll()
    qtbot.keyClicks(width.lineEdit(), "3000")
    assert width.value() == 512  # over the maximum: intermediate while typing, never the value
    width.lineEdit().editingFinished.emit()
    assert width.currentText() == "2048" and width.value() == 2048  # leaving the box clamps it (with a note)
    width.lineEdit().selectAll()
    qtbot.keyClicks(width.lineEdit(), "100")  # not a multiple of 64: intermediate, never the value
    assert width.value() == 2048
    width.lineEdit().editingFinished.emit()
    assert width.currentText() == "128" and width.value() == 128  # the nearest size, as fixup does
    width.lineEdit().selectAll()
    qtbot.keyClick(width.lineEdit(), Qt.Key.Key_Delete)
    width.lineEdit().editingFinished.emit()
    assert width.currentText() == "128"  # an emptied box shows the value in effect again
    width.lineEdit().selectAll()
    qtbot.keyClicks(width.lineEdit(), "640")
    assert width.value() == 640
    assert nearest_size(100) == 128 and nearest_size(5000) == 2048 and nearest_size(1) == 64

    panel.steps_spin.setValue(100000)
    panel.cfg_spin.setValue(-3)
    panel.batch_spin.setValue(99)
    assert (panel.steps_spin.value(), panel.cfg_spin.value(), panel.batch_spin.value()) == (150, 1.0, 16)
    notes = panel.set_values(width=520, steps=500, sampler="no_such_sampler")
    assert panel.width_combo.value() == 512 and len(notes) == 3
    values = panel.values()
    GenerationParams(prompt="x", **values).request(values["seed"])  # whatever the panel holds is valid


def test_seed_spin_box_takes_64_bit_seeds_and_random(qtbot):
    spin = SeedSpinBox()
    qtbot.addWidget(spin)
    assert spin.value() == -1 and spin.text() == "Random" and spin.seed() is None
    spin.setValue(2**40)
    assert spin.value() == 2**40 and spin.seed() == 2**40
    spin.lineEdit().selectAll()
    qtbot.keyClicks(spin.lineEdit(), "12x")
    assert spin.value() == 12  # "x" rejected
    spin.setValue(MAX_SEED + 5)
    assert spin.value() == MAX_SEED
    spin.stepBy(-MAX_SEED - 10)
    assert spin.value() == -1
    spin.lineEdit().selectAll()
    qtbot.keyClick(spin.lineEdit(), Qt.Key.Key_Up)
    assert spin.value() == 0


def test_presets_are_inkpunk_prompts_and_fill_both_boxes(qtbot, open_window):
    presets = load_presets(paths.resource_path("presets.json"))
    assert len(presets) >= 8
    assert all(p["prompt"].startswith("nvinkpunk") and p["negative_prompt"] for p in presets)
    window = open_window()
    actions = window.prompt_panel.presets_menu.actions()
    assert len(actions) == len(presets)
    actions[1].trigger()
    assert window.prompt_panel.prompt() == presets[1]["prompt"]
    assert window.prompt_panel.negative_prompt() == presets[1]["negative_prompt"]


def test_settings_persist_in_the_data_dir_and_bad_values_fall_back(tmp_path):
    settings = AppSettings.for_data_dir(tmp_path)
    assert (settings.device, settings.precision, settings.preview_enabled, settings.checkpoint) == (
        "auto", "auto", True, "")
    SettingsValues("/m/a.ckpt", "cpu", "bf16", str(tmp_path / "out"), False).save(settings)
    again = AppSettings.for_data_dir(tmp_path)
    assert SettingsValues.from_settings(again) == SettingsValues("/m/a.ckpt", "cpu", "bf16", str(tmp_path / "out"),
                                                                 False)
    assert (tmp_path / "settings.ini").is_file()
    again.store.setValue("model/device", "quantum")
    again.store.setValue("params/last", "{not json")
    assert again.device == "auto" and again.last_params() == {}


def test_settings_dialog_output_folder_moves_the_history(qtbot, open_window, tmp_path):
    window = open_window()
    window.show_settings()
    dialog = window.settings_dialog
    assert dialog.isVisible()
    dialog.output_edit.setText(str(tmp_path / "elsewhere"))
    dialog.preview_check.setChecked(False)
    dialog.accept()
    assert window.output_dir() == tmp_path / "elsewhere"
    assert window.settings.preview_enabled is False


def test_generation_params_round_trip_and_progress_text():
    params = GenerationParams(prompt="p", negative_prompt="n", sampler="euler_a", steps=9, cfg_scale=5.5,
                              seed=2**33, width=640, height=384, batch_count=2)
    data = json.loads(json.dumps(params.to_dict()))
    assert GenerationParams.from_dict(data) == params
    assert GenerationParams.from_dict({"steps": "many", "seed": True, "cfg_scale": 3}).steps == 25
    meta = params.image_params(7, "model", "abc")
    assert (meta.seed, meta.sampler, meta.strength, meta.model_hash) == (7, "euler_a", None, "abc")
    text = progress_text({"step": 3, "total": 20, "sec_per_step": 0.5, "eta": 8.4, "index": 0, "count": 1})
    assert text == "Step 3/20 · 0.50 s/step · 8 s left"
    text = progress_text({"step": 23, "total": 80, "sec_per_step": 2, "eta": 114, "index": 1, "count": 4})
    assert text == "Image 2/4 · Step 23/80 · 2.00 s/step · 1 min 54 s left"


def test_resource_path_works_from_source_and_frozen(tmp_path, monkeypatch):
    assert paths.resource_path("style.qss").is_file()
    frozen = tmp_path / "bundle"
    (frozen / "resources").mkdir(parents=True)
    (frozen / "resources" / "style.qss").write_text("/* bundled */")
    monkeypatch.setattr(sys, "_MEIPASS", str(frozen), raising=False)
    assert paths.resource_path("style.qss") == frozen / "resources" / "style.qss"
    assert paths.data_dir(tmp_path / "d") == tmp_path / "d" and (tmp_path / "d").is_dir()
