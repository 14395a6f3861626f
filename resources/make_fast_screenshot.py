"""Make the README's fast-mode screenshot (docs/screenshot-fast.png) from the real app.

    xvfb-run -a -s "-screen 0 1600x1000x24" python resources/make_fast_screenshot.py [OUT.png]

As make_screenshot.py: a throwaway data folder and a tiny random-weight checkpoint (the images are colourful
noise), plus a random LoRA in LCM-LoRA's key layout in models/Lora and a random TAESD in
models/VAE-approx/taesd, so the Fast switch turns on without a download; then two 4-step images. Run from the
source tree.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "resources"))

from make_screenshot import _pause, _wait, open_window  # after the path set-up


def _lcm_layout_lora(checkpoint: Path, out: Path) -> None:
    """Random rank-4 factors in LCM-LoRA's layout (engine.testing.few_step_lora) for the checkpoint's UNet."""
    import torch
    from safetensors.torch import save_file

    from engine.checkpoint import load_models
    from engine.testing import few_step_lora

    models = load_models(checkpoint, device="cpu", dtype=torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(few_step_lora(models.unet, rank=4, up_scale=0.2), str(out))


def _fast_mode_files(checkpoint: Path, data: Path) -> None:
    """The LoRA and TAESD fast mode finds in the data folder, so it turns on without a download."""
    from engine.testing import write_random_taesd
    from inkpunk_studio import paths

    models = paths.models_dir(data)
    _lcm_layout_lora(checkpoint, models / "Lora" / "lcm-lora-sdv1-5.safetensors")
    (models / "VAE-approx" / "taesd").mkdir(parents=True)
    write_random_taesd(models / "VAE-approx" / "taesd" / "diffusion_pytorch_model.safetensors")


def main(out: Path) -> int:
    from PySide6.QtWidgets import QScrollArea

    from inkpunk_studio import paths
    from inkpunk_studio.widgets.prompt_panel import load_presets

    with tempfile.TemporaryDirectory(prefix="inkpunk-shot-") as tmp:
        window = open_window(Path(tmp), prepare=_fast_mode_files)

        presets = load_presets(paths.resource_path("presets.json"))
        window.prompt_panel.apply_preset(presets[2])
        window.params_panel.set_values(seed=1234, width=256, height=256, batch_count=2)
        window.run_bar.fast_check.click()
        _wait(lambda: window.fast_mode.enabled)
        done: list = []
        window.generationFinished.connect(done.append)
        window.generate()
        _wait(lambda: done)
        _pause(800)  # thumbnails and token counts arrive
        window.statusBar().showMessage("Fast mode: LCM-LoRA at 1.0, LCM 4 steps, CFG 1 and the tiny decoder")
        window.findChild(QScrollArea, "sidebarScroll").ensureWidgetVisible(window.run_bar)  # the Fast switch
        _pause(200)
        out.parent.mkdir(parents=True, exist_ok=True)
        window.grab().save(str(out), "PNG")
        window.close()
    print(f"saved {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshot-fast.png"))
