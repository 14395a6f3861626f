"""Drag-and-drop img2img through the real window: real QDropEvents on the canvas, bad drops, the worker."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from fixtures_app import RUN_TIMEOUT_MS, open_window, set_small_params, tiny_checkpoint  # noqa: F401  (pytest fixtures, used as arguments)
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent, QImage
from PySide6.QtWidgets import QApplication, QLabel, QPushButton, QSlider, QToolButton

from inkpunk_studio.metadata import ImageParams, read_params

A1111_TEXT = ("nvinkpunk a dropped owl, neon feathers\n"
              "Negative prompt: lowres, blurry\n"
              "Steps: 12, Sampler: Euler a, CFG scale: 6.5, Seed: 4242, Size: 512x768, Model hash: abcdef1234, "
              "Model: Inkpunk-Diffusion-v2, Denoising strength: 0.4, Clip skip: 2")


def _drop(widget, mime: QMimeData) -> bool:
    """Drag ``mime`` over ``widget`` and drop it there (real events). Returns whether the drag was accepted."""
    pos = widget.rect().center()
    # QDragEnterEvent takes a QPoint (PySide6 6.12 also converts a QPointF, 6.11 does not); QDropEvent a QPointF
    enter = QDragEnterEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)
    if not enter.isAccepted():
        return False
    drop = QDropEvent(QPointF(pos), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, drop)
    return True


def _file_mime(path: Path) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    return mime


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _state(window) -> tuple:
    return (window.init_panel.has_image(), window.init_panel.name(), window.prompt_panel.prompt(),
            window.prompt_panel.negative_prompt(), window.params_panel.values(), window.init_panel.strength())


def test_dropping_an_a1111_png_sets_the_init_image_and_offers_its_parameters(qtbot, open_window, tiny_checkpoint,
                                                                           tmp_path):
    window = open_window(checkpoint=tiny_checkpoint, wait_ready=False)
    source = tmp_path / "owl.png"
    info = PngInfo()
    info.add_text("parameters", A1111_TEXT)
    _noise(96, 144).save(source, pnginfo=info)
    window.prompt_panel.set_prompts("my own prompt", "")
    before = window.params_panel.values()

    panel = window.init_panel
    assert panel.objectName() == "initImagePanel" and not panel.has_image()
    with qtbot.waitSignal(panel.imageSet, timeout=10_000):
        assert _drop(window.canvas, _file_mime(source))
    assert panel.name() == "owl.png" and panel.image().size == (96, 144)
    assert not window.findChild(QLabel, "initImageThumb").pixmap().isNull()
    assert window.findChild(QSlider, "strengthSlider").isVisible()
    assert window.findChild(QToolButton, "clearInitButton").isVisible()
    assert "generation parameters" in window.statusBar().currentMessage()
    # only an offer: nothing restored yet
    assert window.prompt_panel.prompt() == "my own prompt" and window.params_panel.values() == before
    offer = window.findChild(QPushButton, "restoreInitParamsButton")
    assert offer.isVisible()

    qtbot.mouseClick(offer, Qt.MouseButton.LeftButton)  # accept it
    expected = ImageParams.from_parameters_text(A1111_TEXT)
    assert window.prompt_panel.prompt() == expected.prompt == "nvinkpunk a dropped owl, neon feathers"
    assert window.prompt_panel.negative_prompt() == "lowres, blurry"
    values = window.params_panel.values()
    assert (values["steps"], values["sampler"], values["cfg_scale"], values["seed"]) == (12, "euler_a", 6.5, 4242)
    assert (values["width"], values["height"]) == (512, 768)
    assert panel.strength() == 0.4
    # generating now would use the init image fitted (scaled and centre-cropped) to 512x768
    assert window.current_params().init_image.size == (512, 768)

    # the clear button goes back to text-to-image
    qtbot.mouseClick(window.findChild(QToolButton, "clearInitButton"), Qt.MouseButton.LeftButton)
    assert not panel.has_image() and window.current_params().init_image is None


def test_bad_drops_show_a_message_and_change_nothing(qtbot, open_window, tiny_checkpoint, tmp_path):
    window = open_window(checkpoint=tiny_checkpoint, wait_ready=False)
    panel = window.init_panel
    set_small_params(window, prompt="keep me")
    text_file = tmp_path / "notes.png.txt"
    text_file.write_text("not an image at all\n" * 20)
    good = tmp_path / "good.png"
    _noise(128, 128).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(100_000, 100_000))
    raw_junk = QMimeData()
    raw_junk.setData("image/png", b"\x89PNG\r\n\x1a\n this is not really a PNG")

    limit = panel.max_bytes
    cases = [(_file_mime(text_file), "not an image", limit), (_file_mime(truncated), "truncated or damaged", limit),
             (_file_mime(bomb), "too large", limit), (raw_junk, "not an image", limit),
             (_file_mime(good), "The file is too large", 10_000),  # "huge" without writing 200 MB
             (_file_mime(tmp_path / "gone.png"), "Can't read gone.png", limit)]
    for round_ in ("without an init image", "with one"):
        before = _state(window)
        for mime, expected, max_bytes in cases:
            panel.max_bytes = max_bytes
            with qtbot.waitSignal(panel.loadFailed, timeout=10_000) as failed:
                assert _drop(window.canvas, mime)
            assert expected in failed.args[0], (round_, failed.args[0])
            assert expected in window.statusBar().currentMessage()
            assert _state(window) == before, round_
        panel.max_bytes = limit
        if round_ == "without an init image":
            with qtbot.waitSignal(panel.imageSet, timeout=10_000):
                _drop(window.canvas, _file_mime(good))  # a good drop; the bad ones must not replace it

    # a link to a web page is refused at once; plain text isn't even accepted as a drag
    remote = QMimeData()
    remote.setUrls([QUrl("https://example.com/cat.png")])
    with qtbot.waitSignal(window.canvas.dropRejected, timeout=2_000) as rejected:
        assert _drop(window.canvas, remote)
    assert "Only files on this computer" in rejected.args[0]
    text = QMimeData()
    text.setText("nvinkpunk a cat")
    assert not _drop(window.canvas, text)
    assert panel.name() == "good.png" and window.prompt_panel.prompt() == "keep me"


def test_img2img_from_dropped_image_data_runs_through_the_worker(qtbot, open_window, tiny_checkpoint):
    window = open_window(checkpoint=tiny_checkpoint)
    image = QImage(80, 48, QImage.Format.Format_RGB32)
    image.fill(QColor("#ff2e97"))
    mime = QMimeData()
    mime.setImageData(image)
    with qtbot.waitSignal(window.init_panel.imageSet, timeout=10_000):
        assert _drop(window.canvas, mime)
    assert window.init_panel.image().size == (80, 48) and window.init_panel.params() is None
    assert not window.findChild(QPushButton, "restoreInitParamsButton").isVisible()  # nothing to offer

    set_small_params(window, prompt="nvinkpunk img2img", steps=4)
    window.init_panel.set_strength(0.5)
    steps = []
    window.host.progress.connect(steps.append)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    saved = finished.args[0][0]
    params = read_params(saved)
    assert params.strength == 0.5 and params.prompt == "nvinkpunk img2img"
    assert "Denoising strength: 0.5" in Image.open(saved).text["parameters"]
    # strength 0.5 of 4 steps: A1111 (sd_samplers_kdiffusion.sample_img2img) runs t_enc + 1 = int(0.5 * 4) + 1
    # steps, from sigmas[steps - t_enc - 1]
    assert len(steps) == 3
    assert Image.open(saved).size == (64, 64)

    # cleared: text-to-image again, and the metadata says so
    window.init_panel.clear()
    steps.clear()
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    assert read_params(finished.args[0][0]).strength is None and len(steps) == 4
