"""Fast mode: a few-step LoRA (LCM-LoRA by default) at 1.0, its sampler, 4 steps at guidance 1, and the tiny
decoder (TAESD) when present: an image in a handful of UNet passes on a CPU (issue 14).

The switch (``fastModeCheck``, next to Generate) is driven by :class:`FastModeController`. Switching on
remembers the person's own sampler, schedule, steps and CFG (in the settings, so a restart in fast mode still
knows them) and sets the LoRA's; switching off puts them back. The LoRA reaches the engine as any other, a
``GenerationRequest.loras`` entry, so the pipeline's ``set_loras`` removes it exactly when the next request has
none, and the image's metadata records it in ``Lora hashes`` with the sampler and steps. On first use the
LoRA is offered for download (downloads.DownloadDialog) into ``models/Lora``, or a local file can be chosen.

TAESD, wherever it is found (:func:`find_taesd`), is attached on the worker for every job so the step
previews look like the picture; the final decode uses it when the Settings' decoder for the mode says so
("Tiny (fast)", the default in fast mode).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal

from engine.names import DISPLAY_NAMES, SCHEDULE_LABELS

from .downloads import TAESD, DownloadDialog, HubFile
from .networks import ModelFolders

if TYPE_CHECKING:
    from .widgets.settings_dialog import SettingsDialog
    from .worker import GenerationParams

log = logging.getLogger(__name__)

SAVED_KEYS = ("sampler", "schedule", "steps", "cfg_scale")  # the person's own, restored when fast mode ends


@dataclass(frozen=True)
class FewStepLora:
    """A distilled few-step LoRA for SD 1.5 and how to sample with it: its authors' settings, or the nearest our
    samplers can express (see each entry). CFG 1 is one UNet pass a step: diffusers' guidance 0 (or 1)."""

    key: str
    label: str
    file: HubFile
    sampler: str
    steps: int
    cfg_scale: float
    schedule: str = "automatic"


FEW_STEP_LORAS: dict[str, FewStepLora] = {
    # latent-consistency/lcm-lora-sdv1-5 model card: LCMScheduler, 2-8 steps (4 in its examples); guidance 1-2
    # at most (diffusers' LCM-LoRA guide), 1 being one pass; 67.5 M parameters, 135 MB in fp16
    "lcm": FewStepLora("lcm", "LCM-LoRA (latent-consistency)", HubFile(
        "latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors",
        "Lora/lcm-lora-sdv1-5.safetensors", "LCM-LoRA for SD 1.5", "135 MB"), "lcm", 4, 1.0),
    # h1t/TCD-SD15-LoRA (the repository diffusers' "Trajectory Consistency Distillation-LoRA" guide and TCD's
    # README name): TCDScheduler, 4 steps (4-50 work), guidance 0 (one pass), eta (our gamma) 0.3, the tcd
    # sampler's default (engine.samplers.tcd.DEFAULT_GAMMA)
    "tcd": FewStepLora("tcd", "TCD-LoRA (h1t)", HubFile(
        "h1t/TCD-SD15-LoRA", "pytorch_lora_weights.safetensors", "Lora/tcd-sd15.safetensors",
        "TCD-LoRA for SD 1.5"), "tcd", 4, 1.0),
    # ByteDance/Hyper-SD README, SD1.5 N-step LoRAs: DDIMScheduler with timestep_spacing="trailing" (eta 0),
    # the LoRA's own step count, guidance 0 (one pass). Our DDIM walks A1111's leading grid, so the nearest is
    # Euler (the same update as DDIM at eta 0) on the SGM Uniform schedule: its timesteps are diffusers'
    # trailing ones within 1 (999, 874.1, ... 124.9 against 999, 874, ... 124); its last step lands on sigma 0
    # where DDIM's lands on alpha_bar_0 (sigma 0.029).
    "hyper": FewStepLora("hyper", "Hyper-SD 8-step (ByteDance)", HubFile(
        "ByteDance/Hyper-SD", "Hyper-SD15-8steps-lora.safetensors", "Lora/Hyper-SD15-8steps-lora.safetensors",
        "Hyper-SD 8-step LoRA for SD 1.5", "136 MB"), "euler", 8, 1.0, "sgm_uniform"),
}

