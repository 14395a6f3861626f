"""``inkpunk_studio.app.main``: the real entry point with its qasync loop, in a subprocess."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from fixtures_app import tiny_checkpoint  # noqa: F401  (pytest fixture, used as an argument)

from inkpunk_studio.metadata import read_params

ROOT = Path(__file__).resolve().parent.parent

DRIVER = textwrap.dedent("""
    import sys
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv[:1])  # main() uses the existing instance
    from inkpunk_studio import app as studio
    from inkpunk_studio.main_window import MainWindow

    def drive():
        window = next(w for w in app.topLevelWidgets() if isinstance(w, MainWindow))
        window.prompt_panel.set_prompts("nvinkpunk through main", "")
        window.params_panel.set_values(width=64, height=64, steps=2, seed=77)
        window.generationFinished.connect(finished)
        print("queued", window.generate(), window.host.state, flush=True)

    def finished(paths):
        print("saved", *paths, flush=True)
        for w in app.topLevelWidgets():
            w.close()

    QTimer.singleShot(300, drive)
    sys.exit(studio.main(sys.argv[1:]))
""")


def test_main_runs_the_app_on_a_qasync_loop_and_exits_cleanly(tmp_path, tiny_checkpoint):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    data = tmp_path / "data"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(ROOT),
           "HOME": str(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_DATA_HOME": str(tmp_path / "share"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    proc = subprocess.run([sys.executable, str(driver), "--checkpoint", str(tiny_checkpoint), "--data-dir", str(data)],
                          check=False, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "queued True loading" in proc.stdout  # the window was up before the model finished loading
    saved = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("saved ")]
    assert len(saved) == 1 and Path(saved[0]).parent == data / "outputs"
    assert read_params(saved[0]).prompt == "nvinkpunk through main"
    assert "Destroyed while thread" not in output and "Traceback" not in output
    assert (data / "settings.ini").is_file()  # settings stayed inside the data folder
    assert list((tmp_path / "state").rglob("*.log"))  # logging went to the per-user log folder
