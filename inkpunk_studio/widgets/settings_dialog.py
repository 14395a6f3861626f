"""The Settings dialog: checkpoint, device, precision, VAE, extra model folders, output folder, live preview,
the sampling settings A1111 keeps in its settings too (random number source, ENSD, emphasis mode, NGMS, Skip
Early CFG and the token merging ratios), and fast mode's choices (the few-step LoRA, the decoder in and out
of fast mode, TAESD's download)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import paths
from ..settings import (
    DECODERS,
    DEVICES,
    EMPHASIS_MODES,
    FAST_LORAS,
    MAX_NGMS,
    MAX_TOKEN_MERGING,
    PRECISIONS,
    RNG_SOURCES,
    AppSettings,
)

AUTOMATIC_VAE = "Automatic (from the checkpoint)"
CHECKPOINT_FILTER = "Stable Diffusion checkpoints (*.safetensors *.ckpt);;All files (*)"

_DEVICE_LABELS = {"auto": "Automatic (CUDA, then Apple MPS, then CPU)", "cuda": "NVIDIA CUDA",
                  "mps": "Apple Metal (MPS)", "cpu": "CPU"}
_PRECISION_LABELS = {"auto": "Automatic (fp16 on GPU; bf16 on CPUs with native bf16, else fp32)", "fp32": "fp32 (full)",
                     "fp16": "fp16 (half)", "bf16": "bf16 (bfloat16)"}
RNG_LABELS = {"cpu": "CPU", "nv": "NV (GPU-compatible)"}
# A1111's option labels (modules/sd_emphasis.py: options)
EMPHASIS_LABELS = {"original": "Original", "no_norm": "No norm", "ignore": "Ignore", "none": "None",
                   "comfy": "Comfy"}
MAX_ENSD_SPIN = 2**31 - 1  # QSpinBox's limit; A1111's usual ENSD is 31337
DECODER_LABELS = {"vae": "Full VAE", "taesd": "Tiny (fast)"}
FAST_LORA_LABELS = {"lcm": "LCM-LoRA (latent-consistency, 135 MB)", "tcd": "TCD-LoRA (h1t)",
                    "hyper": "Hyper-SD 8-step (ByteDance)"}  # fast_mode.FEW_STEP_LORAS


@dataclass
class SettingsValues:
    checkpoint: str
    device: str
    precision: str
    output_dir: str
    preview_enabled: bool
    rng: str = "cpu"
    ensd: int = 0
    emphasis: str = "original"
    vae: str = ""  # "" = Automatic (the checkpoint's own)
    model_folders: tuple[str, ...] = ()
    decoder: str = "vae"  # the final decode outside fast mode
    fast_decoder: str = "taesd"  # ... and in fast mode
    fast_lora: str = "lcm"
    # A1111's uncond skips: "NGMS", "NGMS all steps", "Skip Early CFG"
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    skip_early_cond: float = 0.0
    # token merging (engine.tome): A1111's "Token merging ratio" and "... hr" (0: the same as the first)
    token_merging_ratio: float = 0.0
    token_merging_ratio_hr: float = 0.0

    @classmethod
    def from_settings(cls, settings: AppSettings) -> SettingsValues:
        values = cls(settings.checkpoint, settings.device, settings.precision, settings.output_dir,
                     settings.preview_enabled, settings.rng, settings.ensd, settings.emphasis,
                     settings.vae, tuple(settings.model_folders), settings.decoder, settings.fast_decoder,
                     settings.fast_lora)
        values.s_min_uncond, values.s_min_uncond_all = settings.s_min_uncond, settings.s_min_uncond_all
        values.skip_early_cond = settings.skip_early_cond
        values.token_merging_ratio = settings.token_merging_ratio
        values.token_merging_ratio_hr = settings.token_merging_ratio_hr
        return values

    def save(self, settings: AppSettings) -> None:
        settings.checkpoint = self.checkpoint
        settings.device = self.device
        settings.precision = self.precision
        settings.output_dir = self.output_dir
        settings.preview_enabled = self.preview_enabled
        settings.rng = self.rng
        settings.ensd = self.ensd
        settings.emphasis = self.emphasis
        settings.vae = self.vae
        settings.model_folders = list(self.model_folders)
        settings.decoder = self.decoder
        settings.fast_decoder = self.fast_decoder
        settings.fast_lora = self.fast_lora
        settings.s_min_uncond, settings.s_min_uncond_all = self.s_min_uncond, self.s_min_uncond_all
        settings.skip_early_cond = self.skip_early_cond
        settings.token_merging_ratio = self.token_merging_ratio
        settings.token_merging_ratio_hr = self.token_merging_ratio_hr
        settings.sync()


class SettingsDialog(QDialog):
    """Edits a :class:`SettingsValues`; the window saves and applies it when accepted."""

    taesdDownloadRequested = Signal()  # "Download TAESD…" (fast_mode.FastModeController opens the download)

    def __init__(self, values: SettingsValues, default_output: str, parent: QWidget | None = None,
                 vae_files: Sequence[tuple[str, str]] = ()) -> None:
        """`vae_files`: (name, path) of the VAE files in the model folders, offered in `vaeCombo`."""
        super().__init__(parent)
        self.setObjectName("settingsDialog")
        self.setWindowTitle("Settings")
        self.setMinimumWidth(560)

        self.checkpoint_edit = QLineEdit(values.checkpoint, self)
        self.checkpoint_edit.setObjectName("checkpointEdit")
        self.checkpoint_edit.setPlaceholderText("Path to a .safetensors or .ckpt file")
        browse_checkpoint = QPushButton("Browse…", self)
        browse_checkpoint.clicked.connect(self._browse_checkpoint)

        self.device_combo = self._choices("deviceCombo", DEVICES, _DEVICE_LABELS, values.device)
        self.precision_combo = self._choices("precisionCombo", PRECISIONS, _PRECISION_LABELS, values.precision)

        self.vae_combo = QComboBox(self)
        self.vae_combo.setObjectName("vaeCombo")
        self.vae_combo.addItem(AUTOMATIC_VAE, "")
        for name, path in vae_files:
            self.vae_combo.addItem(name, path)
        if values.vae and self.vae_combo.findData(values.vae) < 0:  # a file no folder lists (any more)
            self.vae_combo.addItem(Path(values.vae).name, values.vae)
        self.vae_combo.setCurrentIndex(max(0, self.vae_combo.findData(values.vae)))

        self.folders_edit = QPlainTextEdit("\n".join(values.model_folders), self)
        self.folders_edit.setObjectName("modelFoldersEdit")
        self.folders_edit.setPlaceholderText("One folder a line, e.g. an AUTOMATIC1111 or ComfyUI models folder")
        self.folders_edit.setFixedHeight(64)

        self.output_edit = QLineEdit(values.output_dir, self)
        self.output_edit.setObjectName("outputDirEdit")
        self.output_edit.setPlaceholderText(default_output)
        browse_output = QPushButton("Browse…", self)
        browse_output.clicked.connect(self._browse_output)

        self.preview_check = QCheckBox("Show a live preview at every step", self)
        self.preview_check.setObjectName("previewCheck")
        self.preview_check.setChecked(values.preview_enabled)

        self.rng_combo = self._choices("rngCombo", RNG_SOURCES, RNG_LABELS, values.rng)
        self.rng_combo.setToolTip("Where the starting noise comes from. NV reproduces images made with A1111's "
                                  "GPU or NV setting, on any device; CPU is A1111's CPU setting.")
        self.ensd_spin = QSpinBox(self)
        self.ensd_spin.setObjectName("ensdSpin")
        self.ensd_spin.setRange(0, MAX_ENSD_SPIN)
        self.ensd_spin.setValue(min(values.ensd, MAX_ENSD_SPIN))
        self.ensd_spin.setToolTip("Eta noise seed delta: shifts the seed of the noise that ancestral and SDE "
                                  "samplers add (A1111's ENSD; 0 = off)")
        self.emphasis_combo = self._choices("emphasisCombo", EMPHASIS_MODES, EMPHASIS_LABELS, values.emphasis)
        self.emphasis_combo.setToolTip("How (weights) in the prompt are applied (A1111's Emphasis mode)")
        self._make_cfg_skip_widgets(values)

        self.token_merging_spin = self._number_spin(
            "tokenMergingSpin", values.token_merging_ratio, MAX_TOKEN_MERGING, 0.1,
            "Token merging (ToMe; A1111's Token merging ratio): merges similar tokens in the UNet's largest "
            "self-attention, trading a little detail for speed, most noticeable on CPUs. 0 = off", special="Off")
        self.token_merging_hr_spin = self._number_spin(
            "tokenMergingHrSpin", values.token_merging_ratio_hr, MAX_TOKEN_MERGING, 0.1,
            "The token merging ratio of the hires fix pass (A1111's Token merging ratio for high-res pass); "
            "0 = the same as Token merging ratio", special="Same as above")

        self.fast_lora_combo = self._choices("fastLoraCombo", FAST_LORAS, FAST_LORA_LABELS, values.fast_lora)
        self.fast_lora_combo.setToolTip("The few-step LoRA the Fast switch uses (downloaded on first use)")
        self.decoder_combo = self._choices("decoderCombo", DECODERS, DECODER_LABELS, values.decoder)
        self.decoder_combo.setToolTip("What turns the result into pixels outside fast mode: the full VAE, or "
                                      "TAESD (much faster, a little softer in detail; needs TAESD below)")
        self.fast_decoder_combo = self._choices("fastDecoderCombo", DECODERS, DECODER_LABELS, values.fast_decoder)
        self.fast_decoder_combo.setToolTip("The same choice in fast mode (Tiny by default, when TAESD is here)")
        self.taesd_label = QLabel("", self)
        self.taesd_label.setObjectName("taesdLabel")
        self.taesd_label.setWordWrap(True)
        self.taesd_button = QPushButton("Download TAESD (10 MB)…", self)
        self.taesd_button.setObjectName("taesdDownloadButton")
        self.taesd_button.clicked.connect(self.taesdDownloadRequested)
        self.set_taesd_state("")

        note = QLabel("Changing the checkpoint, device or precision reloads the model.", self)
        note.setProperty("role", "hint")
        self.error_label = QLabel("", self)
        self.error_label.setObjectName("settingsError")
        self.error_label.setWordWrap(True)
        self.error_label.setVisible(False)

        form = QFormLayout()
        form.addRow("Checkpoint", self._pair(self.checkpoint_edit, browse_checkpoint))
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.precision_combo)
        form.addRow("VAE", self.vae_combo)
        form.addRow("Extra model folders", self.folders_edit)
        form.addRow("Output folder", self._pair(self.output_edit, browse_output))
        form.addRow("", self.preview_check)
        form.addRow("Random numbers", self.rng_combo)
        form.addRow("ENSD", self.ensd_spin)
        form.addRow("Emphasis", self.emphasis_combo)
        form.addRow("NGMS", self.ngms_row)
        form.addRow("Skip Early CFG", self.skip_early_cfg_spin)
        form.addRow("Token merging ratio", self.token_merging_spin)
        form.addRow("Token merging ratio (hires)", self.token_merging_hr_spin)
        form.addRow("Fast mode LoRA", self.fast_lora_combo)
        form.addRow("Decoder", self.decoder_combo)
        form.addRow("Decoder in fast mode", self.fast_decoder_combo)
        taesd_row = QWidget(self)
        taesd_layout = QVBoxLayout(taesd_row)
        taesd_layout.setContentsMargins(0, 0, 0, 0)
        taesd_layout.addWidget(self.taesd_label)
        taesd_layout.addWidget(self.taesd_button)
        form.addRow("TAESD", taesd_row)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                   self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(self.error_label)
        layout.addWidget(buttons)

    def set_taesd_state(self, path: str) -> None:
        """Say whether TAESD is here (``path``: where, "" when not) and offer its download when it is not."""
        if path:
            self.taesd_label.setText(f"Found: {path}. Previews look like the picture; “Tiny (fast)” decodes "
                                     "with it.")
        else:
            self.taesd_label.setText("TAESD (madebyollin/taesd, 10 MB) is a tiny stand-in for the VAE: previews "
                                     "that look like the picture at every step and a much faster final decode. "
                                     "Not downloaded yet: without it the full VAE decodes.")
        self.taesd_button.setVisible(not path)

    def _make_cfg_skip_widgets(self, values: SettingsValues) -> None:
        """A1111's uncond skips (engine.denoiser): each skipped step runs the UNet on half the rows."""
        self.ngms_spin = self._number_spin(
            "ngmsSpin", values.s_min_uncond, MAX_NGMS, 0.1,
            "Negative Guidance minimum sigma (A1111's NGMS): below this noise level, skip the negative prompt on "
            "every other step. Faster (those steps cost about half), but the late details follow the negative "
            "prompt less. 0 = off", special="Off")
        self.ngms_all_steps_check = QCheckBox("all steps", self)
        self.ngms_all_steps_check.setObjectName("ngmsAllStepsCheck")
        self.ngms_all_steps_check.setChecked(values.s_min_uncond_all)
        self.ngms_all_steps_check.setToolTip("NGMS skips the negative prompt on every step below the sigma, not "
                                             "every other one: faster still, further from the full result")
        self.ngms_row = QWidget(self)
        row = QHBoxLayout(self.ngms_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.ngms_spin, 1)
        row.addWidget(self.ngms_all_steps_check)
        self.skip_early_cfg_spin = self._number_spin(
            "skipEarlyCfgSpin", values.skip_early_cond, 1.0, 0.05,
            "A1111's Skip Early CFG: ignore the negative prompt (no guidance) for this fraction of the first "
            "steps. Faster and can add variety, but the composition follows the prompts less. 0 = off",
            special="Off")

    def _choices(self, name: str, keys: tuple[str, ...], labels: dict[str, str], current: str) -> QComboBox:
        combo = QComboBox(self)
        combo.setObjectName(name)
        for key in keys:
            combo.addItem(labels.get(key, key), key)
        combo.setCurrentIndex(max(0, combo.findData(current)))
        return combo

    def _number_spin(self, name: str, value: float, high: float, step: float, tip: str,
                     special: str = "") -> QDoubleSpinBox:
        """A 0..high spin with two decimals; `special` is shown for 0 instead of the number."""
        spin = QDoubleSpinBox(self)
        spin.setObjectName(name)
        spin.setRange(0.0, high)
        spin.setSingleStep(step)
        spin.setDecimals(2)
        spin.setValue(value)
        spin.setSpecialValueText(special)
        spin.setToolTip(tip)
        return spin

    def _pair(self, edit: QLineEdit, button: QPushButton) -> QWidget:
        box = QWidget(self)
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit, 1)
        row.addWidget(button)
        return box

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a checkpoint", self.checkpoint_edit.text(),
                                              CHECKPOINT_FILTER)
        if path:
            self.checkpoint_edit.setText(path)

    def _browse_output(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder",
                                                  self.output_edit.text() or self.output_edit.placeholderText())
        if folder:
            self.output_edit.setText(folder)

    def accept(self) -> None:
        """OK: an output folder that can't be created is refused here, not after the next image is made."""
        text = self.output_edit.text().strip()
        if text:
            try:
                paths.ensure_folder(Path(text).expanduser())
            except paths.FolderError as exc:
                self.error_label.setText(f"The output folder can't be used: {exc.reason}. "
                                         "Choose another one.")
                self.error_label.setVisible(True)
                self.output_edit.setFocus()
                return
        self.error_label.setVisible(False)
        super().accept()

    def values(self) -> SettingsValues:
        return SettingsValues(checkpoint=self.checkpoint_edit.text().strip(),
                              device=self.device_combo.currentData(),
                              precision=self.precision_combo.currentData(),
                              output_dir=self.output_edit.text().strip(),
                              preview_enabled=self.preview_check.isChecked(),
                              rng=self.rng_combo.currentData(), ensd=self.ensd_spin.value(),
                              emphasis=self.emphasis_combo.currentData(),
                              vae=self.vae_combo.currentData() or "",
                              decoder=self.decoder_combo.currentData(),
                              fast_decoder=self.fast_decoder_combo.currentData(),
                              fast_lora=self.fast_lora_combo.currentData(),
                              s_min_uncond=self.ngms_spin.value(),
                              s_min_uncond_all=self.ngms_all_steps_check.isChecked(),
                              skip_early_cond=self.skip_early_cfg_spin.value(),
                              token_merging_ratio=round(self.token_merging_spin.value(), 2),
                              token_merging_ratio_hr=round(self.token_merging_hr_spin.value(), 2),
                              model_folders=tuple(line.strip() for line in self.folders_edit.toPlainText().splitlines()
                                                  if line.strip()))
