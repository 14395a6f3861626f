"""History: saved images come back after a restart; a thumbnail shows its image and restores its parameters."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

from fixtures_app import RUN_TIMEOUT_MS, open_window, set_small_params, tiny_checkpoint  # noqa: F401  (pytest fixtures, used as arguments)
from PIL import Image

from inkpunk_studio.metadata import ImageParams, save_png


def test_history_survives_a_restart_and_restores_parameters(qtbot, open_window, tiny_checkpoint, tmp_path):
    data = tmp_path / "data"
    window = open_window(checkpoint=tiny_checkpoint, data_dir=data)
    set_small_params(window, prompt="nvinkpunk first", steps=1, seed=11)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as first:
        window.generate()
    window.prompt_panel.set_prompts("nvinkpunk second", "")
    window.params_panel.set_values(seed=22, steps=2)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as second:
        window.generate()
    window.close()

    # A file written by another tool (A1111-style metadata, odd size) shows up too.
    outside = data / "outputs" / "from-elsewhere.png"
    save_png(Image.new("RGB", (96, 80), "magenta"), outside,
             ImageParams(prompt="elsewhere", steps=30, sampler="euler_a", seed=5, width=520, height=512))

    again = open_window(checkpoint=tiny_checkpoint, data_dir=data)
    strip = again.history_strip
    qtbot.waitUntil(lambda: strip.count() == 3, timeout=10_000)
    assert strip.paths() == [str(outside), second.args[0][0], first.args[0][0]]
    # thumbnails load in the background and replace the placeholders
    qtbot.waitUntil(lambda: all(strip.item(i).icon().cacheKey() != strip._placeholder.cacheKey()
                                for i in range(strip.count())), timeout=10_000)
    # the last session's parameters are back
    assert again.prompt_panel.prompt() == "nvinkpunk second"
    assert again.params_panel.values()["seed"] == 22

    # click the first image: it shows on the canvas; restore puts its parameters back
    strip.setCurrentRow(2)
    qtbot.waitUntil(lambda: again.canvas.path == first.args[0][0], timeout=10_000)
    assert again.canvas.image().size().width() == 64
    assert again.canvas_panel.restore_button.isEnabled()
    again.canvas_panel.restore_button.click()
    qtbot.waitUntil(lambda: again.prompt_panel.prompt() == "nvinkpunk first", timeout=10_000)
    assert again.params_panel.values()["seed"] == 11 and again.params_panel.values()["steps"] == 1

    # the foreign image: parameters that don't fit the controls are adjusted and reported
    strip.setCurrentRow(0)
    qtbot.waitUntil(lambda: again.canvas.path == str(outside), timeout=10_000)
    again.restore_current()
    qtbot.waitUntil(lambda: again.prompt_panel.prompt() == "elsewhere", timeout=10_000)
    values = again.params_panel.values()
    assert (values["sampler"], values["width"], values["height"]) == ("euler_a", 512, 512)
    assert "width 520 -> 512" in again.statusBar().currentMessage()


def test_a_selected_thumbnail_shows_its_picture_untinted(qtbot):
    """Qt tints a selected item's icon with the highlight colour unless the icon has a Selected pixmap: the
    chosen thumbnail looked unlike its image (the pink frame already marks the selection)."""
    from PySide6.QtGui import QIcon, QImage

    from inkpunk_studio.widgets.history_strip import HistoryStrip

    strip = HistoryStrip()
    qtbot.addWidget(strip)
    strip.show()
    image = QImage(64, 64, QImage.Format.Format_RGB32)
    image.fill(0x00FFFF)  # cyan, as the tinted thumbnails in the README screenshot were not
    strip.add_path("/tmp/a.png")
    strip.set_thumbnail("/tmp/a.png", image)
    strip.setCurrentRow(0)
    icon = strip.item(0).icon()
    size = strip.iconSize()
    normal = icon.pixmap(size, QIcon.Mode.Normal).toImage()
    selected = icon.pixmap(size, QIcon.Mode.Selected).toImage()
    assert selected == normal and selected.pixelColor(10, 10).name() == "#00ffff"
    plain = QIcon(icon.pixmap(size, QIcon.Mode.Normal))  # what it was: Qt's generated selected pixmap differs
    assert plain.pixmap(size, QIcon.Mode.Selected).toImage() != normal
