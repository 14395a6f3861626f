"""`python main.py --self-test`: the real window, worker and library on a tiny model, in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _self_test(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    return subprocess.run(
        [sys.executable, "main.py", "--self-test", *args],
        cwd=ROOT,
        env=env,  # no display and no platform chosen: the self-test must go offscreen by itself
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_self_test_passes_and_says_so_in_one_line() -> None:
    proc = _self_test()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "self-test passed\n"


def test_self_test_failure_gives_the_reason_and_a_nonzero_exit() -> None:
    proc = _self_test("--timeout", "0.01")  # far too short for any generation
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "self-test failed: no image within 0 s" in proc.stderr
