"""Fast mode's pieces: its settings, where TAESD is found, the decoder choice, and the optional downloads (the
real transfer code against a local HTTP server on 127.0.0.1 that honours Range requests, and an unreachable
host for the offline message)."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fixtures_app import open_window, tiny_checkpoint  # noqa: F401
from PySide6.QtWidgets import QApplication
from test_app_fast import lcm_layout_lora

from inkpunk_studio import paths
from inkpunk_studio.downloads import TAESD, DownloadDialog, HubFile
from inkpunk_studio.fast_mode import FEW_STEP_LORAS, choose_decoder, find_taesd
from inkpunk_studio.first_run import download_file, part_path
from inkpunk_studio.networks import ModelFolders
from inkpunk_studio.settings import AppSettings
from inkpunk_studio.widgets.settings_dialog import SettingsDialog, SettingsValues


class FileServer:
    """Serves one byte string at /file, slowly (64 KB pieces) and with HTTP Range support; records ranges."""

    def __init__(self, data: bytes, delay: float = 0.0) -> None:
        self.data, self.delay, self.ranges = data, delay, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                start = 0
                spec = self.headers.get("Range")
                outer.ranges.append(spec)
                if spec:
                    start = int(spec.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.data) - 1}/{len(outer.data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(outer.data) - start))
                self.end_headers()
                try:
                    for i in range(start, len(outer.data), 1 << 16):
                        self.wfile.write(outer.data[i:i + (1 << 16)])
                        time.sleep(outer.delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/file"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def client():
    from huggingface_hub.utils import get_session

    session = type(get_session())()  # the Hub's HTTP client class, without its offline-mode guard
    yield session
    session.close()


@pytest.fixture
def tasks():
    from inkpunk_studio.worker import AsyncTasks

    tasks = AsyncTasks()
    yield tasks
    tasks.shutdown()


def test_settings_keep_fast_mode_choices_and_refuse_unknown_ones(tmp_path):
    settings = AppSettings.for_data_dir(tmp_path)
    assert (settings.fast_mode, settings.fast_lora, settings.decoder, settings.fast_decoder) == (
        False, "lcm", "vae", "taesd")
    settings.fast_mode, settings.fast_lora, settings.decoder = True, "tcd", "taesd"
    settings.set_fast_saved({"sampler": "euler", "steps": 30})
    settings.sync()
    again = AppSettings.for_data_dir(tmp_path)
    assert (again.fast_mode, again.fast_lora, again.decoder) == (True, "tcd", "taesd")
    assert again.fast_saved() == {"sampler": "euler", "steps": 30}
    with pytest.raises(ValueError, match="decoder must be one of vae, taesd"):
        again.fast_decoder = "tiny"
    with pytest.raises(ValueError, match="fast-mode LoRA"):
        again.fast_lora = "sdxl-lightning"
    again.store.setValue("decoder/fast", "junk")  # a hand-edited file falls back to the default
    assert again.fast_decoder == "taesd"


def test_settings_dialog_round_trips_fast_mode_choices(qtbot, tmp_path):
    values = SettingsValues("", "auto", "auto", "", True, decoder="taesd", fast_decoder="vae", fast_lora="hyper")
    dialog = SettingsDialog(values, str(tmp_path))
    qtbot.addWidget(dialog)
    out = dialog.values()
    assert (out.decoder, out.fast_decoder, out.fast_lora) == ("taesd", "vae", "hyper")
    assert dialog.taesd_button.isVisibleTo(dialog) and "10 MB" in dialog.taesd_label.text()
    dialog.set_taesd_state("/m/VAE-approx/taesd")
    assert not dialog.taesd_button.isVisibleTo(dialog) and "/m/VAE-approx/taesd" in dialog.taesd_label.text()


def test_find_taesd_in_ours_a1111s_and_comfyuis_layouts(tmp_path):
    ours, a1111, comfy = tmp_path / "ours", tmp_path / "a1111", tmp_path / "comfy"
    assert find_taesd(ModelFolders([ours])) is None
    (ours / "VAE-approx" / "taesd").mkdir(parents=True)
    (ours / "VAE-approx" / "taesd" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (a1111 / "VAE-approx").mkdir(parents=True)
    (a1111 / "VAE-approx" / "taesd_decoder.pth").write_bytes(b"x")
    (comfy / "vae_approx").mkdir(parents=True)
    (comfy / "vae_approx" / "taesd_decoder.safetensors").write_bytes(b"x")
    assert find_taesd(ModelFolders([ours, a1111])) == ours / "VAE-approx" / "taesd"
    assert find_taesd(ModelFolders([tmp_path / "none", a1111])) == a1111 / "VAE-approx"
    assert find_taesd(ModelFolders([comfy])) == comfy / "vae_approx"
    # decoder only (A1111's usual file): fine for txt2img, the full VAE for img2img (no tiny encoder)
    assert choose_decoder("taesd", a1111 / "VAE-approx", img2img=False) == "taesd"
    assert choose_decoder("taesd", a1111 / "VAE-approx", img2img=True) == "vae"
    assert choose_decoder("taesd", ours / "VAE-approx" / "taesd", img2img=True) == "taesd"
    assert choose_decoder("taesd", None, img2img=False) == "vae"
    assert choose_decoder("vae", ours / "VAE-approx" / "taesd", img2img=False) == "vae"


def test_hub_files_are_the_ones_the_issue_names():
    lcm = FEW_STEP_LORAS["lcm"]
    assert (lcm.file.repo_id, lcm.file.filename) == ("latent-consistency/lcm-lora-sdv1-5",
                                                      "pytorch_lora_weights.safetensors")
    assert (lcm.sampler, lcm.steps, lcm.cfg_scale) == ("lcm", 4, 1.0)
    assert lcm.file.target("/m") == Path("/m/Lora/lcm-lora-sdv1-5.safetensors")
    assert (TAESD.repo_id, TAESD.filename) == ("madebyollin/taesd", "diffusion_pytorch_model.safetensors")
    assert all(4 <= s.steps <= 8 and 1.0 <= s.cfg_scale <= 2.0 for s in FEW_STEP_LORAS.values())


def test_few_step_table_follows_the_model_cards():
    """TCD: h1t/TCD-SD15-LoRA with TCDScheduler's grid, 4 steps, one pass, gamma 0.3. Hyper-SD 8-step: DDIM with
    diffusers' "trailing" timesteps, one pass; ours: Euler (DDIM's update at eta 0) on SGM Uniform, whose
    timesteps are the trailing ones within 1."""
    import torch
    from diffusers import DDIMScheduler, TCDScheduler

    from engine.samplers import tcd
    from engine.schedules import ModelSchedule, sigmas

    spec = FEW_STEP_LORAS["tcd"]
    assert (spec.file.repo_id, spec.file.filename) == ("h1t/TCD-SD15-LoRA", "pytorch_lora_weights.safetensors")
    assert (spec.sampler, spec.schedule, spec.steps, spec.cfg_scale) == ("tcd", "automatic", 4, 1.0)
    assert tcd.DEFAULT_GAMMA == 0.3
    sd15 = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    reference = TCDScheduler(**sd15)
    reference.set_timesteps(spec.steps)
    assert tcd.timesteps(spec.steps)[::-1] == reference.timesteps.tolist()

    spec = FEW_STEP_LORAS["hyper"]
    assert (spec.file.repo_id, spec.file.filename) == ("ByteDance/Hyper-SD", "Hyper-SD15-8steps-lora.safetensors")
    assert (spec.sampler, spec.schedule, spec.steps, spec.cfg_scale) == ("euler", "sgm_uniform", 8, 1.0)
    reference = DDIMScheduler(**sd15, timestep_spacing="trailing", set_alpha_to_one=False)
    reference.set_timesteps(spec.steps)
    ours = ModelSchedule.sd1().sigma_to_t(sigmas(spec.schedule, spec.steps)[:-1])
    assert reference.timesteps.tolist() == [999, 874, 749, 624, 499, 374, 249, 124]
    assert torch.all((ours - reference.timesteps.double()).abs() < 1)


def test_download_dialog_cancels_keeps_the_part_and_resumes_with_a_range_request(qtbot, tasks, client, tmp_path):
    data = bytes(range(256)) * (3 * 4096 + 17)  # ~3 MB, served in 64 KB pieces
    server = FileServer(data, delay=0.01)
    dest = tmp_path / "Lora" / "big.safetensors"
    file = HubFile("x/y", "big.safetensors", "Lora/big.safetensors", "a test file", "3 MB")
    fetch = lambda on_progress, cancel: download_file(server.url, dest, on_progress, cancel,
                                                      session=client, timeout=10)
    dialog = DownloadDialog(tasks, file, dest, fetch, "A test file.")
    qtbot.addWidget(dialog)
    dialog.open()
    try:
        dialog.download_button.click()
        qtbot.waitUntil(lambda: part_path(dest).exists() and part_path(dest).stat().st_size >= 1 << 20,
                        timeout=20_000)
        dialog.cancel_button.click()
        qtbot.waitUntil(lambda: dialog.state == "paused", timeout=20_000)
        kept = part_path(dest).stat().st_size
        assert 0 < kept < len(data) and "kept" in dialog.status.text()
        assert dialog.download_button.text() == "Resume download"
        with qtbot.waitSignal(dialog.fileReady, timeout=20_000) as ready:
            dialog.download_button.click()
        assert ready.args == [str(dest)] and dest.read_bytes() == data and not part_path(dest).exists()
        assert server.ranges[0] is None and server.ranges[-1] == f"bytes={kept}-"
    finally:
        server.close()


def test_download_dialog_offline_says_so_in_words(qtbot, tasks, client, tmp_path):
    dest = tmp_path / "Lora" / "lcm.safetensors"
    fetch = lambda on_progress, cancel: download_file(  # RFC 6761: .invalid never resolves
        "http://inkpunk-test.invalid/lcm.safetensors", dest, on_progress, cancel, session=client, timeout=10)
    dialog = DownloadDialog(tasks, FEW_STEP_LORAS["lcm"].file, dest, fetch, "LCM-LoRA.")
    qtbot.addWidget(dialog)
    dialog.open()
    dialog.download_button.click()
    qtbot.waitUntil(lambda: dialog.state == "failed", timeout=20_000)
    text = dialog.status.text()
    assert text.startswith("No internet connection") and "Errno" not in text
    assert "Choose a file" in text and "Locate a checkpoint" not in text
    assert dialog.download_button.text() == "Retry download" and dialog.choose_button.isEnabled()


def test_switching_fast_on_downloads_the_lora_then_turns_on(qtbot, open_window, tiny_checkpoint, client,
                                                            tmp_path):
    source = tmp_path / "served.safetensors"
    lcm_layout_lora(tiny_checkpoint, source)
    server = FileServer(source.read_bytes())
    window = open_window(tiny_checkpoint)
    window.fast_mode.download_fn = lambda file, models_dir: (
        lambda on_progress, cancel: download_file(server.url, file.target(models_dir), on_progress, cancel,
                                                  session=client, timeout=10))
    try:
        window.run_bar.fast_check.click()
        dialog = window.fast_mode.dialog
        assert dialog is not None and not window.fast_mode.enabled
        with qtbot.waitSignal(window.fast_mode.changed, timeout=20_000) as changed:
            dialog.download_button.click()
        assert changed.args == [True] and window.run_bar.fast_check.isChecked()
        target = paths.models_dir(window.data_dir) / "Lora" / "lcm-lora-sdv1-5.safetensors"
        assert target.read_bytes() == source.read_bytes() and window.fast_mode.lora_path() == target
        assert window.params_panel.values()["sampler"] == "lcm"
    finally:
        server.close()


def test_a_chosen_local_lora_is_used_where_it_is(qtbot, open_window, tiny_checkpoint, tmp_path):
    mine = tmp_path / "elsewhere" / "my-lcm.safetensors"
    lcm_layout_lora(tiny_checkpoint, mine)
    window = open_window(tiny_checkpoint)
    window.run_bar.fast_check.click()
    dialog = window.fast_mode.dialog
    assert not dialog.choose_file(tmp_path / "nothing.safetensors") and "does not exist" in dialog.status.text()
    assert dialog.choose_file(mine)
    assert window.fast_mode.enabled and window.fast_mode.lora_path() == mine
    params = window.current_params()
    window.fast_mode.apply(params)
    assert params.loras == ((mine, 1.0, 1.0),)


def test_settings_offer_taesd_and_its_dialog_has_no_file_choice(qtbot, open_window, tiny_checkpoint):
    window = open_window(tiny_checkpoint)
    window.show_settings()
    settings_dialog = window.settings_dialog
    assert settings_dialog.taesd_button.isVisibleTo(settings_dialog)
    with qtbot.waitSignal(window.fast_mode.dialogOpened, timeout=5000) as opened:
        settings_dialog.taesd_button.click()
    dialog = opened.args[0]
    QApplication.processEvents()
    assert "10 MB" in dialog.download_button.text() and not dialog.choose_button.isVisibleTo(dialog)
    assert dialog._dest == paths.models_dir(window.data_dir) / "VAE-approx" / "taesd" / TAESD.filename
    dialog.reject()
    settings_dialog.reject()


def test_fast_mode_benchmark_reports_every_figure(tmp_path, capsys):
    """`python -m engine.benchmark --mode fast` end to end on the tiny models (figures, not timing asserts)."""
    import json

    from engine import benchmark

    out = tmp_path / "fast.json"
    assert benchmark.main(["--mode", "fast", "--size", "tiny", "--side", "64", "--runs", "1", "--precision", "fp32",
                           "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    fp32 = report["results"]["fp32"]
    for key in ("text_encode_s", "unet_step_batch1_s", "unet_step_batch2_s", "taesd_decode_s", "vae_decode_s",
                "taesd_preview_s", "generate_4_taesd_s", "generate_4_vae_s", "generate_8_taesd_s",
                "generate_8_vae_s", "generate_4_taesd_tome_s"):
        assert fp32[key] > 0, key
    assert report["mode"] == "fast" and report["cfg_batch"] == 1
    memory = report["memory"]  # a fresh process: an LCM-LoRA-layout LoRA merged, a 4-step generation
    assert memory["precision"] == "fp32" and memory["lora_bytes"] > 0 and memory["lora_apply_s"] > 0
    assert memory["lora_originals_in_memory"] + memory["lora_originals_in_file"] > 0
    assert memory["generation_peak"] > memory["weights_bytes"] > 0
    printed = capsys.readouterr().out
    assert "4 steps, tiny decode" in printed and "8 steps, full VAE decode" in printed
    assert "token merging" in printed and "peak over the merge" in printed