def sampler_label(spec: FewStepLora) -> str:
    """"Euler SGM Uniform", "LCM": the sampler as the Sampler menu words it, with the schedule unless automatic."""
    name = DISPLAY_NAMES.get(spec.sampler, spec.sampler)
    return name if spec.schedule == "automatic" else f"{name} {SCHEDULE_LABELS.get(spec.schedule, spec.schedule)}"


# Where TAESD for SD 1.x may live under a models folder: ours (the diffusers download), A1111's VAE-approx
# (taesd_decoder.pth / taesd_encoder.pth) and ComfyUI's vae_approx.
_TAESD_DIRS = ("VAE-approx/taesd", "VAE-approx", "vae_approx")
_TAESD_DECODERS = ("diffusion_pytorch_model.safetensors", "taesd_decoder.safetensors", "taesd_decoder.pth")
_TAESD_ENCODERS = ("diffusion_pytorch_model.safetensors", "taesd_encoder.safetensors", "taesd_encoder.pth")


def find_taesd(folders: ModelFolders) -> Path | None:
    """The first folder holding a TAESD decoder for SD 1.x (engine.load_taesd reads a folder), or None."""
    for root in folders.roots:
        for sub in _TAESD_DIRS:
            folder = root / sub
            if any((folder / name).is_file() for name in _TAESD_DECODERS):
                return folder
    return None


def taesd_has_encoder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TAESD_ENCODERS)


def choose_decoder(wanted: str, taesd: Path | None, img2img: bool) -> str:
    """The decoder a job uses: the tiny one only when asked for and present (with its encoder for img2img)."""
    if wanted != "taesd" or taesd is None or (img2img and not taesd_has_encoder(taesd)):
        return "vae"
    return "taesd"


