"""The few-step LoRAs fast mode offers (LCM-LoRA, TCD-LoRA, Hyper-SD 1/2/4/8-step and the CFG ones), built as
random-weight files in the layouts the released files have, merged by engine.lora and compared with diffusers'
load_lora_weights + fuse_lora (what these files were made for), with every key used.

What the real files are (gathered without downloading them, which this project cannot do; README.md's fast-mode
section has the sources):
  * the module set: diffusers' LCM-LoRA training script (examples/consistency_distillation/
    train_lcm_distill_lora_sd_wds.py `lora_target_modules`, rank 64, lora_alpha 8) trains to_q, to_k, to_v,
    to_out.0, proj_in, proj_out, ff.net.0.proj, ff.net.2, conv1, conv2, conv_shortcut, downsamplers.0.conv,
    upsamplers.0.conv and time_emb_proj of the UNet only. On SD 1.5 that is 278 layers and 67.25 M parameters:
    134.5 MB in fp16, 269.0 MB in fp32. The lcm-lora-sdv1-5 model card gives 67.5 M parameters and the file is
    135 MB (fp16); Hyper-SD15-1step/2steps/4steps-lora.safetensors are listed at 269 MB (fp32: the same set at
    rank 64) and Hyper-SD15-8steps-lora.safetensors at ~136 MB (fp16). For TCD-SD15-LoRA no size was found:
    the same set in fp16 is assumed (TCD's training code derives from the same script).
  * the key spelling: the literal keys could not be read here. Their model cards load them with diffusers'
    load_lora_weights, so they are in one of the spellings diffusers reads: kohya-style in
    diffusers' module names (`lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight`, `.lora_up.weight`,
    `.alpha`: what tests/test_app_fast.py takes for LCM-LoRA), PEFT's
    (`unet.down_blocks.0.attentions.0.proj_in.lora_A.weight`) or diffusers' older
    `unet.<module>.lora.down.weight`. Each file is built in every one of them, in its dtype, so whichever the
    real file uses is covered.
"""
# ruff: noqa: F811  (pytest fixtures imported from test_lora are redefined as test arguments)

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file
from test_lora import TOL, ckpt, layers, ours, outputs, reference_pipe  # noqa: F401
from test_models_parity import rel_err

from engine.lora import apply_loras, diffusers_unet_name, read_lora
from engine.testing import few_step_lora

# diffusers train_lcm_distill_lora_sd_wds.py `lora_target_modules` (the UNet's LoRA layers of all these files)
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
           "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
RANK, ALPHA = 8, 1.0  # the released files: rank 64, alpha 8 -> the same alpha / rank = 1/8

# file -> (key spelling, dtype): the spellings each file may have (see the module docstring)
FILES = {
    "lcm-lora-sdv1-5": (("kohya_diffusers", "peft", "diffusers_legacy"), torch.float16),
    "TCD-SD15-LoRA": (("kohya_diffusers", "peft", "diffusers_legacy"), torch.float16),
    "Hyper-SD15-1step-lora": (("kohya_diffusers", "peft", "diffusers_legacy"), torch.float32),
    "Hyper-SD15-4steps-lora": (("kohya_diffusers", "peft", "diffusers_legacy"), torch.float32),
    "Hyper-SD15-8steps-lora": (("kohya_diffusers", "peft", "diffusers_legacy"), torch.float16),
    "Hyper-SD15-8steps-CFG-lora": (("kohya_diffusers", "peft", "diffusers_legacy"), torch.float16),
}
# each (spelling, dtype) once, named by the files it stands for
CASES = sorted({(style, dtype) for styles, dtype in FILES.values() for style in styles}, key=str)
CASE_IDS = [f"{style}-{str(dtype).removeprefix('torch.')}-" + "+".join(
    n for n, (styles, d) in FILES.items() if style in styles and d == dtype) for style, dtype in CASES]


def target_layers(models) -> dict[str, str]:
    """Our UNet module name -> diffusers' name, for the layers the few-step LoRAs train."""
    out = {}
    for name in layers(models.unet):
        spelled = diffusers_unet_name(name, models.unet.config)
        if spelled is not None and spelled.endswith(TARGETS):
            out[name] = spelled
    return out


