"""``main.py --self-test``: prove an install (or a bundle) works end to end, without weights or a display.

In a temporary folder: write a tiny random-weight SD1.x checkpoint, open the real main window offscreen on the
real worker thread and qasync loop, type a prompt and parameters into the widgets, press Generate, wait for
the image, check the PNG's ``parameters`` text, star it into the favorites library (inside the temporary
folder), close the window, reopen the library and read the favorite back. Prints exactly one line, ``self-test
passed``, and returns 0; otherwise prints ``self-test failed: <reason>`` to stderr and returns 1. Nothing is
written outside the temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROMPT = "nvinkpunk self-test, a fox made of ink splatter"
NEGATIVE = "blurry"
SIZE, STEPS, SEED, CFG = 64, 3, 4242, 6.5
DEFAULT_TIMEOUT = 300.0


class SelfTestError(Exception):
    """A check failed; the message is the reason printed to the person."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inkpunk-studio --self-test", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds (default %(default)s)"
    )
    args, _unknown = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    _attach_windows_console()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="inkpunk-selftest-") as tmp:
        try:
            _run(Path(tmp), args.timeout)
        except Exception as exc:
            log.exception("self-test failed")
            reason = str(exc) if isinstance(exc, SelfTestError) else f"{type(exc).__name__}: {exc}"
            print(f"self-test failed: {reason}", file=sys.stderr, flush=True)
            return 1
    log.info("self-test passed in %.1f s", time.perf_counter() - started)
    print("self-test passed", flush=True)
    return 0


def _attach_windows_console() -> None:
    """A windowed Windows build has no stdout; borrow the console of the shell that started us, if any."""
    if sys.platform != "win32" or (sys.stdout is not None and sys.stderr is not None):
        return
    import ctypes

    if ctypes.windll.kernel32.AttachConsole(-1):  # ATTACH_PARENT_PROCESS
        sys.stdout = open("CONOUT$", "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
        sys.stderr = open("CONOUT$", "w", encoding="utf-8")  # noqa: SIM115


def _run(tmp: Path, timeout: float) -> None:
    # Headless unless the caller chose a platform: the self-test must run on servers and in CI.
    if not os.environ.get("QT_QPA_PLATFORM"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from inkpunk_studio import logsetup

    logsetup.install(tmp / "logs")  # the temporary folder, not the person's log folder
    errors: list[str] = []
    default_hook = sys.excepthook

    def record(exc_type, exc, tb) -> None:  # an exception in a Qt slot fails the test instead of a dialog
        logging.getLogger(__name__).error("uncaught", exc_info=(exc_type, exc, tb))
        errors.append(f"{exc_type.__name__}: {exc}")

    sys.excepthook = record
    try:
        import qasync
        from PySide6.QtWidgets import QApplication

        import engine.testing
        from inkpunk_studio import worker

        checkpoint = engine.testing.write_random_checkpoint(tmp / "selftest.safetensors")
        app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "inkpunk-studio"])
        loop = qasync.QEventLoop(app)
        asyncio.set_event_loop(loop)
        worker.set_app_loop(loop)
        try:
            with loop:
                loop.run_until_complete(
                    asyncio.wait_for(_generate_and_check(checkpoint, tmp, errors), timeout=timeout)
                )
        except asyncio.TimeoutError:
            raise SelfTestError(f"no image within {timeout:.0f} s") from None
        if errors:
            raise SelfTestError(errors[0])
    finally:
        sys.excepthook = default_hook


def _signal_future(signal: Any) -> asyncio.Future:
    """A future resolved with the arguments of the next emission of a Qt signal."""
    future = asyncio.get_running_loop().create_future()

    def done(*args: Any) -> None:
        if not future.done():
            future.set_result(args)

    signal.connect(done)
    future.add_done_callback(lambda _f: signal.disconnect(done))
    return future


