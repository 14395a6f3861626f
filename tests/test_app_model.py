"""Model setup: broken checkpoints, the first-run dialog (locate for real; download with an injected transfer,
since tests can't reach the Hub) and the resumable HTTP download against a local server."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from fixtures_app import RUN_TIMEOUT_MS, open_window, set_small_params, tiny_checkpoint, wait_model  # noqa: F401  (pytest fixtures, used as arguments)
from PySide6.QtWidgets import QMessageBox, QPushButton

from inkpunk_studio.first_run import DownloadCancelled, FirstRunDialog, download_file, part_path
from inkpunk_studio.settings import AppSettings
from inkpunk_studio.worker import AsyncTasks, GenerationJob, GenerationParams


def test_broken_checkpoint_shows_the_error_and_a_good_one_works_after(qtbot, open_window, tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"this is not a checkpoint" * 100)
    window = open_window(checkpoint=broken, wait_ready=False)
    with qtbot.waitSignal(window.errorShown, timeout=RUN_TIMEOUT_MS) as error:
        pass
    title, text = error.args
    assert title == "Could not load the checkpoint" and "broken.safetensors" in text
    box = window.message_box
    assert isinstance(box, QMessageBox) and box.isVisible() and box.text() == text
    assert window.host.state == "failed"
    assert not window.findChild(QPushButton, "generateButton").isEnabled()
    assert not window.generate()
    box.close()

    window.load_checkpoint(tiny_checkpoint)
    wait_model(qtbot, window)
    assert AppSettings.for_data_dir(tmp_path / "data").checkpoint == str(tiny_checkpoint)
    set_small_params(window, steps=1)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS):
        window.generate()


def test_first_run_locate_then_restart_uses_the_saved_checkpoint(qtbot, open_window, tiny_checkpoint, tmp_path):
    data = tmp_path / "data"
    window = open_window(data_dir=data)
    qtbot.waitUntil(lambda: window.first_run_dialog is not None and window.first_run_dialog.isVisible(),
                    timeout=5_000)
    assert window.host.state == "none" and not window.findChild(QPushButton, "generateButton").isEnabled()
    dialog = window.first_run_dialog
    assert not dialog.choose_file(tmp_path / "missing.safetensors")
    assert "does not exist" in dialog.status.text()
    assert not dialog.choose_file(tiny_checkpoint.with_suffix(".txt"))
    assert dialog.choose_file(tiny_checkpoint)
    wait_model(qtbot, window)
    assert window.first_run_dialog is None
    window.close()

    again = open_window(data_dir=data, wait_ready=False)
    assert again.host.state == "loading"  # from the settings; no dialog this time
    wait_model(qtbot, again)
    qtbot.wait(50)
    assert again.first_run_dialog is None


def test_first_run_download_progress_cancel_resume_and_failure(qtbot, tiny_checkpoint, tmp_path):
    """The dialog's states, with the transfer function injected (the real one needs the internet)."""
    calls = []
    total = 10

    def fake_transfer(dest_dir: Path, on_progress, cancel: threading.Event) -> Path:
        calls.append(dest_dir)
        if len(calls) == 3:
            raise OSError("network unreachable")
        start = 0 if len(calls) == 1 else 5  # the second call "resumes"
        for done in range(start, total + 1):
            if cancel.is_set():
                raise DownloadCancelled("cancelled")
            on_progress(done, total)
            time.sleep(0.02)
        dest = dest_dir / "model.safetensors"
        dest_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_checkpoint, dest)
        return dest

    tasks = AsyncTasks()
    dialog = FirstRunDialog(tasks, tmp_path / "models", download_fn=fake_transfer)
    qtbot.addWidget(dialog)
    dialog.open()
    chosen = []
    dialog.checkpointChosen.connect(chosen.append)
    assert dialog.state == "choose" and dialog.download_button.text() == "Download Inkpunk Diffusion v2 (2.1 GB)"

    dialog.download_button.click()
    assert dialog.state == "downloading" and dialog.cancel_button.isVisible()
    assert not dialog.locate_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.progress.value() >= 300, timeout=5_000)
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: dialog.state == "paused", timeout=5_000)
    assert dialog.download_button.text() == "Resume download" and chosen == []

    dialog.download_button.click()  # resume: finishes, emits the path, closes
    qtbot.waitUntil(lambda: dialog.state == "done", timeout=5_000)
    assert chosen == [str(tmp_path / "models" / "model.safetensors")] and not dialog.isVisible()

    dialog.open()
    dialog.download_button.click()  # third call fails
    qtbot.waitUntil(lambda: dialog.state == "failed", timeout=5_000)
    assert "network unreachable" in dialog.status.text() and dialog.download_button.text() == "Retry download"
    tasks.shutdown()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    ranges: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        start = 0
        header = self.headers.get("Range")
        type(self).ranges.append(header or "")
        if header:
            start = int(header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(0, len(body), 64 * 1024):
            try:
                self.wfile.write(body[i:i + 64 * 1024])
            except (BrokenPipeError, ConnectionResetError):
                return

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def range_server(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the server is on 127.0.0.1
    _RangeHandler.payload = bytes(range(256)) * (12 * 1024)  # 3 MiB
    _RangeHandler.ranges = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/Inkpunk-Diffusion-v2.ckpt"
    server.shutdown()
    server.server_close()


def test_download_file_resumes_after_a_cancel(range_server, tmp_path):
    payload = _RangeHandler.payload
    dest = tmp_path / "models" / "Inkpunk-Diffusion-v2.ckpt"
    sha = hashlib.sha256(payload).hexdigest()
    cancel = threading.Event()
    seen = []

    def stop_halfway(done, total):
        seen.append((done, total))
        if done >= len(payload) // 2:
            cancel.set()

    with pytest.raises(DownloadCancelled):
        download_file(range_server, dest, stop_halfway, cancel, expected_size=len(payload), sha256=sha)
    kept = part_path(dest).stat().st_size
    assert 0 < kept < len(payload) and not dest.exists()

    progress = []
    result = download_file(range_server, dest, lambda d, t: progress.append(d), threading.Event(),
                           expected_size=len(payload), sha256=sha)
    assert result == dest and dest.read_bytes() == payload and not part_path(dest).exists()
    assert _RangeHandler.ranges == ["", f"bytes={kept}-"]
    assert progress[0] == kept and progress[-1] == len(payload)

    # a wrong checksum removes the file instead of handing over a corrupt checkpoint
    other = tmp_path / "other.ckpt"
    with pytest.raises(OSError, match="checksum"):
        download_file(range_server, other, lambda d, t: None, threading.Event(), sha256="0" * 64)
    assert not other.exists() and not part_path(other).exists()


def test_a_failing_job_reports_the_engine_error_and_the_worker_stays_usable(qtbot, open_window, tiny_checkpoint,
                                                                            tmp_path):
    window = open_window(checkpoint=tiny_checkpoint)
    # bypass the window's own validation: the worker must survive what the engine rejects
    bad = GenerationParams(prompt="x", steps=1, width=100, height=64)
    job = GenerationJob(params=bad, output_dir=tmp_path / "out")
    with qtbot.waitSignal(window.errorShown, timeout=RUN_TIMEOUT_MS) as error:
        assert window.host.generate(job)
    assert error.args[0] == "Generation failed" and "width" in error.args[1]
    assert not window.host.busy and window.findChild(QPushButton, "generateButton").isEnabled()
    window.message_box.close()

    set_small_params(window, steps=1)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS):
        window.generate()
