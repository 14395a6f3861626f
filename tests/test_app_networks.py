"""LoRAs, embeddings, the VAE and the model combo through the real window and worker (issue 13)."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from fixtures_app import (  # noqa: F401  (pytest fixtures, used as arguments)
    RUN_TIMEOUT_MS,
    open_window,
    set_small_params,
    tiny_checkpoint,
    wait_model,
)
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QListWidget
from safetensors.torch import save_file
from torch import nn

import engine
from engine.checkpoint import load_models
from engine.config import TextEncoderConfig
from engine.testing import ldm_state_dict
from inkpunk_studio.metadata import read_params, save_png
from inkpunk_studio.metadata.params import ImageParams


def write_lora(models, path: Path, seed: int = 0) -> Path:
    """A kohya LoRA over every UNet Linear layer (LDM module names), rank 2."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in models.unet.named_modules():
        if isinstance(m, nn.Linear):
            out_f, in_f = m.weight.shape
            key = "lora_unet_" + name.replace(".", "_")
            out[f"{key}.lora_down.weight"] = torch.randn(2, in_f, generator=g) / math.sqrt(in_f)
            out[f"{key}.lora_up.weight"] = torch.randn(out_f, 2, generator=g) * 0.5
            out[f"{key}.alpha"] = torch.tensor(2.0)
    save_file(out, str(path))
    return path


@pytest.fixture
def data_dir(tmp_path, tiny_checkpoint):
    """A data folder whose models/ holds two checkpoints, a LoRA with a preview, and an embedding."""
    models = tmp_path / "data" / "models"
    (models / "Lora").mkdir(parents=True)
    (models / "embeddings").mkdir()
    shutil.copy(tiny_checkpoint, models / "tiny.safetensors")
    shutil.copy(tiny_checkpoint, models / "other.safetensors")
    write_lora(load_models(tiny_checkpoint, device="cpu", dtype=torch.float32), models / "Lora" / "inkstyle.safetensors")
    Image.new("RGB", (32, 32), "red").save(models / "Lora" / "inkstyle.preview.png")
    width = TextEncoderConfig.tiny().width
    save_file({"emb_params": torch.randn(2, width)}, str(models / "embeddings" / "easyneg.safetensors"))
    return tmp_path / "data"