async def _wait_until(condition, what: str, errors: list[str], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if errors:
            raise SelfTestError(errors[0])
        if time.monotonic() > deadline:
            raise SelfTestError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _generate_and_check(checkpoint: Path, tmp: Path, errors: list[str]) -> None:
    from PySide6.QtWidgets import (
        QAbstractButton,
        QComboBox,
        QDoubleSpinBox,
        QPlainTextEdit,
        QPushButton,
        QSpinBox,
        QWidget,
    )

    from inkpunk_studio.app import make_window
    from inkpunk_studio.favorites import library_dir
    from inkpunk_studio.metadata import read_params

    window = make_window(checkpoint=checkpoint, data_dir=tmp / "data")
    failures: list[str] = []
    window.errorShown.connect(lambda title, text: failures.append(f"{title}: {text}"))
    window.show()
    try:
        await _wait_until(
            lambda: window.host.state in ("ready", "failed") or failures, "the model to load", errors
        )
        if window.host.state != "ready":
            raise SelfTestError(f"the model did not load: {failures[0] if failures else window.host.state}")

        def widget(kind: type, name: str) -> Any:
            found = window.findChild(kind, name)
            if found is None:
                raise SelfTestError(f"the window has no {kind.__name__} named {name!r}")
            return found

        # Through the widgets, as a person would.
        widget(QPlainTextEdit, "promptEdit").setPlainText(PROMPT)
        widget(QPlainTextEdit, "negativePromptEdit").setPlainText(NEGATIVE)
        widget(QSpinBox, "stepsSpin").setValue(STEPS)
        widget(QDoubleSpinBox, "cfgSpin").setValue(CFG)
        widget(QWidget, "seedSpin").setValue(SEED)  # a 64-bit seed box, not a QSpinBox
        widget(QSpinBox, "batchSpin").setValue(1)
        for name in ("widthCombo", "heightCombo"):
            combo = widget(QComboBox, name)
            combo.setCurrentText(str(SIZE))
            if combo.currentText() != str(SIZE):
                raise SelfTestError(f"{name} refused {SIZE}")
        sampler_combo = widget(QComboBox, "samplerCombo")
        sampler = sampler_combo.currentData() or sampler_combo.currentText()

        finished = _signal_future(window.generationFinished)
        cancelled = _signal_future(window.generationCancelled)
        widget(QPushButton, "generateButton").click()
        done, _pending = await asyncio.wait({finished, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        if cancelled in done:
            raise SelfTestError("the generation was cancelled")
        if errors or failures:
            raise SelfTestError((errors or failures)[0])
        (paths,) = finished.result()
        if len(paths) != 1:
            raise SelfTestError(f"expected one image, got {len(paths)}")
        image_path = Path(paths[0])
        _check_image(image_path, read_params(image_path), sampler, checkpoint.stem, "the saved image")

        # The star button adds the image on show to the favorites library (in the temporary data folder).
        added = _signal_future(window.favorites.favoriteAdded)
        widget(QAbstractButton, "favoriteButton").click()
        try:
            favorite_id, _new = await asyncio.wait_for(added, timeout=60)
        except asyncio.TimeoutError:
            raise SelfTestError("the favorite was not added within 60 s") from None
    finally:
        window.close()
        if window.host.is_running():
            window.host.shutdown()
    if window.host.is_running():
        raise SelfTestError("the worker thread did not stop when the window closed")
    _check_library(favorite_id, library_dir(tmp / "data"), sampler, checkpoint.stem)


def _check_image(path: Path, params: Any, sampler: str, model_name: str, what: str) -> None:
    from PIL import Image

    if not path.is_file():
        raise SelfTestError(f"{what} is missing: {path}")
    with Image.open(path) as img:
        if img.format != "PNG" or img.size != (SIZE, SIZE):
            raise SelfTestError(f"{what} is a {img.format} of {img.size}, not a {SIZE}x{SIZE} PNG")
    if params is None:
        raise SelfTestError(f"{what} has no generation parameters")
    expected = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "steps": STEPS,
        "cfg_scale": CFG,
        "seed": SEED,
        "width": SIZE,
        "height": SIZE,
        "legacy_sampler": sampler,  # the combo's name; the file holds it as sampler + schedule
        "model_name": model_name,
    }
    wrong = {k: getattr(params, k) for k, v in expected.items() if getattr(params, k) != v}
    if wrong:
        raise SelfTestError(f"{what}'s parameters differ from what was asked: {wrong}")
    if len(params.model_hash) != 10:
        raise SelfTestError(f"{what} has no model hash ({params.model_hash!r})")


def _check_library(favorite_id: int, folder: Path, sampler: str, model_name: str) -> None:
    """Reopen the library the window wrote (as the next start would) and read the favorite back."""
    from inkpunk_studio.library import Library
    from inkpunk_studio.metadata import read_params

    library = Library(folder)
    try:
        stored = library.get(favorite_id)
        found = library.search(PROMPT.split()[-1])
    finally:
        library.close()
    if stored is None or stored.missing or not [f for f in found if f.id == favorite_id]:
        raise SelfTestError("the favorite was not found again after reopening the library")
    _check_image(stored.path, stored.params, sampler, model_name, "the library's row")
    _check_image(stored.path, read_params(stored.path), sampler, model_name, "the library's copy")
