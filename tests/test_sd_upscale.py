# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)
"""SD upscale (inkpunk_studio.sd_upscale): A1111's split_grid tiling, feathered blending, a tiny-model refine."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from fixtures_app import RUN_TIMEOUT_MS, open_window, tiny_checkpoint  # noqa: F401  (pytest fixtures)
from PIL import Image

import engine
from engine.testing import write_random_checkpoint
from inkpunk_studio import editing, sd_upscale


@pytest.mark.parametrize("size", [(1024, 1024), (1000, 776), (512, 512), (1100, 300), (64, 72)])
def test_tiles_cover_the_image_with_the_overlap(size):
    width, height = size
    boxes = sd_upscale.split_tiles(width, height, 512, 64)
    covered = np.zeros((height, width), dtype=int)
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert (right - left) % 8 == 0 and (bottom - top) % 8 == 0
        assert right - left == min(512, width // 8 * 8) and bottom - top == min(512, height // 8 * 8)
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1
    xs = sorted({b[0] for b in boxes})
    ws = boxes[0][2] - boxes[0][0]
    for a, b in itertools.pairwise(xs):
        assert a + ws - b >= 64  # neighbours share at least the overlap
    if size == (1024, 1024):  # A1111: ceil((1024 - 64) / 448) = 3 tiles a side, evenly spread
        assert xs == [0, 256, 512] and len(boxes) == 9


def test_bad_tiling_raises():
    with pytest.raises(ValueError, match="multiple of 8"):
        sd_upscale.split_tiles(512, 512, 100, 16)
    with pytest.raises(ValueError, match="overlap"):
        sd_upscale.split_tiles(512, 512, 128, 64)
    with pytest.raises(ValueError, match="at least 64"):
        sd_upscale.split_tiles(40, 512, 128, 16)


def test_constant_tiles_blend_to_the_constant():
    boxes = sd_upscale.split_tiles(300, 200, 128, 32)
    tiles = [Image.new("RGB", (b[2] - b[0], b[3] - b[1]), (10, 200, 77)) for b in boxes]
    out = sd_upscale.blend_tiles(tiles, boxes, (300, 200), 32)
    assert out.size == (300, 200)
    assert (np.asarray(out) == np.array([10, 200, 77], dtype=np.uint8)).all()


def test_blend_feathers_across_the_overlap():
    boxes = sd_upscale.split_tiles(192, 64, 128, 64 // 2 - 8)  # two tiles side by side
    assert len(boxes) == 2
    tiles = [Image.new("RGB", (128, 64), (0, 0, 0)), Image.new("RGB", (128, 64), (255, 255, 255))]
    row = np.asarray(sd_upscale.blend_tiles(tiles, boxes, (192, 64), 24))[10, :, 0].astype(int)
    assert row[: boxes[1][0]].max() == 0 and row[boxes[0][2]:].min() == 255  # outside the overlap: one tile
    seam = row[boxes[1][0]: boxes[0][2]]
    assert (np.diff(seam) >= 0).all() and seam[0] < 128 < seam[-1]  # a smooth ramp, not a hard edge


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("sdup") / "tiny.safetensors", seed=3)
    return engine.load_pipeline(ckpt, device="cpu", dtype="fp32")


def test_refine_with_the_tiny_model_gives_the_upscaled_size(pipe):
    small = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 60, 3), dtype=np.uint8))
    big = editing.upscale(small, 2)  # 120 x 96
    request = engine.GenerationRequest(prompt="ink", steps=4, seed=7, sampler="euler", width=64, height=64)
    ticks = []
    out = sd_upscale.refine(pipe, big, request, 0.5, tile=64, overlap=16,
                            on_tile=lambda done, total: ticks.append((done, total)))
    assert out.size == big.size == (120, 96) and out.mode == "RGB"
    total = len(sd_upscale.split_tiles(120, 96, 64, 16))
    assert ticks == [(i, total) for i in range(1, total + 1)] and total == 6  # 3 x 2
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(big, dtype=int)).mean() > 1  # it did change
    again = sd_upscale.refine(pipe, big, request, 0.5, tile=64, overlap=16)
    assert np.array_equal(np.asarray(out), np.asarray(again))  # the image's seed: reproducible


def test_refine_refuses_bad_input_and_cancels(pipe):
    big = Image.new("RGB", (128, 64), (50, 60, 70))
    request = engine.GenerationRequest(prompt="ink", steps=2, seed=1, width=64, height=64)
    with pytest.raises(ValueError, match="strength"):
        sd_upscale.refine(pipe, big, request, 0.0, tile=64, overlap=16)
    with pytest.raises(ValueError, match="seed"):
        sd_upscale.refine(pipe, big, engine.GenerationRequest(prompt="ink", width=64, height=64), 0.5, tile=64)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(engine.Cancelled):
        sd_upscale.refine(pipe, big, request, 0.5, tile=64, overlap=16, cancel=cancel)


def _source_png(tmp_path):
    from inkpunk_studio.metadata import ImageParams, png_bytes

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    path = tmp_path / "img.png"
    path.write_bytes(png_bytes(image, ImageParams(prompt="ink cat", seed=11, steps=3, width=48, height=40)))
    return path


def test_the_worker_job_refines_and_saves_beside_the_image(qapp, tmp_path):
    from inkpunk_studio.metadata import read_params
    from inkpunk_studio.worker import GenerationJob, GenerationParams, GenerationWorker

    ckpt = write_random_checkpoint(tmp_path / "tiny.safetensors", seed=3)
    source = _source_png(tmp_path)
    worker = GenerationWorker()
    events = {"saved": [], "finished": [], "progress": [], "failed": []}
    worker.imageSaved.connect(events["saved"].append)
    worker.finished.connect(events["finished"].append)
    worker.progress.connect(events["progress"].append)
    worker.failed.connect(events["failed"].append)
    worker.load_model(str(ckpt), "cpu", "fp32")
    params = GenerationParams(prompt="ink cat", steps=3, seed=11, width=64, height=64, sampler="euler")
    spec = sd_upscale.SdUpscale(str(source), factor=2, strength=0.5, tile=64, overlap=16)
    worker.generate(GenerationJob(params, output_dir=tmp_path / "unused", sd_upscale=spec))
    assert events["failed"] == []
    (path,) = events["finished"][0]
    assert path == str(tmp_path / "img-x2.png") and events["saved"][0]["path"] == path
    with Image.open(path) as out:
        assert out.size == (96, 80)
    assert read_params(path).prompt == "ink cat"  # the source's parameters kept, as the plain upscale does
    last = events["progress"][-1]
    assert last["step"] == last["total"] and last["count"] == len(sd_upscale.split_tiles(96, 80, 64, 16))
    assert not (tmp_path / "unused").exists()

    cancelled = []
    worker.cancelled.connect(cancelled.append)
    job = GenerationJob(params, output_dir=tmp_path, sd_upscale=spec)
    worker.progress.connect(lambda _info: job.cancel.set())
    worker.generate(job)
    assert cancelled == [[]] and not (tmp_path / "img-x2-1.png").exists()


def test_bad_sd_upscale_jobs_raise_early(tmp_path):
    with pytest.raises(ValueError, match="factor"):
        sd_upscale.SdUpscale("x.png", factor=3)
    with pytest.raises(ValueError, match="strength"):
        sd_upscale.SdUpscale("x.png", strength=1.5)
    with pytest.raises(ValueError, match="overlap"):
        sd_upscale.SdUpscale("x.png", tile=64, overlap=40)


def test_the_upscale_menu_asks_for_an_sd_upscale_at_the_chosen_strength(qtbot, tmp_path):
    from PySide6.QtGui import QImage

    from inkpunk_studio.widgets.canvas import CanvasPanel
    from inkpunk_studio.widgets.mask_editor import MaskEditor

    panel = CanvasPanel()
    qtbot.addWidget(panel)
    editor = MaskEditor(panel)
    asked = []
    editor.sdUpscaleRequested.connect(lambda *args: asked.append(args))
    assert editor.sd_upscale_shown(2) is False  # nothing saved on show
    source = _source_png(tmp_path)
    panel.show_file(QImage(str(source)), str(source))
    editor.sd_strength_spin.setValue(0.45)
    menu = editor.upscale_button.menu()
    (action,) = [a for a in menu.actions() if a.objectName() == "sdUpscaleX4Action"]
    action.trigger()
    assert asked == [(str(source), 4, 0.45)]
    sd_upscale.SdUpscale(*asked[0])  # what the window gets makes a valid job


def test_the_window_runs_an_sd_upscale_beside_the_image(qtbot, open_window, tiny_checkpoint, tmp_path):
    from inkpunk_studio.metadata import ImageParams, png_bytes

    window = open_window(tiny_checkpoint)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    source = tmp_path / "pic.png"
    source.write_bytes(png_bytes(image, ImageParams(prompt="ink fox", seed=9, steps=2, width=64, height=64)))
    assert window.sd_upscale(str(source), 2, 0.4) is False  # 2 steps at 0.4 denoise nothing: refused at once
    assert "no denoising step" in window.message_box.text()
    window.message_box.close()  # a window-modal box left open disturbs later tests (see test_app_fast)
    source.write_bytes(png_bytes(image, ImageParams(prompt="ink fox", seed=9, steps=4, width=64, height=64)))
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as done:
        assert window.sd_upscale(str(source), 2, 0.4)
    assert done.args[0] == [str(tmp_path / "pic-x2.png")]
    with Image.open(tmp_path / "pic-x2.png") as out:
        assert out.size == (128, 128)
    assert window.prompt_panel.prompt() == "ink fox"  # the image's parameters, restored into the panels
    bare = tmp_path / "bare.png"
    image.save(bare)
    assert window.sd_upscale(str(bare), 2, 0.4) is False  # no parameters: nothing runs