def fewstep_lora(models, style: str, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """engine.testing.few_step_lora with the released files' alpha / rank; its layer set must be TARGETS'."""
    return few_step_lora(models.unet, rank=RANK, alpha=ALPHA, dtype=dtype, style=style, up_scale=2.0, seed=seed)


def test_the_module_set_is_the_released_files_size(ours):
    """On SD 1.5 at rank 64 the trained layers make 67.25 M parameters: 134.5 MB in fp16 (lcm-lora-sdv1-5's
    135 MB, Hyper-SD15-8steps' ~136 MB) and 269.0 MB in fp32 (Hyper-SD15-1step/2steps/4steps' 269 MB)."""
    from engine.config import UNetConfig
    from engine.unet import UNet

    with torch.device("meta"):
        unet = UNet(UNetConfig.sd15())
    model = type("M", (), {"unet": unet})()
    modules = dict(unet.named_modules())
    chosen = target_layers(model)
    params = sum(64 * (math.prod(modules[n].weight.shape[1:]) + modules[n].weight.shape[0]) for n in chosen)
    assert len(chosen) == 278
    assert params == 67_252_224
    assert round(params * 2 / 1e6, 1) == 134.5 and round(params * 4 / 1e6, 1) == 269.0
    kinds = {spelled.rsplit(".", 1)[-1] for spelled in chosen.values()}
    assert {"conv1", "conv2", "conv_shortcut", "conv", "time_emb_proj", "proj_in", "to_q"} <= kinds
    assert not any(s.startswith(("conv_in", "conv_out", "time_embedding")) for s in chosen.values())


@pytest.mark.parametrize(("style", "dtype"), CASES, ids=CASE_IDS)
def test_fewstep_lora_layout_merges_like_diffusers(style, dtype, ours, reference_pipe, tmp_path):
    state = fewstep_lora(ours, style, dtype, seed=3)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(state, str(path))
    lora = read_lora(path, ours)
    assert lora.unmatched == [], "keys ignored"
    assert {m.component for m in lora.modules} == {"unet"}
    assert sorted(m.name for m in lora.modules) == sorted(target_layers(ours))
    assert {m.scale for m in lora.modules} == {ALPHA / RANK if style == "kohya_diffusers" else 1.0}

    before = outputs(ours.text_encoder, ours.unet, diffusers=False)
    handle = apply_loras(ours, [(path, 1.0)])
    got = outputs(ours.text_encoder, ours.unet, diffusers=False)
    ref = reference_pipe()
    ref.load_lora_weights({k: v.clone() for k, v in state.items()})
    ref.fuse_lora(components=["unet"], lora_scale=1.0)
    expected = outputs(ref.text_encoder, ref.unet, diffusers=True)
    assert torch.equal(got[0], before[0])  # UNet-only files leave the text encoder alone
    assert rel_err(got[1], expected[1]) <= TOL
    assert rel_err(before[1], expected[1]) > 100 * TOL  # the LoRA made a real difference
    handle.restore()
    after = outputs(ours.text_encoder, ours.unet, diffusers=False)
    assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_one_tcd_step_is_the_same_at_any_gamma():
    """Hyper-SD's 1-step LoRA card runs TCDScheduler at eta 1.0; at one step there is no noise to add between
    steps, so our tcd sampler at its fixed gamma 0.3 gives exactly that (README's advice for that file)."""
    from engine.samplers import tcd
    from engine.schedules import ModelSchedule

    schedule = ModelSchedule.sd1()
    sigmas = torch.cat([schedule.sigmas[tcd.timesteps(1)[::-1]], torch.zeros(1)])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    denoiser = lambda x_ve, sigma: torch.tanh(x_ve) * 0.5  # any x0 estimate
    noise = lambda: torch.randn(1, 4, 8, 8)  # unseeded: drawn, it would make the two differ
    out = [tcd.sample_tcd(denoiser, x, sigmas, gamma=g, noise=noise) for g in (0.3, 1.0)]
    assert torch.equal(out[0], out[1])
