"""Fast mode through the real window and worker: the switch, a few-step LoRA in LCM-LoRA's key layout merged at
1.0, the LCM sampler, exact removal when switched off, and TAESD previews at image resolution."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import pytest
import torch
from fixtures_app import RUN_TIMEOUT_MS, open_window, pngs, set_small_params, tiny_checkpoint  # noqa: F401
from safetensors.torch import save_file

from engine.checkpoint import load_models
from engine.testing import few_step_lora, write_random_taesd
from inkpunk_studio import paths
from inkpunk_studio.metadata import read_params


def lcm_layout_lora(checkpoint, path) -> None:
    """A random LoRA with lcm-lora-sdv1-5's keys: kohya names in diffusers spelling with `.alpha`, UNet only."""
    models = load_models(checkpoint, device="cpu", dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(few_step_lora(models.unet, rank=4, alpha=2.0, up_scale=0.2, seed=7), str(path))


@pytest.fixture
def fast_window(open_window, tiny_checkpoint, tmp_path):
    data = tmp_path / "data"
    lcm_layout_lora(tiny_checkpoint, paths.models_dir(data) / "Lora" / "lcm-lora-sdv1-5.safetensors")
    return open_window(tiny_checkpoint, data_dir=data)


def run(qtbot, window) -> list:
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    return finished.args[0]


def unet_weights(window) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in window.host._worker._pipe.unet.state_dict().items()}


def test_fast_generation_merges_the_lora_and_switching_off_restores_everything(qtbot, fast_window):
    window = fast_window
    set_small_params(window, steps=12, sampler="euler", cfg_scale=6.5)
    run(qtbot, window)  # a plain image first: the model's own weights
    original = unet_weights(window)

    window.run_bar.fast_check.click()  # the LoRA is in models/Lora: no download asked for
    assert window.fast_mode.enabled and window.run_bar.fast_check.isChecked()
    assert window.fast_mode.dialog is None
    values = window.params_panel.values()
    assert (values["sampler"], values["steps"], values["cfg_scale"]) == ("lcm", 4, 1.0)
    [path] = run(qtbot, window)
    merged = unet_weights(window)
    assert any(not torch.equal(merged[k], original[k]) for k in original), "the LoRA was not merged"
    meta = read_params(path)
    assert meta.sampler == "lcm" and meta.steps == 4 and meta.cfg_scale == 1.0
    assert list(meta.lora_hashes) == ["lcm-lora-sdv1-5"]

    window.run_bar.fast_check.click()
    assert not window.fast_mode.enabled
    values = window.params_panel.values()
    assert (values["sampler"], values["steps"], values["cfg_scale"]) == ("euler", 12, 6.5)
    [path] = run(qtbot, window)
    restored = unet_weights(window)
    assert all(torch.equal(restored[k], original[k]) for k in original), "weights not restored bit-for-bit"
    assert read_params(path).lora_hashes == {}


def test_fast_mode_survives_a_restart_and_still_restores_the_own_settings(qtbot, open_window, fast_window,
                                                                         tiny_checkpoint, tmp_path):
    window = fast_window
    set_small_params(window, steps=9, sampler="dpmpp_2m", cfg_scale=5.0)
    window.run_bar.fast_check.click()
    assert window.fast_mode.enabled
    window.close()
    again = open_window(tiny_checkpoint, data_dir=tmp_path / "data")
    assert again.run_bar.fast_check.isChecked() and again.params_panel.values()["sampler"] == "lcm"
    again.run_bar.fast_check.click()
    values = again.params_panel.values()
    assert (values["sampler"], values["steps"], values["cfg_scale"]) == ("dpmpp_2m", 9, 5.0)


def test_a_missing_lora_offers_the_download_and_leaves_the_switch_off(qtbot, open_window, tiny_checkpoint):
    window = open_window(tiny_checkpoint)
    set_small_params(window, sampler="euler")
    window.run_bar.fast_check.click()
    dialog = window.fast_mode.dialog
    assert dialog is not None and dialog.isVisible() and dialog.state == "choose"
    assert "135 MB" in dialog.download_button.text() and "models" in dialog.findChild(
        type(dialog.status), "downloadIntro").text()
    assert not window.run_bar.fast_check.isChecked() and not window.fast_mode.enabled
    assert window.params_panel.values()["sampler"] == "euler"
    dialog.reject()


