"""The window comes up without waiting for PyTorch: the app's modules and the engine's names import without
torch (the model load imports it on the worker thread), and the start-up probe sees the real app do it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.strip()


def test_window_modules_import_without_torch():
    # ... and pressing Generate while the model still loads builds (and validates) its request without torch
    code = (
        "import sys, engine, inkpunk_studio.app, inkpunk_studio.main_window\n"
        "assert engine.SAMPLERS[0] == 'dpmpp_2m' and engine.DISPLAY_NAMES['euler_a'] == 'Euler a'\n"
        "engine.GenerationRequest(prompt='a cat', sampler='euler_a', steps=20)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    assert _run(code) == "[]"


def test_torch_free_names_match_the_samplers():
    from engine import names, samplers

    assert sorted(names.SAMPLERS) == sorted(samplers.SAMPLERS) == sorted(names.DISPLAY_NAMES)


def test_engine_names_load_on_first_use():
    code = (
        "import sys, engine\n"
        "assert 'torch' not in sys.modules\n"
        "assert engine.load_pipeline.__module__ == 'engine.pipeline' and 'torch' in sys.modules\n"
        "try:\n    engine.no_such_name\nexcept AttributeError as e:\n    print(e)"
    )
    assert _run(code) == "module 'engine' has no attribute 'no_such_name'"


def test_startup_probe_times_the_real_app():
    out = subprocess.run(
        [sys.executable, str(ROOT / "resources" / "measure_startup.py"), "--runs", "1", "--timeout", "240"],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "run 1: window up" in out.stdout and "model loaded" in out.stdout
