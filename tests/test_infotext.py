"""Our infotext read by A1111's own rules: what we write must paste into A1111 as the same settings.

``a1111_parse`` is A1111 v1.10.1 ``modules/infotext_utils.py: parse_generation_parameters`` (regex, unquoting,
the ``-1``/``-2`` size split and its defaults), and ``a1111_lora_hashes`` its Lora extension's hash-list parse,
ported here as reference code so the test does not trust our own parser.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from inkpunk_studio.metadata import SAMPLER_LABELS, SCHEDULE_LABELS, ImageParams, read_params, save_png

RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")

# A1111 v1.10.1 labels (sd_samplers_kdiffusion.samplers_k_diffusion, sd_samplers_timesteps, sd_schedulers)
A1111_SAMPLERS = {"DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
                  "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM",
                  "DDIM CFG++", "PLMS", "UniPC", "LCM"}
A1111_SCHEDULES = {"Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                   "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"}


def _unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:  # A1111 catches Exception; json raises ValueError
        return text


def a1111_parse(x: str) -> dict[str, str]:
    res: dict[str, str] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in RE_PARAM.findall(lastline):
        if v[0] == '"' and v[-1] == '"':
            v = _unquote(v)
        m = RE_IMAGESIZE.match(v)
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v
    res.setdefault("Clip skip", "1")
    res.setdefault("RNG", "GPU")
    res.setdefault("Schedule type", "Automatic")
    return res


def a1111_lora_hashes(value: str) -> dict[str, str]:
    out = {}
    for t in value.split(","):
        parts = t.split(":")
        if len(parts) == 2:
            out[parts[0].strip()] = parts[1].strip()
    return out


FULL = ImageParams(
    prompt="nvinkpunk, (a fox:1.2), [neon], \"quoted\", key: value\nsecond line, テスト",
    negative_prompt="blurry, (lowres:1.4)\nline two", steps=28, sampler="dpmpp_2m_sde", schedule="exponential",
    cfg_scale=6.5, seed=2**32 + 5, width=512, height=768, strength=0.45, model_name="Inkpunk, v2: final",
    model_hash="9a1b2c3d4e", clip_skip=2, rng="nv", ensd=31337, emphasis="no_norm", variation_seed=77,
    variation_strength=0.25, lora_hashes={"ink": "abc123def456", "punk_style": "0123456789ab"},
    ti_hashes={"easyneg": "c74b4e810b03"}, vae_name="vae-ft-mse-840000.safetensors", vae_hash="735e4c3a44",
    version="v1.10.1", token_merging_ratio=0.5, token_merging_ratio_hr=0.3, extra={"Odd": 'a "b", c: d'})


def test_a_png_we_write_pastes_into_a1111_as_the_same_settings(tmp_path: Path) -> None:
    path = save_png(Image.new("RGB", (16, 16)), tmp_path / "ours.png", FULL)
    with Image.open(path) as img:
        res = a1111_parse(img.text["parameters"])
    assert res["Prompt"] == FULL.prompt and res["Negative prompt"] == FULL.negative_prompt
    assert {k: res[k] for k in ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size-1", "Size-2")} == {
        "Steps": "28", "Sampler": "DPM++ 2M SDE", "Schedule type": "Exponential", "CFG scale": "6.5",
        "Seed": str(2**32 + 5), "Size-1": "512", "Size-2": "768"}
    assert {k: res[k] for k in ("Model", "Model hash", "VAE", "VAE hash", "Denoising strength", "Version")} == {
        "Model": "Inkpunk, v2: final", "Model hash": "9a1b2c3d4e", "VAE": "vae-ft-mse-840000.safetensors",
        "VAE hash": "735e4c3a44", "Denoising strength": "0.45", "Version": "v1.10.1"}
    assert {k: res[k] for k in ("Clip skip", "RNG", "ENSD", "Emphasis", "Variation seed",
                                "Variation seed strength")} == {
        "Clip skip": "2", "RNG": "NV", "ENSD": "31337", "Emphasis": "No norm", "Variation seed": "77",
        "Variation seed strength": "0.25"}
    assert a1111_lora_hashes(res["Lora hashes"]) == {"ink": "abc123def456", "punk_style": "0123456789ab"}
    assert a1111_lora_hashes(res["TI hashes"]) == {"easyneg": "c74b4e810b03"}
    assert (res["Token merging ratio"], res["Token merging ratio hr"], res["Odd"]) == ("0.5", "0.3", 'a "b", c: d')
    assert res["Sampler"] in A1111_SAMPLERS and res["Schedule type"] in A1111_SCHEDULES
    # and our own reader gives back every field
    back = read_params(path)
    assert back == FULL and back is not None and back.notes == []


def test_fields_come_in_a1111_order() -> None:
    keys = [k for k, _ in RE_PARAM.findall(FULL.to_parameters_text().rsplit("\n", 1)[1])]
    assert keys == ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
                    "VAE hash", "VAE", "Variation seed", "Variation seed strength", "Denoising strength",
                    "Clip skip", "ENSD", "Token merging ratio", "Token merging ratio hr", "RNG", "Lora hashes",
                    "TI hashes", "Emphasis", "Odd", "Version"]


def test_defaults_are_left_out_as_a1111_leaves_them_out() -> None:
    res = a1111_parse(ImageParams(prompt="(plain)", seed=1, sampler="euler").to_parameters_text())
    for key in ("ENSD", "Emphasis", "Variation seed", "Variation seed strength", "Lora hashes", "VAE", "Version",
                "Token merging ratio", "Token merging ratio hr"):
        assert key not in res, key
    assert (res["Clip skip"], res["RNG"], res["Schedule type"]) == ("1", "CPU", "Automatic")
    # Emphasis only matters (and is only written) when the prompt uses ( or [
    assert "Emphasis" not in ImageParams(prompt="plain", emphasis="ignore").to_parameters_text()
    assert "Emphasis: Ignore" in ImageParams(prompt="[plain]", emphasis="ignore").to_parameters_text()
    assert "Emphasis: Ignore" in ImageParams(negative_prompt="(x)", emphasis="ignore").to_parameters_text()


@pytest.mark.parametrize("sampler", sorted(set(SAMPLER_LABELS) - {"ddpm", "tcd"}))  # ours: A1111 has neither
@pytest.mark.parametrize("schedule", sorted(SCHEDULE_LABELS))
def test_every_sampler_and_schedule_uses_a1111_labels(sampler: str, schedule: str) -> None:
    text = ImageParams(prompt="x", seed=1, sampler=sampler, schedule=schedule).to_parameters_text()
    res = a1111_parse(text)
    assert res["Sampler"] in A1111_SAMPLERS and res["Schedule type"] in A1111_SCHEDULES
    back = ImageParams.from_parameters_text(text)
    assert back is not None and (back.sampler, back.schedule) == (sampler, schedule)


def test_lora_names_are_cleaned_as_a1111_cleans_them() -> None:
    """A1111's Lora script drops ':' and ',' from names so its hash list parses back (lora_script.py)."""
    text = ImageParams(prompt="x", lora_hashes={"punk, style: 2": "0123456789ab"}).to_parameters_text()
    assert a1111_lora_hashes(a1111_parse(text)["Lora hashes"]) == {"punk style 2": "0123456789ab"}