class FastModeController(QObject):
    """The fast-mode switch's state and behaviour, for a MainWindow (its settings, panels, run bar, tasks).

    ``download_fn(lora, models_dir)`` makes the fetch function of a download (tests point it at a local server).
    """

    changed = Signal(bool)  # fast mode on/off
    dialogOpened = Signal(object)  # a DownloadDialog (tests and the screenshot script drive it)

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self.window = window
        self.settings = window.settings
        self.check = window.run_bar.fast_check
        self.dialog: DownloadDialog | None = None
        self.download_fn = lambda file, models_dir: file.fetcher(models_dir)
        self.check.toggled.connect(self.set_enabled)
        if self.settings.fast_mode:  # the last session ended in fast mode: keep it if the LoRA is still here
            if self.lora_path() is not None:
                self._show_checked(True)
            else:
                self._leave()

    # --- where things are
    @property
    def spec(self) -> FewStepLora:
        return FEW_STEP_LORAS[self.settings.fast_lora]

    @property
    def enabled(self) -> bool:
        return self.settings.fast_mode

    def models_dir(self) -> Path:
        return self.window.networks.folders().roots[0]

    def lora_path(self) -> Path | None:
        """The chosen few-step LoRA's file: one the person chose, else the download in any models folder."""
        chosen = self.settings.fast_lora_file(self.spec.key)
        if chosen and Path(chosen).is_file():
            return Path(chosen)
        found = self.window.networks.folders().find("lora", Path(self.spec.file.dest).stem)
        return found.path if found is not None else None

    def taesd_path(self) -> Path | None:
        return find_taesd(self.window.networks.folders())

    # --- the switch
    def set_enabled(self, on: bool) -> None:
        """Switch fast mode on (offering the LoRA's download first when it is missing) or off."""
        if on == self.enabled:
            self._show_checked(on)
            return
        if not on:
            self._leave()
            self.window.statusBar().showMessage("Fast mode off: your sampler, steps and CFG are back", 6000)
            return
        self._show_checked(False)  # on only once the LoRA is here
        if self.lora_path() is None:
            self.offer_lora_download()
            return
        self._enter()

    def _enter(self) -> None:
        values = self.window.params_panel.values()
        self.settings.set_fast_saved({k: values[k] for k in SAVED_KEYS if k in values})
        self.settings.fast_mode = True
        self.settings.sync()
        spec = self.spec
        self.window.params_panel.set_values(sampler=spec.sampler, schedule=spec.schedule, steps=spec.steps,
                                            cfg_scale=spec.cfg_scale)
        self._show_checked(True)
        tiny = " and the tiny decoder" if self.taesd_path() is not None and self.settings.fast_decoder == "taesd" else ""
        self.window.statusBar().showMessage(
            f"Fast mode: {spec.label} at 1.0, {sampler_label(spec)} {spec.steps} steps, CFG {spec.cfg_scale:g}"
            f"{tiny}", 8000)
        self.changed.emit(True)

    def _leave(self) -> None:
        saved = self.settings.fast_saved()
        values = {k: saved[k] for k in SAVED_KEYS if k in saved}
        if values:
            self.window.params_panel.set_values(**values)
        self.settings.fast_mode = False
        self.settings.set_fast_saved({})
        self.settings.sync()
        self._show_checked(False)
        self.changed.emit(False)

    def _show_checked(self, on: bool) -> None:
        self.check.blockSignals(True)
        self.check.setChecked(on)
        self.check.blockSignals(False)

    # --- each job
    def apply(self, params: GenerationParams) -> None:
        """Add fast mode's LoRA and the decoder/TAESD to a job's params (after the prompt's networks are
        resolved). Raises ValueError when fast mode's LoRA file is gone."""
        taesd = self.taesd_path()
        params.taesd = str(taesd) if taesd is not None else ""
        img2img = params.init_image is not None
        if not self.enabled:
            params.decoder = choose_decoder(self.settings.decoder, taesd, img2img)
            return
        lora = self.lora_path()
        if lora is None:
            raise ValueError(f"Fast mode needs {self.spec.file.title}, which is gone from the models folders. "
                             "Switch Fast off and on again to download it or choose the file.")
        if all(Path(entry[0]) != lora for entry in params.loras):
            params.loras = (*params.loras, (lora, 1.0, 1.0))
        params.decoder = choose_decoder(self.settings.fast_decoder, taesd, img2img)

    # --- downloads
    def offer_lora_download(self) -> DownloadDialog:
        spec = self.spec
        dest = spec.file.target(self.models_dir())
        size = f" ({spec.file.size})" if spec.file.size else ""
        intro = (f"<b>Fast mode</b> makes an image in {spec.steps} steps at guidance {spec.cfg_scale:g} with "
                 f"<b>{spec.file.title}</b>{size}, a distilled LoRA that works with any SD 1.5 model, Inkpunk "
                 f"included. Download it from the Hugging Face Hub (<tt>{spec.file.repo_id}</tt>) into "
                 f"<tt>{dest.parent}</tt>, or choose the file if you already have it.")

        def ready(path: str) -> None:
            if Path(path) != dest:
                self.settings.set_fast_lora_file(spec.key, path)
            self.window.networks.refresh()
            self._enter()

        return self._open(spec.file, dest, intro, ready, choose=True)

    def offer_taesd_download(self) -> DownloadDialog:
        dest = TAESD.target(self.models_dir())
        intro = (f"<b>{TAESD.title}</b> ({TAESD.size}, madebyollin/taesd): a tiny stand-in for the VAE. "
                 "With it the live preview at every step looks like the picture, and the final image can be "
                 "decoded in a fraction of the time (Settings ▸ Decoder: Tiny), a little softer in detail. "
                 f"It is saved into <tt>{dest.parent}</tt>.")
        return self._open(TAESD, dest, intro, lambda _path: self.window.networks.refresh(), choose=False)

    def _open(self, file: HubFile, dest: Path, intro: str, ready, choose: bool) -> DownloadDialog:
        if self.dialog is not None:
            self.dialog.close()
        dialog = DownloadDialog(self.window.tasks, file, dest, self.download_fn(file, self.models_dir()), intro,
                                parent=self.window, **({} if choose else {"choose_filter": None}))
        dialog.fileReady.connect(ready)
        dialog.finished.connect(self._dialog_closed)
        self.dialog = dialog
        dialog.open()
        self.dialogOpened.emit(dialog)
        return dialog

    def _dialog_closed(self) -> None:
        self.dialog = None

    # --- settings
    def bind_settings_dialog(self, dialog: SettingsDialog) -> None:
        """Show TAESD's state in the dialog and make its Download button work; after OK, a changed
        few-step LoRA applies at once."""
        taesd = self.taesd_path()
        dialog.set_taesd_state(str(taesd) if taesd is not None else "")
        dialog.taesdDownloadRequested.connect(self.offer_taesd_download)
        before = self.settings.fast_lora
        dialog.accepted.connect(lambda: self._settings_accepted(before))

    def _settings_accepted(self, lora_before: str) -> None:
        if self.enabled and self.settings.fast_lora != lora_before:
            self._leave()
            self.set_enabled(True)
