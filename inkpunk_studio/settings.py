"""Persistent settings (QSettings) behind a small typed wrapper.

With ``--data-dir`` the settings live in ``<data-dir>/settings.ini`` so a data folder is self-contained (tests,
portable installs, the self-test); otherwise they use the platform's native store under the app/org names.
Values read back are validated: a hand-edited or stale entry falls back to the default rather than crash.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

from . import paths

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
RNG_SOURCES = ("cpu", "nv")  # A1111's "CPU" and its Philox emulation of CUDA's randn ("NV"/"GPU")
EMPHASIS_MODES = ("original", "no_norm", "ignore", "none", "comfy")  # engine.prompt.EMPHASIS_MODES
MAX_ENSD = 2**63 - 1  # engine.request: ENSD shares the seed range
MAX_NGMS = 15.0  # A1111's "Negative Guidance minimum sigma" slider maximum (shared_options.py s_min_uncond)
MAX_TOKEN_MERGING = 0.9  # A1111's slider; engine.tome takes 0 <= ratio < 1
DECODERS = ("vae", "taesd")  # engine.request.DECODERS: the full VAE, or the tiny autoencoder (TAESD)
FAST_LORAS = ("lcm", "tcd", "hyper")  # inkpunk_studio.fast_mode.FEW_STEP_LORAS


class AppSettings:
    """Typed access to the app's QSettings. Cheap to create; writes go straight to the store."""

    def __init__(self, store: QSettings) -> None:
        self._s = store

    @classmethod
    def for_data_dir(cls, override: str | Path | None) -> AppSettings:
        """An ini file inside an explicit data folder, else the native per-user store."""
        if override:
            ini = paths.data_dir(override) / "settings.ini"
            return cls(QSettings(str(ini), QSettings.Format.IniFormat))
        return cls(QSettings(paths.ORG_NAME, paths.APP_NAME))

    @property
    def store(self) -> QSettings:
        return self._s

    def sync(self) -> None:
        self._s.sync()

    # --- helpers
    def _str(self, key: str, default: str = "") -> str:
        value = self._s.value(key, default)
        return value if isinstance(value, str) else default

    def _choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self._str(key, choices[0])
        return value if value in choices else choices[0]

    # --- model
    @property
    def checkpoint(self) -> str:
        return self._str("model/checkpoint")

    @checkpoint.setter
    def checkpoint(self, value: str) -> None:
        self._s.setValue("model/checkpoint", str(value or ""))

    @property
    def device(self) -> str:
        return self._choice("model/device", DEVICES)

    @device.setter
    def device(self, value: str) -> None:
        if value not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {value!r}")
        self._s.setValue("model/device", value)

    @property
    def precision(self) -> str:
        return self._choice("model/precision", PRECISIONS)

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
        self._s.setValue("model/precision", value)

    @property
    def vae(self) -> str:
        """An external VAE file for every model, or "" for each checkpoint's own ("Automatic")."""
        return self._str("model/vae")

    @vae.setter
    def vae(self, value: str) -> None:
        self._s.setValue("model/vae", str(value or ""))

    @property
    def model_folders(self) -> list[str]:
        """Extra models folders (an A1111 or ComfyUI `models` folder used in place), besides <data>/models."""
        raw = self._str("model/folders")
        try:
            value = json.loads(raw) if raw else []
        except ValueError:
            return []
        return [v for v in value if isinstance(v, str) and v] if isinstance(value, list) else []

    @model_folders.setter
    def model_folders(self, value: list[str]) -> None:
        self._s.setValue("model/folders", json.dumps([str(v) for v in value if str(v).strip()]))

    # --- output and ui
    @property
    def output_dir(self) -> str:
        """The chosen output folder, or "" for the default (<data>/outputs)."""
        return self._str("output/folder")

    @output_dir.setter
    def output_dir(self, value: str) -> None:
        self._s.setValue("output/folder", str(value or ""))

    @property
    def preview_enabled(self) -> bool:
        return self._bool("ui/preview", True)

    @preview_enabled.setter
    def preview_enabled(self, value: bool) -> None:
        self._s.setValue("ui/preview", bool(value))

    # --- sampling (A1111 keeps these in its settings too; a restored image sets them)
    @property
    def rng(self) -> str:
        """The noise source: "cpu" (default) or "nv" (A1111's GPU/NV noise, reproduced on any device)."""
        return self._choice("sampling/rng", RNG_SOURCES)

    @rng.setter
    def rng(self, value: str) -> None:
        if value not in RNG_SOURCES:
            raise ValueError(f"rng must be one of {', '.join(RNG_SOURCES)}, got {value!r}")
        self._s.setValue("sampling/rng", value)

    @property
    def ensd(self) -> int:
        """A1111's eta noise seed delta (0: off)."""
        value = self._s.value("sampling/ensd", 0)
        try:
            number = int(value)
        except (TypeError, ValueError):
            return 0
        return number if 0 <= number <= MAX_ENSD else 0

    @ensd.setter
    def ensd(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ENSD:
            raise ValueError(f"ENSD must be an integer from 0 to {MAX_ENSD}, got {value!r}")
        self._s.setValue("sampling/ensd", str(value))  # a string: ini files and 64-bit values survive

    @property
    def emphasis(self) -> str:
        return self._choice("sampling/emphasis", EMPHASIS_MODES)

    @emphasis.setter
    def emphasis(self, value: str) -> None:
        if value not in EMPHASIS_MODES:
            raise ValueError(f"emphasis must be one of {', '.join(EMPHASIS_MODES)}, got {value!r}")
        self._s.setValue("sampling/emphasis", value)

    # --- A1111's uncond skips (engine.denoiser): "NGMS", "NGMS all steps", "Skip Early CFG"
    def _float(self, key: str, low: float, high: float) -> float:
        try:
            number = float(self._s.value(key, 0.0))
        except (TypeError, ValueError):
            return 0.0
        return number if low <= number <= high else 0.0

    @property
    def s_min_uncond(self) -> float:
        """A1111's Negative Guidance minimum sigma (opts.s_min_uncond; 0: off)."""
        return self._float("sampling/ngms", 0.0, MAX_NGMS)

    @s_min_uncond.setter
    def s_min_uncond(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_NGMS:
            raise ValueError(f"NGMS must be a number from 0 to {MAX_NGMS:g}, got {value!r}")
        self._s.setValue("sampling/ngms", float(value))

    @property
    def s_min_uncond_all(self) -> bool:
        """NGMS on every step below the sigma, not every other one (opts.s_min_uncond_all)."""
        return self._bool("sampling/ngms_all_steps", False)

    @s_min_uncond_all.setter
    def s_min_uncond_all(self, value: bool) -> None:
        self._s.setValue("sampling/ngms_all_steps", bool(value))

    @property
    def skip_early_cond(self) -> float:
        """A1111's Skip Early CFG: the fraction of first steps without the negative prompt (0: off)."""
        return self._float("sampling/skip_early_cfg", 0.0, 1.0)

    @skip_early_cond.setter
    def skip_early_cond(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"Skip Early CFG must be a number from 0 to 1, got {value!r}")
        self._s.setValue("sampling/skip_early_cfg", float(value))

    # --- token merging (engine.tome; A1111's "Token merging ratio" and "... hr", Settings > Optimizations)
    @property
    def token_merging_ratio(self) -> float:
        """The share of the first UNet level's self-attention tokens merged (0: off)."""
        return self._float("sampling/token_merging_ratio", 0.0, MAX_TOKEN_MERGING)

    @token_merging_ratio.setter
    def token_merging_ratio(self, value: float) -> None:
        self._set_ratio("sampling/token_merging_ratio", value)

    @property
    def token_merging_ratio_hr(self) -> float:
        """The hires pass's ratio (0: the same as token_merging_ratio)."""
        return self._float("sampling/token_merging_ratio_hr", 0.0, MAX_TOKEN_MERGING)

    @token_merging_ratio_hr.setter
    def token_merging_ratio_hr(self, value: float) -> None:
        self._set_ratio("sampling/token_merging_ratio_hr", value)

    def _set_ratio(self, key: str, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TOKEN_MERGING:
            raise ValueError(f"token merging ratio must be a number from 0 to {MAX_TOKEN_MERGING}, got {value!r}")
        self._s.setValue(key, float(value))

    # --- fast mode (inkpunk_studio.fast_mode)
    def _bool(self, key: str, default: bool) -> bool:
        value = self._s.value(key, default)
        if isinstance(value, str):  # ini files give strings back
            return value.lower() not in ("false", "0", "no", "off")
        return bool(value)

    @property
    def decoder(self) -> str:
        """The final decode outside fast mode: "vae" (default) or "taesd" (the tiny autoencoder)."""
        return self._choice("decoder/normal", DECODERS)

    @decoder.setter
    def decoder(self, value: str) -> None:
        if value not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {value!r}")
        self._s.setValue("decoder/normal", value)

    @property
    def fast_decoder(self) -> str:
        """The final decode in fast mode: "taesd" (default; the full VAE when no TAESD is present) or "vae"."""
        value = self._str("decoder/fast", "taesd")
        return value if value in DECODERS else "taesd"

    @fast_decoder.setter
    def fast_decoder(self, value: str) -> None:
        if value not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {value!r}")
        self._s.setValue("decoder/fast", value)

    @property
    def fast_mode(self) -> bool:
        return self._bool("fast/on", False)

    @fast_mode.setter
    def fast_mode(self, value: bool) -> None:
        self._s.setValue("fast/on", bool(value))

    @property
    def fast_lora(self) -> str:
        """Which few-step LoRA fast mode uses (a FAST_LORAS key)."""
        return self._choice("fast/lora", FAST_LORAS)

    @fast_lora.setter
    def fast_lora(self, value: str) -> None:
        if value not in FAST_LORAS:
            raise ValueError(f"fast-mode LoRA must be one of {', '.join(FAST_LORAS)}, got {value!r}")
        self._s.setValue("fast/lora", value)

    def fast_lora_file(self, key: str) -> str:
        """A local file chosen for the few-step LoRA `key` ("" : the downloaded one in models/Lora)."""
        return self._str(f"fast/file_{key}")

    def set_fast_lora_file(self, key: str, path: str) -> None:
        if key not in FAST_LORAS:
            raise ValueError(f"fast-mode LoRA must be one of {', '.join(FAST_LORAS)}, got {key!r}")
        self._s.setValue(f"fast/file_{key}", str(path or ""))

    def fast_saved(self) -> dict[str, Any]:
        """The person's own sampler/schedule/steps/CFG from before fast mode was switched on ({} if none)."""
        raw = self._str("fast/saved")
        try:
            value = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def set_fast_saved(self, values: dict[str, Any]) -> None:
        self._s.setValue("fast/saved", json.dumps(values) if values else "")

    # --- window
    def geometry(self) -> QByteArray | None:
        value = self._s.value("window/geometry")
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def window_state(self) -> QByteArray | None:
        value = self._s.value("window/state")
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def save_window(self, geometry: QByteArray, state: QByteArray) -> None:
        self._s.setValue("window/geometry", geometry)
        self._s.setValue("window/state", state)

    def last_params(self) -> dict[str, Any]:
        """The parameters of the last session as a plain dict ({} when none or unreadable)."""
        raw = self._str("params/last")
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            log.warning("ignoring unreadable saved parameters")
            return {}
        return value if isinstance(value, dict) else {}

    def save_last_params(self, params: dict[str, Any]) -> None:
        self._s.setValue("params/last", json.dumps(params))