def test_legacy_combined_name_is_written_as_sampler_and_schedule() -> None:
    text = ImageParams(prompt="x", sampler="dpmpp_2m_karras").to_parameters_text()
    res = a1111_parse(text)
    assert (res["Sampler"], res["Schedule type"]) == ("DPM++ 2M", "Karras")
    back = ImageParams.from_parameters_text(text)
    assert back is not None and (back.sampler, back.schedule, back.legacy_sampler) == ("dpmpp_2m", "karras",
                                                                                         "dpmpp_2m_karras")


@pytest.mark.parametrize(("text", "expected"), [
    ("", {"rng": "nv", "clip_skip": 1, "ensd": 0, "emphasis": "original", "variation_seed": None}),  # A1111 defaults
    ("RNG: CPU", {"rng": "cpu"}),
    ("RNG: GPU", {"rng": "nv"}),
    ("RNG: NV", {"rng": "nv"}),
    ("Clip skip: 2, ENSD: 31337", {"clip_skip": 2, "ensd": 31337}),
    ("Emphasis: No norm", {"emphasis": "no_norm"}),
    ("Emphasis: None", {"emphasis": "none"}),
    ("Variation seed: 5, Variation seed strength: 0.3", {"variation_seed": 5, "variation_strength": 0.3}),
    ('Lora hashes: "a: 1234, b: 5678", TI hashes: "neg: 9abc"', {"lora_hashes": {"a": "1234", "b": "5678"},
                                                                 "ti_hashes": {"neg": "9abc"}}),
    ("VAE hash: 735e4c3a44, VAE: vae.pt", {"vae_hash": "735e4c3a44", "vae_name": "vae.pt"}),
    ("Token merging ratio: 0.5", {"token_merging_ratio": 0.5, "token_merging_ratio_hr": 0.0}),
    ("Token merging ratio: 0.3, Token merging ratio hr: 0.6", {"token_merging_ratio": 0.3,
                                                              "token_merging_ratio_hr": 0.6}),
])
def test_reading_a1111_fields_and_defaults(text: str, expected: dict) -> None:
    line = "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64" + (f", {text}" if text else "")
    p = ImageParams.from_parameters_text(f"(a cat)\n{line}")
    assert p is not None and {k: getattr(p, k) for k in expected} == expected and p.notes == []


