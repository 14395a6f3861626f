"""Make the README's mask-mode screenshot (docs/screenshot-mask.png) from the real app.

    xvfb-run -a -s "-screen 0 1600x1000x24" python resources/make_mask_screenshot.py [OUT.png]

Opens the real window on a throwaway data folder with a tiny random-weight checkpoint, shows a small
ink-and-neon picture on the canvas, turns the mask mode on and paints a mask with real mouse events (the
brush circle shows where the pointer rests), then grabs the window. Run from the source tree.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "resources"))

from make_screenshot import _init_picture, _pause, open_window  # after the path setup


def main(out: Path) -> int:
    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtGui import QImage
    from PySide6.QtTest import QTest

    from inkpunk_studio import paths
    from inkpunk_studio.widgets.prompt_panel import load_presets

    with tempfile.TemporaryDirectory(prefix="inkpunk-shot-") as tmp:
        tmp_dir = Path(tmp)
        window = open_window(tmp_dir)
        window.prompt_panel.apply_preset(load_presets(paths.resource_path("presets.json"))[0])
        picture = tmp_dir / "neon-rings.png"
        _init_picture(picture)
        window.canvas_panel.show_file(QImage(str(picture)), str(picture), "neon-rings.png  ·  512x512")
        editor = window.mask_editor
        editor.set_mask_mode(True)
        editor.size_spin.setValue(56)
        _pause(300)
        canvas = window.canvas
        rect = canvas.image_rect()

        def at(x: float, y: float) -> QPoint:
            return QPoint(round(rect.x() + x * rect.width() / 512), round(rect.y() + y * rect.height() / 512))

        for path in (((150, 180), (200, 150), (260, 140), (320, 160), (360, 210)),
                     ((170, 230), (240, 210), (310, 220), (340, 260))):
            QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(*path[0]))
            for point in path[1:]:
                QTest.mouseMove(canvas, at(*point))
            QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(*path[-1]))
        QTest.mouseMove(canvas, at(400, 330))
        _pause(500)
        out.parent.mkdir(parents=True, exist_ok=True)
        window.grab().save(str(out), "PNG")
        window.close()
    print(f"saved {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshot-mask.png"))