def test_taesd_previews_at_image_resolution_and_tiny_decode_in_fast_mode(qtbot, fast_window):
    window = fast_window
    folder = paths.models_dir(window.data_dir) / "VAE-approx" / "taesd"
    folder.mkdir(parents=True)
    write_random_taesd(folder / "diffusion_pytorch_model.safetensors")
    set_small_params(window)  # 64x64: latents 8x8
    window.run_bar.fast_check.click()
    events = []
    window.host.progress.connect(events.append)
    run(qtbot, window)
    previews = [e["preview"] for e in events if e["preview"] is not None]
    assert previews and all((p.width(), p.height()) == (64, 64) for p in previews)  # not the 8x8 latent map
    pipe = window.host._worker._pipe
    assert pipe.taesd is not None
    params = window.current_params()
    window.fast_mode.apply(params)
    assert params.decoder == "taesd" and params.taesd.endswith("taesd")
    window.run_bar.fast_check.click()  # off: the full VAE again (Settings' default outside fast mode)
    params = window.current_params()
    window.fast_mode.apply(params)
    assert params.decoder == "vae"


def test_fast_mode_with_its_lora_gone_refuses_to_generate_in_words(qtbot, fast_window):
    window = fast_window
    set_small_params(window)
    window.run_bar.fast_check.click()
    (paths.models_dir(window.data_dir) / "Lora" / "lcm-lora-sdv1-5.safetensors").unlink()
    with qtbot.waitSignal(window.errorShown, timeout=5000) as shown:
        assert not window.generate()
    assert "LCM-LoRA" in shown.args[1] and "Fast" in shown.args[1]
    assert pngs(window.output_dir()) == []
    window.message_box.close()  # a window-modal box left open would stay the app's modal widget for later tests


def choose_fast_lora(window, key: str) -> None:
    """Settings -> Fast mode LoRA -> OK, as a person does it."""
    window.show_settings()
    dialog = window.settings_dialog
    dialog.fast_lora_combo.setCurrentIndex(dialog.fast_lora_combo.findData(key))
    dialog.accept()


def test_each_few_step_lora_chosen_in_settings_sets_its_sampling_and_switching_off_restores(qtbot, open_window,
                                                                                           tiny_checkpoint,
                                                                                           tmp_path):
    from inkpunk_studio.fast_mode import FEW_STEP_LORAS

    data = tmp_path / "data"
    for spec in FEW_STEP_LORAS.values():  # every LoRA already downloaded: no dialog
        lcm_layout_lora(tiny_checkpoint, spec.file.target(paths.models_dir(data)))
    window = open_window(tiny_checkpoint, data_dir=data)
    set_small_params(window, steps=12, sampler="dpmpp_2m", schedule="karras", cfg_scale=6.5)
    own = ("dpmpp_2m", "karras", 12, 6.5)

    def shown() -> tuple:
        values = window.params_panel.values()
        return values["sampler"], values["schedule"], values["steps"], values["cfg_scale"]

    for key, spec in FEW_STEP_LORAS.items():
        choose_fast_lora(window, key)
        assert window.settings.fast_lora == key and not window.fast_mode.enabled
        window.run_bar.fast_check.click()
        assert window.fast_mode.enabled and window.fast_mode.dialog is None
        assert shown() == (spec.sampler, spec.schedule, spec.steps, spec.cfg_scale), key
        params = window.current_params()
        window.fast_mode.apply(params)
        assert params.loras == ((spec.file.target(paths.models_dir(data)), 1.0, 1.0),)
        window.run_bar.fast_check.click()
        assert not window.fast_mode.enabled and shown() == own, key

    # changed while fast mode is on: the new LoRA's values at once, and off still gives the person's own back
    choose_fast_lora(window, "lcm")
    window.run_bar.fast_check.click()
    choose_fast_lora(window, "hyper")
    hyper = FEW_STEP_LORAS["hyper"]
    assert window.fast_mode.enabled and shown() == (hyper.sampler, hyper.schedule, hyper.steps, hyper.cfg_scale)
    window.params_panel.set_values(steps=2)  # a few-step run on the tiny model
    [path] = run(qtbot, window)
    meta = read_params(path)
    assert (meta.sampler, meta.schedule, meta.steps, meta.cfg_scale) == (hyper.sampler, hyper.schedule, 2, 1.0)
    assert list(meta.lora_hashes) == ["Hyper-SD15-8steps-lora"]
    window.run_bar.fast_check.click()
    assert shown() == own
