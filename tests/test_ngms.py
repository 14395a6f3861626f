"""A1111's uncond skips: "NGMS" (Negative Guidance minimum sigma, opts.s_min_uncond, PR #9177), "NGMS all steps"
(opts.s_min_uncond_all) and "Skip Early CFG" (opts.skip_early_cond), in engine.denoiser.CFGDenoiser.

The reference is a port of AUTOMATIC1111 v1.10 `modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward`
(the skip decision, the x_in/sigma_in slicing, the fake uncond rows, combine_denoised at scale 1.0), with
`inner_model` = k-diffusion's CompVisDenoiser around a toy UNet that records the rows it is given.
"""

# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)
from __future__ import annotations

import types

import pytest
import torch
from fixtures_app import (  # noqa: F401  (pytest fixtures, used as arguments)
    RUN_TIMEOUT_MS,
    open_window,
    set_small_params,
    tiny_checkpoint,
)

import engine
from engine.conditioning import PromptSchedule
from engine.denoiser import CFGDenoiser
from engine.schedules import ModelSchedule
from engine.schedules import sigmas as schedule_sigmas
from engine.testing import write_random_checkpoint

SCHEDULE = ModelSchedule.sd1()
SIZE = {"width": 64, "height": 64}


class ToyUNet(torch.nn.Module):
    """eps = tanh(x * mean(context) + t / 1000): depends on the rows' context, so cond != uncond. Records the
    batch size of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []

    def forward(self, x, t, context, interrupt=None):
        self.rows.append(x.shape[0])
        return torch.tanh(x * context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) + t.reshape(-1, 1, 1, 1) / 1000)


def a1111_forward(state, unet, x, sigma, uncond, cond, cond_scale, s_min_uncond, timestep_path=False):
    """A1111 v1.10 CFGDenoiser.forward, reduced to one prompt per image (conds_list = [[(i, 1.0)]]), token
    lengths equal and batch_cond_uncond on; `state` holds step, total_steps, opts and extra_generation_params.
    `sigma` is what the sampler passes: k-diffusion's sigma, or the timestep on the sd_samplers_timesteps path
    (then `inner_model` is CompVisTimestepsDenoiser: the timestep goes to the UNet as is)."""
    opts, batch_size = state.opts, x.shape[0]

    def inner_model(x_in, sigma_in, cond):  # k-diffusion CompVisDenoiser (c_in, sigma_to_t, x - sigma * eps)
        if timestep_path:
            return unet(x_in, sigma_in.half().float(), cond)
        s = sigma_in.reshape(-1, 1, 1, 1)
        t = SCHEDULE.sigma_to_t(sigma_in).half().float()  # sd_hijack_unet.apply_model: fp16 timestep
        return x_in - s * unet(x_in / (s**2 + 1) ** 0.5, t, cond)

    x_in = torch.cat([x, x])
    sigma_in = torch.cat([sigma, sigma])
    skip_uncond = False
    if opts.skip_early_cond != 0.0 and state.step / state.total_steps <= opts.skip_early_cond:
        skip_uncond = True
        state.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
    elif (state.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
        skip_uncond = True
        state.extra_generation_params["NGMS"] = s_min_uncond
        if opts.s_min_uncond_all:
            state.extra_generation_params["NGMS all steps"] = opts.s_min_uncond_all
    if skip_uncond:
        x_in = x_in[:-batch_size]
        sigma_in = sigma_in[:-batch_size]
    cond_in = cond if skip_uncond else torch.cat([cond, uncond])
    x_out = inner_model(x_in, sigma_in, cond_in)
    if skip_uncond:
        x_out = torch.cat([x_out, x_out[:batch_size]])  # fake_uncond: the cond rows where uncond goes

    def combine_denoised(x_out, scale):
        denoised_uncond = x_out[-batch_size:]
        denoised = torch.clone(denoised_uncond)
        for i in range(batch_size):
            denoised[i] += (x_out[i] - denoised_uncond[i]) * (1.0 * scale)
        return denoised

    denoised = combine_denoised(x_out, 1.0 if skip_uncond else cond_scale)
    state.step += 1
    return denoised


def schedules():
    g = torch.Generator().manual_seed(5)
    cond, uncond = torch.rand(1, 77, 8, generator=g) + 0.5, torch.rand(1, 77, 8, generator=g) - 0.5
    return PromptSchedule([(10**6, "c")], ["c"], cond), PromptSchedule([(10**6, "u")], ["u"], uncond), cond, uncond


CASES = [  # (s_min_uncond, s_min_uncond_all, skip_early_cond, cfg_scale)
    (0.0, False, 0.0, 7.0),
    (1.0, False, 0.0, 7.0),
    (2.5, True, 0.0, 5.0),
    (0.0, False, 0.3, 7.0),
    (1.5, False, 0.25, 7.0),
    (14.0, True, 0.1, 3.0),
    (1.0, False, 0.2, 1.0),  # cfg 1: the infotext keys are written all the same
]


@pytest.mark.parametrize(("ngms", "ngms_all", "early", "cfg"), CASES)
def test_skips_rows_and_values_match_a1111(ngms, ngms_all, early, cfg):
    cond_s, uncond_s, cond, uncond = schedules()
    sigmas = schedule_sigmas("karras", 10)[:-1]  # DPM++ 2M Karras: one call per step
    ours_unet, ref_unet = ToyUNet(), ToyUNet()
    ours = CFGDenoiser(ours_unet, SCHEDULE, cond_s, uncond_s, cfg, dtype=torch.float32, s_min_uncond=ngms,
                       s_min_uncond_all=ngms_all, skip_early_cond=early, total_steps=len(sigmas))
    state = types.SimpleNamespace(step=0, total_steps=len(sigmas), extra_generation_params={},
                                  opts=types.SimpleNamespace(skip_early_cond=early, s_min_uncond_all=ngms_all))
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * 10
    for sigma in sigmas:
        s_in = sigma * x.new_ones(2)
        got = ours(x, s_in)
        want = a1111_forward(state, ref_unet, x, s_in, uncond.expand(2, -1, -1), cond.expand(2, -1, -1), cfg, ngms)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
        x = want
    want_rows = ref_unet.rows if cfg > 1 else [2] * len(sigmas)  # ours never runs uncond rows at cfg <= 1
    assert ours_unet.rows == want_rows
    assert ours.cfg_skips == state.extra_generation_params


def test_ngms_skips_odd_calls_below_the_sigma_and_uses_the_cond_estimate():
    cond_s, uncond_s, _, _ = schedules()
    sigmas = schedule_sigmas("karras", 10)[:-1]
    unet = ToyUNet()
    d = CFGDenoiser(unet, SCHEDULE, cond_s, uncond_s, 7.0, dtype=torch.float32, s_min_uncond=2.0)
    plain = CFGDenoiser(ToyUNet(), SCHEDULE, cond_s, cond_s, 7.0, dtype=torch.float32)  # cond = uncond: cond estimate
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    for k, sigma in enumerate(sigmas):
        out = d(x, sigma.reshape(1))
        if k % 2 and sigma < 2.0:
            assert unet.rows[-1] == 1  # the uncond rows were not run
            assert torch.equal(out, plain(x, sigma.reshape(1)))  # uncond + (cond - uncond) * 1 = cond, exactly
        else:
            assert unet.rows[-1] == 2
            plain.step += 1
    skipped = [k for k, s in enumerate(sigmas.tolist()) if k % 2 and s < 2.0]
    assert skipped and unet.rows.count(1) == len(skipped)


def test_timestep_samplers_compare_the_timestep_as_a1111s_ddim_path():
    """A1111's DDIM/PLMS/UniPC pass the timestep where k-diffusion passes sigma: NGMS 12 skips at t = 11 (sigma
    ~0.12) but not at t = 21 even though its sigma is far below 12."""
    cond_s, uncond_s, cond, uncond = schedules()
    ts = [41, 31, 21, 11, 1]
    unet, ref_unet = ToyUNet(), ToyUNet()
    d = CFGDenoiser(unet, SCHEDULE, cond_s, uncond_s, 7.0, dtype=torch.float32, s_min_uncond=12.0,
                    timestep_sampler=True)
    state = types.SimpleNamespace(step=0, total_steps=5, extra_generation_params={},
                                  opts=types.SimpleNamespace(skip_early_cond=0.0, s_min_uncond_all=False))
    for t in ts:
        d(torch.zeros(1, 4, 2, 2), SCHEDULE.sigmas[t].reshape(1))
        a1111_forward(state, ref_unet, torch.zeros(1, 4, 2, 2), torch.tensor([float(t)]), uncond, cond, 7.0, 12.0,
                      timestep_path=True)
    assert unet.rows == ref_unet.rows == [2, 2, 2, 1, 2]  # call 3 (odd) at t = 11 < 12; call 4 is even
    assert d.cfg_skips == state.extra_generation_params == {"NGMS": 12.0}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("ngms") / "tiny.safetensors", seed=3)
    return engine.load_pipeline(ckpt, device="cpu", dtype="fp32")


def run(pipe, **kw):
    """(result, [(rows, first row's UNet input)] per UNet call)."""
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda _m, a: calls.append((a[0].shape[0], a[0][0].clone())))
    try:
        req = engine.GenerationRequest(prompt="ink", negative_prompt="blur", steps=4, seed=4, sampler="dpmpp_2m",
                                       schedule="karras", **SIZE, **kw)
        return pipe.generate(req), calls
    finally:
        hook.remove()


def test_default_is_bit_identical_and_ngms_changes_the_image_from_the_first_skipped_step(pipe):
    base, base_calls = run(pipe)
    same, _ = run(pipe, s_min_uncond=0.0, s_min_uncond_all=False, skip_early_cond=0.0)
    assert torch.equal(base.latents, same.latents) and base.cfg_skips == same.cfg_skips == {}
    sig = schedule_sigmas("karras", 4)
    threshold = float(sig[0] + sig[1]) / 2  # calls 1, 2, 3 are below it; only the odd ones (1, 3) skip
    ngms, calls = run(pipe, s_min_uncond=threshold)
    assert [rows for rows, _ in calls] == [2, 1, 2, 1]
    for k, ((_, x), (_, x0)) in enumerate(zip(calls, base_calls, strict=True)):
        assert torch.equal(x, x0) == (k <= 1), k  # the skipped call 1 changes the input of call 2 on
    assert not torch.equal(ngms.latents, base.latents)
    assert ngms.cfg_skips == {"NGMS": threshold}
    every, calls = run(pipe, s_min_uncond=threshold, s_min_uncond_all=True)
    assert [rows for rows, _ in calls] == [2, 1, 1, 1]
    assert every.cfg_skips == {"NGMS": threshold, "NGMS all steps": True}


def test_skip_early_cfg_counts_second_order_calls_as_a1111(pipe):
    """Heun, 3 steps: 5 calls, total_steps 6 (SamplerData.total_steps doubles second-order samplers); 0.5 skips
    calls 0-3 (k / 6 <= 0.5). An NGMS that would hit call 3 too is not written: A1111's `elif`."""
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda _m, a: calls.append(a[0].shape[0]))
    try:
        req = engine.GenerationRequest(prompt="ink", steps=3, seed=4, sampler="heun", skip_early_cond=0.5,
                                       s_min_uncond=100.0, **SIZE)
        result = pipe.generate(req)
    finally:
        hook.remove()
    assert calls == [1, 1, 1, 1, 2]
    assert result.cfg_skips == {"Skip Early CFG": 0.5}


def test_skip_early_cfg_img2img_counts_the_steps_run(pipe):
    """img2img: A1111 launch_sampling(t_enc + 1); 10 steps at 0.5 -> 6 steps, 0.34 skips calls 0-2."""
    from PIL import Image

    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda _m, a: calls.append(a[0].shape[0]))
    try:
        req = engine.GenerationRequest(prompt="ink", steps=10, seed=4, sampler="euler", skip_early_cond=0.34,
                                       init_image=Image.new("RGB", (64, 64), "gray"), strength=0.5, **SIZE)
        pipe.generate(req)
    finally:
        hook.remove()
    assert calls == [1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize(("field", "value"), [("s_min_uncond", -0.1), ("s_min_uncond", float("nan")),
                                              ("s_min_uncond", "1"), ("skip_early_cond", 1.5),
                                              ("skip_early_cond", -0.01), ("s_min_uncond_all", 1)])
def test_bad_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        engine.GenerationRequest(prompt="x", **{field: value})


# --- infotext, settings, CLI and the window (inkpunk_studio) ---

A1111_TEXT = ("a cat\nNegative prompt: blur\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, "
              "Seed: 1, Size: 512x512, Model hash: 6ce0161689, Model: v1-5, Skip Early CFG: 0.1, NGMS: 2.5, "
              "NGMS all steps: True, Version: v1.10.1")


def test_infotext_keys_round_trip_as_a1111_writes_them():
    from inkpunk_studio.metadata import ImageParams

    meta = ImageParams.from_parameters_text(A1111_TEXT)
    assert (meta.skip_early_cond, meta.s_min_uncond, meta.s_min_uncond_all) == (0.1, 2.5, True)
    assert not set(meta.extra) & {"NGMS", "NGMS all steps", "Skip Early CFG"} and not meta.notes
    assert meta.to_parameters_text().endswith("Skip Early CFG: 0.1, NGMS: 2.5, NGMS all steps: True, "
                                              "Version: v1.10.1")
    assert ImageParams.from_parameters_text(meta.to_parameters_text()) == meta
    # only what a generation skipped is recorded (A1111 v1.10 writes the keys from CFGDenoiser.forward)
    meta.set_cfg_skips({"NGMS": 0.5})
    text = meta.to_parameters_text()
    assert "NGMS: 0.5, Version" in text and "Skip Early CFG" not in text and "all steps" not in text
    meta.set_cfg_skips({})
    assert "NGMS" not in meta.to_parameters_text()
    # missing keys: off; unusable ones are said and not applied
    plain = ImageParams.from_parameters_text(A1111_TEXT.replace(", Skip Early CFG: 0.1, NGMS: 2.5, "
                                                                "NGMS all steps: True", ""))
    assert (plain.skip_early_cond, plain.s_min_uncond, plain.s_min_uncond_all) == (0.0, 0.0, False)
    bad = ImageParams.from_parameters_text(A1111_TEXT.replace("NGMS: 2.5", "NGMS: -3"))
    assert bad.s_min_uncond == 0.0 and any("NGMS" in n for n in bad.notes)
    assert "NGMS: -3" not in bad.to_parameters_text()


def test_cli_flags_and_from_png(tmp_path):
    from PIL import Image

    from inkpunk_studio import cli
    from inkpunk_studio.metadata import ImageParams, save_png

    png = tmp_path / "a.png"
    save_png(Image.new("RGB", (8, 8)), png, ImageParams.from_parameters_text(A1111_TEXT))
    base = ["--checkpoint", "x.ckpt", "--out", str(tmp_path / "o.png")]
    args = cli.build_parser().parse_args([*base, "--from-png", str(png), "--ngms", "1.25"])
    v = cli._settings(args)
    assert (v["ngms"], v["ngms_all_steps"], v["skip_early_cfg"]) == (1.25, True, 0.1)
    v = cli._settings(cli.build_parser().parse_args([*base, "--prompt", "x", "--ngms-all-steps",
                                                     "--skip-early-cfg", "0.3"]))
    assert (v["ngms"], v["ngms_all_steps"], v["skip_early_cfg"]) == (0.0, True, 0.3)


def test_settings_dialog_spins_store_and_bad_entries_fall_back(qtbot, tmp_path):
    from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox

    from inkpunk_studio.settings import AppSettings
    from inkpunk_studio.widgets.settings_dialog import SettingsDialog, SettingsValues

    settings = AppSettings.for_data_dir(tmp_path)
    assert (settings.s_min_uncond, settings.s_min_uncond_all, settings.skip_early_cond) == (0.0, False, 0.0)
    dialog = SettingsDialog(SettingsValues.from_settings(settings), str(tmp_path / "out"))
    qtbot.addWidget(dialog)
    ngms = dialog.findChild(QDoubleSpinBox, "ngmsSpin")
    early = dialog.findChild(QDoubleSpinBox, "skipEarlyCfgSpin")
    assert ngms.toolTip() and early.toolTip() and (early.minimum(), early.maximum()) == (0.0, 1.0)
    ngms.setValue(2.5)
    dialog.findChild(QCheckBox, "ngmsAllStepsCheck").setChecked(True)
    early.setValue(0.25)
    dialog.values().save(settings)
    again = AppSettings.for_data_dir(tmp_path)
    assert (again.s_min_uncond, again.s_min_uncond_all, again.skip_early_cond) == (2.5, True, 0.25)
    again.store.setValue("sampling/ngms", "lots")
    again.store.setValue("sampling/skip_early_cfg", "7")
    assert (again.s_min_uncond, again.skip_early_cond) == (0.0, 0.0)
    with pytest.raises(ValueError, match="Skip Early CFG"):
        again.skip_early_cond = 1.5


def test_window_generates_with_the_settings_writes_the_keys_and_restores_them(qtbot, open_window,
                                                                             tiny_checkpoint):
    from PIL import Image
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QPushButton

    from inkpunk_studio.metadata import read_params

    window = open_window(checkpoint=tiny_checkpoint)
    set_small_params(window, steps=3)
    settings = window.settings
    settings.s_min_uncond, settings.s_min_uncond_all, settings.skip_early_cond = 2.5, True, 0.2
    request = window.current_params().request(1234)
    assert (request.s_min_uncond, request.s_min_uncond_all, request.skip_early_cond) == (2.5, True, 0.2)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        qtbot.mouseClick(window.findChild(QPushButton, "generateButton"), Qt.MouseButton.LeftButton)
    [path] = finished.args[0]
    with Image.open(path) as image:
        assert "Skip Early CFG: 0.2, NGMS: 2.5, NGMS all steps: True" in image.text["parameters"]
    settings.s_min_uncond, settings.s_min_uncond_all, settings.skip_early_cond = 0.0, False, 0.0
    window.apply_image_params(read_params(path))
    assert (settings.s_min_uncond, settings.s_min_uncond_all, settings.skip_early_cond) == (2.5, True, 0.2)
    assert "NGMS 2.5" in window.statusBar().currentMessage()


def test_ddim_in_the_pipeline_compares_the_timestep(pipe):
    """DDIM img2img, 100 steps at 0.05: A1111 runs timesteps[:5] = 1, 11, ..., 41 and calls the model at 41, 31,
    21, 11. NGMS 12 with all steps skips only t = 11; compared with sigma (~0.25 at t = 41) it would skip all."""
    from PIL import Image

    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda _m, a: calls.append(a[0].shape[0]))
    try:
        req = engine.GenerationRequest(prompt="ink", steps=100, seed=4, sampler="ddim", s_min_uncond=12.0,
                                       s_min_uncond_all=True, init_image=Image.new("RGB", (64, 64), "gray"),
                                       strength=0.05, **SIZE)
        result = pipe.generate(req)
    finally:
        hook.remove()
    assert calls == [2, 2, 2, 1]
    assert result.cfg_skips == {"NGMS": 12.0, "NGMS all steps": True}