def test_networks_panel_inserts_and_a_run_records_the_hashes(qtbot, open_window, data_dir):
    models = data_dir / "models"
    window = open_window(checkpoint=models / "tiny.safetensors", data_dir=data_dir)
    loras = window.findChild(QListWidget, "loraList")
    embeddings = window.findChild(QListWidget, "embeddingList")
    qtbot.waitUntil(lambda: loras.count() == 1 and embeddings.count() == 1, timeout=10_000)
    assert loras.item(0).text() == "inkstyle" and not loras.item(0).icon().isNull()  # the preview

    set_small_params(window, prompt="a fox", steps=2)
    edit = window.prompt_panel.prompt_edit
    cursor = edit.textCursor()
    cursor.setPosition(len("a fox"))
    edit.setTextCursor(cursor)
    rect = loras.visualItemRect(loras.item(0))
    qtbot.mouseClick(loras.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.prompt_panel.prompt() == "a fox <lora:inkstyle:1>"
    highlighter = window.networks.highlighter
    assert highlighter.missing("a <lora:InkStyle:1> <lora:gone:0.5:1>") == ["gone"]
    window.prompt_panel.set_prompts("<lora:gone:1> <lora:inkstyle:1>", "blurry")
    block = edit.document().firstBlock()
    coloured = {(r.start, r.length) for r in block.layout().formats() if r.format.fontUnderline()}
    assert coloured == {(0, len("<lora:gone:1>"))}

    window.networks.panel.search_edit.setText("zzz")
    assert loras.item(0).isHidden()
    window.networks.panel.search_edit.setText("INK")
    assert not loras.item(0).isHidden()

    window.prompt_panel.set_prompts("a fox <lora:inkstyle:0.8>", "easyneg, blurry")
    vae = models / "VAE" / "my-vae.safetensors"
    vae.parent.mkdir()
    save_file({k: v for k, v in ldm_state_dict(seed=3).items() if k.startswith("first_stage_model.")}, str(vae))
    window.settings.vae = str(vae)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    meta = read_params(finished.args[0][0])
    assert meta.lora_hashes == {"inkstyle": engine.lora_hash(models / "Lora" / "inkstyle.safetensors")}
    assert meta.ti_hashes == {"easyneg": engine.embedding_hash(models / "embeddings" / "easyneg.safetensors")}
    assert (meta.vae_name, meta.vae_hash) == ("my-vae.safetensors", engine.vae_hash(vae))
    assert meta.prompt == "a fox <lora:inkstyle:0.8>"  # the tag stays in the saved prompt, as A1111


def test_unknown_lora_is_refused_before_the_run(qtbot, open_window, data_dir):
    window = open_window(checkpoint=data_dir / "models" / "tiny.safetensors", data_dir=data_dir)
    set_small_params(window, prompt="a fox <lora:nowhere:1> <lora:inkstyle:1>")
    with qtbot.waitSignal(window.errorShown, timeout=5_000) as shown:
        assert not window.generate()
    assert shown.args[0] == "Can't generate" and "nowhere" in shown.args[1] and "inkstyle" not in shown.args[1]
    assert not window.host.busy


def test_model_combo_switches_on_the_worker(qtbot, open_window, data_dir):
    window = open_window(checkpoint=data_dir / "models" / "tiny.safetensors", data_dir=data_dir)
    combo = window.findChild(QComboBox, "modelCombo")
    assert [combo.itemText(i) for i in range(combo.count())] == ["other", "tiny"]
    assert combo.currentText() == "tiny"
    combo.activated.emit(combo.findText("other"))
    assert window.host.state == "loading"  # returned at once: the load runs on the worker
    wait_model(qtbot, window)
    assert window.host.model_info["name"] == "other" and combo.currentText() == "other"
    assert window.settings.checkpoint == str(data_dir / "models" / "other.safetensors")
    assert not window.networks.convert_action.isEnabled()  # already .safetensors


def test_restoring_an_image_names_what_is_missing_and_offers_the_match(qtbot, open_window, data_dir, tmp_path):
    lora = data_dir / "models" / "Lora" / "inkstyle.safetensors"
    window = open_window(checkpoint=data_dir / "models" / "tiny.safetensors", data_dir=data_dir)
    image = tmp_path / "civitai.png"
    save_png(Image.new("RGB", (64, 64)), image,
             ImageParams(prompt="a fox <lora:ink_v2:0.7>", lora_hashes={"ink_v2": engine.lora_hash(lora)},
                         ti_hashes={"badhand": "0123456789ab"}, steps=3, seed=1, width=64, height=64))
    with qtbot.waitSignal(window.networks.missingFound, timeout=10_000) as found:
        window.restore_from_file(str(image))
    missing = found.args[0]
    assert [(m.kind, m.name, m.match) for m in missing] == [("lora", "ink_v2", lora), ("embedding", "badhand", None)]
    box = window.message_box
    assert box is not None and "ink_v2" in box.text() and "0123456789ab" in box.text()
    use = next(b for b in box.buttons() if b.text() == "Use the matching files")
    use.click()
    assert window.prompt_panel.prompt() == "a fox <lora:inkstyle:0.7>"


def test_settings_offer_the_vae_files_and_extra_folders(qtbot, open_window, data_dir, tmp_path):
    comfy = tmp_path / "ComfyUI" / "models"
    (comfy / "vae").mkdir(parents=True)
    (comfy / "vae" / "kl-f8.safetensors").write_bytes(b"x")
    window = open_window(data_dir=data_dir)
    window.settings.model_folders = [str(comfy)]
    window.show_settings()
    dialog = window.settings_dialog
    combo = dialog.findChild(QComboBox, "vaeCombo")
    assert [combo.itemText(i) for i in range(combo.count())] == ["Automatic (from the checkpoint)", "kl-f8"]
    combo.setCurrentIndex(1)
    values = dialog.values()
    assert values.vae == str(comfy / "vae" / "kl-f8.safetensors") and values.model_folders == (str(comfy),)
    dialog.accept()
    assert window.settings.vae == values.vae
    dialog.close()


def test_a_broken_lora_file_fails_the_run_with_its_name(qtbot, open_window, data_dir):
    (data_dir / "models" / "Lora" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{oops")
    window = open_window(checkpoint=data_dir / "models" / "tiny.safetensors", data_dir=data_dir)
    set_small_params(window, prompt="a fox <lora:broken:1>")
    with qtbot.waitSignal(window.host.failed, timeout=RUN_TIMEOUT_MS) as failed:
        assert window.generate()
    assert "broken.safetensors" in failed.args[0]
    assert not list(data_dir.rglob("outputs/*.png"))


def test_convert_the_loaded_ckpt(qtbot, open_window, tmp_path):
    from engine.testing import write_random_checkpoint

    (tmp_path / "data" / "models").mkdir(parents=True)
    ckpt = write_random_checkpoint(tmp_path / "data" / "models" / "old.ckpt", seed=2)
    window = open_window(checkpoint=ckpt, data_dir=tmp_path / "data")
    action = window.networks.convert_action
    assert action.isEnabled()
    with qtbot.waitSignal(window.networks.converted, timeout=60_000) as done:
        action.trigger()
    assert done.args[0] == str(tmp_path / "data" / "models" / "old.safetensors") and ckpt.is_file()
    combo = window.findChild(QComboBox, "modelCombo")
    assert "old" in [combo.itemText(i) for i in range(combo.count())]
