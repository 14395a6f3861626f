"""inkpunk_studio.networks: model folders in the data folder and in A1111/ComfyUI layouts, previews, the
prompt's <lora:...> tags resolved to files (unknown names refused before a run), embeddings picked by word."""

from __future__ import annotations

from pathlib import Path

import pytest

from inkpunk_studio.networks import (
    MissingNetworks,
    ModelFolders,
    embeddings_in,
    lora_tags,
    preview_for,
    resolve_loras,
)


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def layout(tmp_path):
    data = tmp_path / "data" / "models"
    touch(data / "Lora" / "inkpunk_style.safetensors")
    touch(data / "Lora" / "inkpunk_style.preview.png")
    touch(data / "Lora" / "sub" / "Detail.pt")
    touch(data / "Lora" / "notes.txt")
    touch(data / "Lora" / ".hidden.safetensors")
    touch(data / "embeddings" / "EasyNegative.safetensors")
    touch(data / "embeddings" / "bad word.pt")
    touch(data / "VAE" / "vae-ft-mse.safetensors")
    touch(data / "tiny.safetensors")
    touch(data / "Stable-diffusion" / "dreamshaper.ckpt")
    a1111 = tmp_path / "webui" / "models"
    touch(a1111 / "Lora" / "inkpunk_style.safetensors")  # shadowed by the data folder's
    touch(a1111 / "Lora" / "lcm.safetensors")
    touch(a1111 / "Lora" / "lcm.png")
    touch(a1111.parent / "embeddings" / "badhandv4.pt")
    comfy = tmp_path / "ComfyUI" / "models"
    touch(comfy / "loras" / "comfy_lora.safetensors")
    touch(comfy / "vae" / "kl-f8.pt")
    touch(comfy / "checkpoints" / "anything.safetensors")
    return ModelFolders([data, a1111, "", comfy, data])


def names(files):
    return [f.name for f in files]


def test_scan_every_layout(layout, tmp_path):
    assert len(layout.roots) == 3  # empty and repeated entries dropped
    loras = layout.scan("lora")
    assert names(loras) == ["comfy_lora", "Detail", "inkpunk_style", "lcm"]
    style = next(f for f in loras if f.name == "inkpunk_style")
    assert style.path == tmp_path / "data/models/Lora/inkpunk_style.safetensors"  # the data folder first
    assert style.preview == tmp_path / "data/models/Lora/inkpunk_style.preview.png"
    assert next(f for f in loras if f.name == "lcm").preview == tmp_path / "webui/models/Lora/lcm.png"
    assert next(f for f in loras if f.name == "Detail").preview is None
    assert names(layout.scan("embedding")) == ["bad word", "badhandv4", "EasyNegative"]
    assert names(layout.scan("vae")) == ["kl-f8", "vae-ft-mse"]
    assert names(layout.scan("checkpoint")) == ["anything", "dreamshaper", "tiny"]
    assert layout.find("lora", "detail").name == "Detail"
    assert layout.find("lora", "nope") is None
    with pytest.raises(ValueError, match="kind"):
        layout.scan("hypernet")


def test_missing_folders_are_empty(tmp_path):
    folders = ModelFolders([tmp_path / "nowhere"])
    assert all(folders.scan(kind) == [] for kind in ("lora", "embedding", "vae", "checkpoint"))


def test_preview_png_beside_the_file(tmp_path):
    model = touch(tmp_path / "a.safetensors")
    assert preview_for(model) is None
    touch(tmp_path / "a.png")
    assert preview_for(model) == tmp_path / "a.png"
    touch(tmp_path / "a.preview.png")
    assert preview_for(model) == tmp_path / "a.preview.png"  # Civitai Helper's name first


def test_lora_tags_as_a1111():
    prompt = "a fox <lora:inkpunk_style:0.7>, <lora:Detail:0.5:1.2> <lora:lcm> <hypernet:x:1> <lora:b:te=0.3:unet=2>"
    assert lora_tags(prompt) == [("inkpunk_style", 0.7, 0.7), ("Detail", 0.5, 1.2), ("lcm", 1.0, 1.0),
                                 ("b", 0.3, 2.0)]
    with pytest.raises(ValueError, match="not a number"):
        lora_tags("<lora:x:strong>")
    with pytest.raises(ValueError, match="finite"):
        lora_tags("<lora:x:nan>")


def test_resolve_loras_to_paths_and_refuse_unknown_names(layout, tmp_path):
    got = resolve_loras("a fox <lora:inkpunk_style:0.7> <lora:detail:0.5:1>", layout)
    assert got == [(tmp_path / "data/models/Lora/inkpunk_style.safetensors", 0.7, 0.7),
                   (tmp_path / "data/models/Lora/sub/Detail.pt", 0.5, 1.0)]
    assert resolve_loras("no tags here", layout) == []
    with pytest.raises(MissingNetworks) as info:
        resolve_loras("<lora:inkpunk_style:1> <lora:gone:1> <lora:also_gone:0.2> <lora:gone:2>", layout)
    assert info.value.names == ["gone", "also_gone"]
    assert "gone, also_gone" in str(info.value)


def test_embeddings_by_word_in_either_prompt(layout):
    assert names(embeddings_in(["a fox", "easynegative, blurry"], layout)) == ["EasyNegative"]
    assert names(embeddings_in(["(badhandv4:1.2) a fox", ""], layout)) == ["badhandv4"]
    assert embeddings_in(["bad word"], layout) == []  # a stem with a space can't be a word
    assert embeddings_in(["a fox", ""], layout) == []
