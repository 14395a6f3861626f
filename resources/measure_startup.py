"""How long a person waits for the window, and for the model behind it (issue #6's "window up in under 2 s").

    python resources/measure_startup.py --checkpoint PATH [--runs 5]      # QT_QPA_PLATFORM=offscreen default
    xvfb-run -a python resources/measure_startup.py --checkpoint PATH     # on a real (virtual) screen

Starts the real app (`python -m inkpunk_studio --checkpoint PATH`) in a fresh process per run, on a throwaway
data folder, and times from the moment the process is spawned (interpreter start-up included) until the app
logs "window up" (its event loop has shown the window) and until the engine logs that the checkpoint is
loaded (on the worker thread, behind the window). Without --checkpoint a tiny random-weight checkpoint is
written first (the window figure is then the same; the load figure means little). Prints a line per run and
the medians. Run from the source tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs the app's own entry point, with its window and load log lines also sent to stderr for us to see.
BOOTSTRAP = """
import logging, sys
from inkpunk_studio.__main__ import main
handler = logging.StreamHandler(sys.stderr)
handler.setLevel(logging.INFO)
handler.setFormatter(logging.Formatter("PROBE %(name)s %(message)s"))
for name in ("inkpunk_studio.app", "engine.pipeline"):
    logging.getLogger(name).addHandler(handler)
sys.exit(main(sys.argv[1:]))
"""


def run_once(checkpoint: Path, timeout: float) -> tuple[float, float]:
    """(seconds to the window, seconds to the loaded model) for one fresh app process."""
    env = dict(os.environ)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="inkpunk-startup-") as data:
        env["XDG_STATE_HOME"] = env["XDG_CACHE_HOME"] = data  # the app's log file stays in the temp folder
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, "--checkpoint", str(checkpoint), "--data-dir", data],
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        times: dict[str, float] = {}
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if line.startswith("PROBE inkpunk_studio.app window up"):
                    times.setdefault("window", time.perf_counter() - started)
                elif line.startswith("PROBE engine.pipeline loaded"):
                    times.setdefault("loaded", time.perf_counter() - started)
                if len(times) == 2:
                    break
        finally:
            timer.cancel()
            proc.kill()
            proc.wait()
    if len(times) != 2:
        raise RuntimeError(f"the app did not report both events within {timeout:.0f} s: {times}")
    return times["window"], times["loaded"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="checkpoint to load (default: a tiny random one)")
    p.add_argument("--runs", type=int, default=5, help="fresh app processes (default: 5)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per run (default: 120)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="inkpunk-startup-ckpt-") as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            sys.path.insert(0, str(ROOT))
            from engine.testing import write_random_checkpoint

            checkpoint = write_random_checkpoint(Path(tmp) / "tiny.safetensors")
        results = []
        for i in range(args.runs):
            window, loaded = run_once(checkpoint, args.timeout)
            results.append((window, loaded))
            print(f"run {i + 1}: window up {window:.2f} s, model loaded {loaded:.2f} s", flush=True)
    print(
        f"median of {args.runs}: window up {statistics.median(r[0] for r in results):.2f} s, "
        f"model loaded {statistics.median(r[1] for r in results):.2f} s after the process was spawned "
        f"({checkpoint.name})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
