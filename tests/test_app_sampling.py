"""Issue 12 §5 in the window: sampler + schedule combos, the Advanced section (clip skip, variation), the noise
source / ENSD / emphasis in the Settings, all flowing into the request and the PNG, and back on restore."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import json

from fixtures_app import (  # noqa: F401  (pytest fixtures, used as arguments)
    RUN_TIMEOUT_MS,
    open_window,
    set_small_params,
    tiny_checkpoint,
)
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QPushButton, QSpinBox, QToolButton

import engine
from inkpunk_studio.metadata import ImageParams, read_params, save_png
from inkpunk_studio.settings import AppSettings
from inkpunk_studio.widgets.params_panel import ParamsPanel
from inkpunk_studio.widgets.seed_spin import SeedSpinBox
from inkpunk_studio.widgets.settings_dialog import SettingsDialog, SettingsValues
from inkpunk_studio.worker import GenerationParams


def _select(combo: QComboBox, data: str) -> None:
    index = combo.findData(data)
    assert index >= 0, data
    combo.setCurrentIndex(index)


def test_generate_records_every_new_field_and_restore_sets_each_widget(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    panel = window.params_panel
    set_small_params(window, prompt="nvinkpunk a (cat:1.2), ink", steps=3)
    _select(panel.findChild(QComboBox, "samplerCombo"), "euler_a")
    _select(panel.findChild(QComboBox, "scheduleCombo"), "exponential")
    panel.findChild(QToolButton, "advancedButton").click()
    assert panel.findChild(QSpinBox, "clipSkipSpin").isVisible()
    panel.findChild(QSpinBox, "clipSkipSpin").setValue(2)
    panel.findChild(SeedSpinBox, "variationSeedSpin").setValue(99)
    panel.findChild(QDoubleSpinBox, "variationStrengthSpin").setValue(0.3)
    window.settings.rng, window.settings.ensd, window.settings.emphasis = "nv", 31337, "no_norm"

    request = window.current_params().request(1234)
    assert (request.sampler, request.schedule, request.clip_skip, request.rng, request.ensd, request.emphasis,
            request.variation_seed, request.variation_strength) == (
        "euler_a", "exponential", 2, "nv", 31337, "no_norm", 99, 0.3)

    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        qtbot.mouseClick(window.findChild(QPushButton, "generateButton"), Qt.MouseButton.LeftButton)
    [path] = finished.args[0]
    with Image.open(path) as image:
        text = image.text["parameters"]
    for item in ("Sampler: Euler a", "Schedule type: Exponential", "Variation seed: 99",
                 "Variation seed strength: 0.3", "Clip skip: 2", "ENSD: 31337", "RNG: NV", "Emphasis: No norm"):
        assert item in text, (item, text)
    meta = read_params(path)
    assert (meta.sampler, meta.schedule, meta.clip_skip, meta.rng, meta.ensd, meta.emphasis,
            meta.variation_seed, meta.variation_strength, meta.seed) == (
        "euler_a", "exponential", 2, "nv", 31337, "no_norm", 99, 0.3, 1234)
    before = panel.values()

    # change everything, then restore from the PNG: every widget and setting comes back exactly
    panel.set_values(sampler="dpmpp_2m", schedule="karras", clip_skip=1, variation_seed=5, variation_strength=0,
                     steps=9, seed=1)
    panel.set_advanced_visible(False)
    window.settings.rng, window.settings.ensd, window.settings.emphasis = "cpu", 0, "original"
    window.restore_from_file(path)
    qtbot.waitUntil(lambda: panel.values() == before, timeout=10_000)
    assert (window.settings.rng, window.settings.ensd, window.settings.emphasis) == ("nv", 31337, "no_norm")
    assert panel.advanced_section.isVisible()  # a restored clip skip / variation is in view
    message = window.statusBar().currentMessage()
    assert message.startswith("Parameters restored; Settings now: random numbers NV, ENSD 31337, emphasis")
    assert "not restored" not in message


def test_restoring_what_we_lack_is_said_and_nothing_is_replaced(qtbot, open_window, tmp_path):
    window = open_window()
    panel = window.params_panel
    panel.set_values(sampler="heun", schedule="uniform")
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path)
    meta = ImageParams.from_parameters_text(
        "a cat\nSteps: 20, Sampler: Restart, Schedule type: Align Your Steps, CFG scale: 7, Seed: 5, "
        "Size: 512x512, Version: v1.10.1")
    assert meta is not None and meta.sampler is None and meta.schedule is None
    save_png(Image.open(path), path, meta)
    window.restore_from_file(str(path))
    qtbot.waitUntil(lambda: panel.values()["seed"] == 5, timeout=10_000)
    values = panel.values()
    assert (values["sampler"], values["schedule"], values["steps"]) == ("heun", "uniform", 20)
    message = window.statusBar().currentMessage()
    assert "not restored or adjusted" in message
    assert "'Restart' is not available" in message and "'Align Your Steps' is not available" in message
    # and a schedule we lack on an image of a sampler we have (a legacy " Karras"-style suffix)
    notes = window.apply_image_params(ImageParams.from_parameters_text(
        "x\nSteps: 20, Sampler: DPM++ 2M Beta, CFG scale: 7, Seed: 6, Size: 512x512"))
    assert any("Beta" in note for note in notes)
    assert (panel.values()["sampler"], panel.values()["schedule"]) == ("dpmpp_2m", "uniform")


def test_schedule_combo_follows_the_sampler(qtbot):
    panel = ParamsPanel()
    qtbot.addWidget(panel)
    sampler, schedule = panel.findChild(QComboBox, "samplerCombo"), panel.findChild(QComboBox, "scheduleCombo")
    assert [sampler.itemData(i) for i in range(sampler.count())] == list(engine.SAMPLERS)
    assert [schedule.itemData(i) for i in range(schedule.count())] == list(engine.SCHEDULE_NAMES)
    assert schedule.itemData(0) == "automatic" and schedule.currentText() == "Automatic (Karras)"
    _select(sampler, "euler")
    assert schedule.currentText() == "Automatic (Uniform)"
    _select(schedule, "karras")
    _select(sampler, "ddim")  # DDIM walks its own timesteps: the schedule does not apply
    assert not schedule.isEnabled() and schedule.currentData() == "automatic"
    assert panel.values()["schedule"] == "automatic"
    _select(sampler, "lms")  # the choice comes back
    assert schedule.isEnabled() and panel.values()["schedule"] == "karras"
    assert panel.set_values(sampler="dpmpp_2m_karras") == []  # the old combined name
    assert (panel.values()["sampler"], panel.values()["schedule"]) == ("dpmpp_2m", "karras")
    assert panel.set_values(schedule="beta") == ["schedule 'beta' is not available"]
    assert panel.set_values(clip_skip=20, variation_strength=0.125) == ["clip skip 20 -> 12",
                                                                        "variation strength 0.125 -> 0.13"]


def test_old_saved_settings_restore_as_dpmpp_2m_karras(qtbot, open_window, tmp_path):
    data = tmp_path / "data"
    settings = AppSettings.for_data_dir(data)
    settings.save_last_params({"prompt": "old", "sampler": "dpmpp_2m_karras", "steps": 30, "seed": 7})
    settings.sync()
    window = open_window(data_dir=data)
    values = window.params_panel.values()
    assert (values["sampler"], values["schedule"], values["steps"], values["seed"]) == ("dpmpp_2m", "karras", 30, 7)
    assert window.params_panel.findChild(QComboBox, "scheduleCombo").currentText() == "Karras"


def test_generation_params_carry_the_new_fields():
    params = GenerationParams(prompt="p", sampler="dpmpp_sde", schedule="exponential", clip_skip=3, rng="nv",
                              ensd=31337, emphasis="no_norm", variation_seed=2**40, variation_strength=0.25,
                              seed=10, batch_count=3)
    assert GenerationParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    # with a variation the seed stays and the variation seed counts up (A1111 process_images_inner)
    assert [params.image_seeds(10, k) for k in range(3)] == [(10, 2**40), (10, 2**40 + 1), (10, 2**40 + 2)]
    plain = GenerationParams(seed=10)
    assert [plain.image_seeds(10, k) for k in range(2)] == [(10, None), (11, None)]
    request = params.request(10, 2**40 + 1)
    assert (request.schedule, request.clip_skip, request.rng, request.ensd, request.emphasis,
            request.variation_seed, request.variation_strength) == (
        "exponential", 3, "nv", 31337, "no_norm", 2**40 + 1, 0.25)
    meta = params.image_params(10, variation_seed=2**40 + 1)
    assert (meta.schedule, meta.variation_seed, meta.variation_strength, meta.rng) == (
        "exponential", 2**40 + 1, 0.25, "nv")
    # "automatic" is written as the schedule it means, as A1111 writes its resolved label
    assert GenerationParams(sampler="dpmpp_2m").image_params(1).schedule == "karras"
    assert GenerationParams(sampler="ddim").image_params(1).schedule == "automatic"
    # stale or hand-edited entries fall back to the defaults
    odd = GenerationParams.from_dict({"sampler": "plms", "schedule": "beta", "rng": "gpu9", "emphasis": 3,
                                      "variation_seed": "x", "clip_skip": 2})
    assert (odd.sampler, odd.schedule, odd.rng, odd.emphasis, odd.variation_seed, odd.clip_skip) == (
        "dpmpp_2m", "automatic", "cpu", "original", None, 2)
    assert GenerationParams.from_dict({"sampler": "dpmpp_2m_karras", "schedule": "uniform"}).schedule == "uniform"


def test_settings_dialog_sampling_settings(qtbot, tmp_path):
    settings = AppSettings.for_data_dir(tmp_path)
    assert (settings.rng, settings.ensd, settings.emphasis) == ("cpu", 0, "original")
    dialog = SettingsDialog(SettingsValues.from_settings(settings), str(tmp_path / "out"))
    qtbot.addWidget(dialog)
    rng = dialog.findChild(QComboBox, "rngCombo")
    assert [rng.itemText(i) for i in range(rng.count())] == ["CPU", "NV (GPU-compatible)"]
    _select(rng, "nv")
    dialog.findChild(QSpinBox, "ensdSpin").setValue(31337)
    _select(dialog.findChild(QComboBox, "emphasisCombo"), "ignore")
    dialog.values().save(settings)
    again = AppSettings.for_data_dir(tmp_path)
    assert (again.rng, again.ensd, again.emphasis) == ("nv", 31337, "ignore")
    again.store.setValue("sampling/rng", "quantum")
    again.store.setValue("sampling/ensd", "lots")
    assert (again.rng, again.ensd) == ("cpu", 0)


def test_a_variation_batch_keeps_the_seed_and_counts_a_random_variation_seed_up(qtbot, open_window,
                                                                                  tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=2, batch_count=2, variation_strength=0.2, random_variation_seed=True)
    assert window.current_params().variation_seed is None  # Random: chosen when the job runs
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    metas = [read_params(path) for path in finished.args[0]]
    assert [m.seed for m in metas] == [1234, 1234]
    first = metas[0].variation_seed
    assert first is not None and [m.variation_seed for m in metas] == [first, first + 1]
    assert {m.variation_strength for m in metas} == {0.2}