@pytest.mark.parametrize("text", ["RNG: Quantum", "Emphasis: Loud", "Clip skip: 40", "Variation seed strength: 3",
                                  "Token merging ratio: 1.5", "Token merging ratio hr: abc"])
def test_unusable_values_are_noted_and_kept(text: str) -> None:
    p = ImageParams.from_parameters_text(f"x\nSteps: 20, Sampler: Euler, CFG scale: 7, Size: 64x64, {text}")
    assert p is not None and len(p.notes) == 1
    key = text.split(":")[0]
    assert key in p.notes[0] and key in p.extra


@pytest.mark.parametrize("params", [
    FULL,
    ImageParams(prompt="x", sampler="euler_a", schedule="karras", rng="cpu"),
    ImageParams(prompt="x", sampler=None, schedule=None, extra={"Sampler": "Restart"}),
    ImageParams(prompt="x", strength=None, extra={"Denoising strength": "0.7", "Hires upscale": "2"}),
])
def test_a_row_with_the_original_columns_keeps_every_field(params: ImageParams) -> None:
    """A store with columns for the original fields (the library) keeps the rest in its extra JSON."""
    columns = {k: getattr(params, k) for k in ("prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width",
                                               "height", "model_name", "model_hash", "strength")}
    stored = json.loads(json.dumps(params.stored_extra()))
    assert ImageParams.from_stored(params.sampler or "", stored, **columns) == params


def test_rows_stored_before_schedules_existed() -> None:
    old = ImageParams.from_stored("dpmpp_2m_karras", {}, prompt="x", seed=1)
    assert (old.sampler, old.schedule, old.rng, old.legacy_sampler) == ("dpmpp_2m", "karras", "cpu",
                                                                       "dpmpp_2m_karras")
    old = ImageParams.from_stored("euler_a", {"Clip skip": "2"}, prompt="x")
    assert (old.sampler, old.schedule, old.clip_skip, old.extra) == ("euler_a", "uniform", 2, {})


@pytest.mark.parametrize(("tail", "prompt", "expected"), [
    ("Version: v1.10.1", "[a:b:0.5]", []),
    ("Version: v1.8.0", "a", []),
    ("Version: v1.7.0", "a", ["Downcast alphas_cumprod"]),
    ("Version: v1.5.1", "[a:b:0.5]", ["Old prompt editing timelines", "Downcast alphas_cumprod"]),
    ("Version: v1.5.1, Sampler: DDIM", "a", ["Pad conds v0", "Downcast alphas_cumprod"]),
    ("Downcast alphas_cumprod: True", "a", ["Downcast alphas_cumprod"]),
    ("Version: v1.6.0, Downcast alphas_cumprod: False", "a", []),
    ("Version: classic", "[a]", []),  # not an A1111 version number: nothing assumed
])
def test_older_a1111_behaviour_is_named(tail: str, prompt: str, expected: list[str]) -> None:
    p = ImageParams.from_parameters_text(f"{prompt}\nSteps: 20, Sampler: Euler, CFG scale: 7, Size: 64x64, {tail}")
    assert p is not None and [n.split(" (")[0] for n in p.notes] == expected
