"""The PyInstaller bundle: build it from inkpunk_studio.spec, run the built executable's --self-test offscreen.

Slow (minutes: PyInstaller analyses all of torch) and needs the `bundle` extra, so it is opt-in:

    pip install torch==2.13.0 -e ".[bundle]" && python -m pytest -m bundle tests/test_bundle.py

Prints the build time and the bundle's size (the README quotes them).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bundle

ROOT = Path(__file__).resolve().parent.parent
APP_NAME = "InkpunkStudio"


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def test_bundle_builds_and_passes_its_self_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert importlib.util.find_spec("PyInstaller"), 'PyInstaller is missing: pip install -e ".[bundle]"'
    dist, work = tmp_path / "dist", tmp_path / "build"
    started = time.perf_counter()
    build = subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
         "--distpath", str(dist), "--workpath", str(work), str(ROOT / "inkpunk_studio.spec")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    build_seconds = time.perf_counter() - started
    assert build.returncode == 0, build.stderr[-5000:]

    folder = dist / APP_NAME
    exe = folder / (f"{APP_NAME}.exe" if sys.platform == "win32" else APP_NAME)
    assert exe.is_file(), sorted(p.name for p in folder.iterdir())
    assert (folder / "_internal" / "assets" / "tokenizer" / "vocab.json").is_file()
    assert (folder / "_internal" / "resources" / "icon.png").is_file()
    if sys.platform == "darwin":
        assert (dist / "Inkpunk Studio.app" / "Contents" / "Info.plist").is_file()
    before = _tree(folder)
    size_mb = sum(size for size, _ in before.values()) / 2**20

    # A clean environment: no display, no platform chosen, not run from the source tree.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY", "PYTHONPATH", "PYTHONHOME")
    }
    started = time.perf_counter()
    run = subprocess.run(
        [str(exe), "--self-test"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    self_test_seconds = time.perf_counter() - started
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    assert run.stdout == "self-test passed\n"
    assert _tree(folder) == before, "the bundle wrote into its own folder"

    with capsys.disabled():
        print(
            f"\nbundle: built in {build_seconds:.0f} s, {size_mb:.0f} MiB in {len(before)} files; "
            f"self-test {self_test_seconds:.1f} s"
        )
