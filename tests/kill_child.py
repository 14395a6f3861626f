"""Run a child process that prints a line per confirmed write, and SIGKILL it at a random moment.

For the crash tests (the library's and the queue's).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_and_kill(script: str, args: list[str], rng: random.Random, first_line_timeout: float = 60.0) -> list[str]:
    """Start ``tests/<script> args...``, wait for its first line, kill it 0-0.4 s later; its whole lines."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    lines: list[bytes] = []
    first = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            first.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    if not first.wait(first_line_timeout):
        proc.kill()
        pytest.fail(f"{script} never confirmed a write: {proc.stderr.read().decode()[-2000:]}")
    time.sleep(rng.uniform(0.0, 0.4))
    proc.kill()  # SIGKILL
    proc.wait()
    thread.join(5)
    proc.stderr.close()
    return [line.decode() for line in lines if line.endswith(b"\n")]
