"""Make the README screenshot (resources/screenshot.png) from the real app.

    xvfb-run -a -s "-screen 0 1600x1000x24" python resources/make_screenshot.py [OUT.png [LIBRARY_OUT.png]]

Opens the real window on a throwaway data folder with a tiny random-weight checkpoint (so the generated
images are colourful noise, not Inkpunk art), fills in a gallery preset, generates a few images for the history
strip, stars two of them, sets an init image for img2img and grabs the window (and, given a second path, the
Library tab too). Run from the source tree.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = (1400, 900)


def _wait(condition, timeout: float = 600.0) -> None:
    """Process events until `condition()`. Sleeps in Python between rounds: with PySide6 6.11,
    QTest.qWait(50) holds the GIL while it waits, which starved the model-loading thread for minutes."""
    from PySide6.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the app did not get there in time")
        QApplication.processEvents()
        time.sleep(0.02)


def _pause(msecs: int) -> None:
    """Let the app run for `msecs` (thumbnails, token counts arrive from other threads); as _wait, not qWait."""
    end = time.monotonic() + msecs / 1000
    _wait(lambda: time.monotonic() >= end)


def _init_picture(path: Path) -> None:
    """A small ink-and-neon sketch with A1111 parameters, to show the init image panel and its offer."""
    from PIL import Image, ImageDraw, ImageFilter

    from inkpunk_studio.metadata import ImageParams, save_png

    img = Image.new("RGB", (512, 512), "#120f1a")
    draw = ImageDraw.Draw(img)
    for r, colour in ((220, "#ff2e97"), (160, "#b04dff"), (100, "#27e1ff"), (40, "#ffffff")):
        draw.ellipse((256 - r, 236 - r, 256 + r, 236 + r), outline=colour, width=14)
    for k in range(9):
        draw.line((40 + 50 * k, 512, 120 + 40 * k, 330), fill="#ff2e97" if k % 2 else "#27e1ff", width=6)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    save_png(img, path, ImageParams(prompt="nvinkpunk neon rings, ink drips", negative_prompt="blurry", steps=30,
                                    sampler="euler_a", cfg_scale=7.0, seed=2024, width=512, height=512))


def open_window(tmp_dir: Path, prepare=None):
    """The real window, themed, on a data folder in ``tmp_dir`` with a tiny random-weight checkpoint loaded.
    ``prepare(checkpoint, data_dir)``, when given, runs before the window is made (files it should find)."""
    from PySide6.QtWidgets import QApplication

    from engine.testing import write_random_checkpoint
    from inkpunk_studio.app import make_window
    from inkpunk_studio.settings import AppSettings
    from inkpunk_studio.widgets.theme import apply_theme

    app = QApplication.instance() or QApplication([sys.argv[0]])
    QApplication.setApplicationDisplayName("Inkpunk Studio")
    apply_theme(app)
    checkpoint = write_random_checkpoint(tmp_dir / "Inkpunk-Diffusion-v2.safetensors")
    data = tmp_dir / "data"
    if prepare is not None:
        prepare(checkpoint, data)
    settings = AppSettings.for_data_dir(data)
    settings.precision = "fp32"
    settings.sync()
    window = make_window(checkpoint=checkpoint, data_dir=data)
    window.resize(*SIZE)
    window.show()
    _wait(lambda: window.host.state == "ready")
    return window


def main(out: Path, library_out: Path | None = None) -> int:

    from inkpunk_studio import paths
    from inkpunk_studio.widgets.prompt_panel import load_presets

    with tempfile.TemporaryDirectory(prefix="inkpunk-shot-") as tmp:
        tmp_dir = Path(tmp)
        window = open_window(tmp_dir)

        presets = load_presets(paths.resource_path("presets.json"))
        window.params_panel.set_values(steps=4, seed=1234, width=256, height=256, batch_count=4)
        window.prompt_panel.apply_preset(presets[1])
        done: list = []
        window.generationFinished.connect(done.append)
        window.generate()
        _wait(lambda: done)
        saved = done[0]
        window.favorites.add_path(saved[1])
        _wait(lambda: window.favorites.library.count() == 1)
        window.favorites.add_path(saved[3])  # the one on the canvas: the star fills
        _wait(lambda: window.favorites.library.count() == 2)

        window.prompt_panel.apply_preset(presets[0])
        window.params_panel.set_values(batch_count=1, steps=25, width=512, height=512)
        _init_picture(tmp_dir / "neon-rings.png")
        window.init_panel.set_strength(0.6)
        window.init_panel.load(tmp_dir / "neon-rings.png")
        _wait(window.init_panel.has_image)
        window.favorites.view.wait_for_thumbnails()
        _pause(800)  # thumbnails and token counts arrive
        pixmap = window.grab()
        out.parent.mkdir(parents=True, exist_ok=True)
        pixmap.save(str(out), "PNG")
        if library_out is not None:
            window.favorites.show_library(True)
            _pause(500)
            window.grab().save(str(library_out), "PNG")
        window.close()
    print(f"saved {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:3]]
    sys.exit(main(args[0] if args else ROOT / "resources" / "screenshot.png", args[1] if len(args) > 1 else None))
