"""The command line's sampling options (issue 12 §5): schedule, clip skip, RNG, variation, ENSD, emphasis and
--from-png, run in-process on a tiny random-weight checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.testing import write_random_checkpoint
from inkpunk_studio.cli import main
from inkpunk_studio.metadata import ImageParams, read_params, save_png

SMALL = ["--steps", "3", "--width", "64", "--height", "64"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("cli") / "tiny-model.safetensors")


def _run(ckpt: Path, *args: str) -> int:
    return main(["generate", "--checkpoint", str(ckpt), *args])


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_new_flags_are_used_and_recorded_and_from_png_reproduces(tiny_ckpt, tmp_path, capsys):
    first = tmp_path / "first.png"
    assert _run(tiny_ckpt, "--prompt", "a (fox:1.2), ink", "--negative-prompt", "blurry", "--seed", "42", *SMALL,
                "--sampler", "euler_a", "--schedule", "karras", "--clip-skip", "2", "--rng", "nv",
                "--variation-seed", "5", "--variation-strength", "0.5", "--ensd", "31337", "--emphasis", "no_norm",
                "--out", str(first)) == 0
    with Image.open(first) as image:
        text = image.text["parameters"]
    for item in ("Sampler: Euler a", "Schedule type: Karras", "Seed: 42", "Variation seed: 5",
                 "Variation seed strength: 0.5", "Clip skip: 2", "ENSD: 31337", "RNG: NV", "Emphasis: No norm"):
        assert item in text, (item, text)
    meta = read_params(first)
    assert (meta.sampler, meta.schedule, meta.clip_skip, meta.rng, meta.ensd, meta.emphasis, meta.variation_seed,
            meta.variation_strength) == ("euler_a", "karras", 2, "nv", 31337, "no_norm", 5, 0.5)

    # every parameter from the PNG: the same image and the same metadata
    again = tmp_path / "again.png"
    assert _run(tiny_ckpt, "--from-png", str(first), "--out", str(again)) == 0
    assert "warning" not in capsys.readouterr().err
    assert read_params(again) == meta
    assert np.array_equal(_pixels(again), _pixels(first))

    # flags given override the file; the rest still comes from it
    other = tmp_path / "other.png"
    assert _run(tiny_ckpt, "--from-png", str(first), "--steps", "2", "--rng", "cpu", "--out", str(other)) == 0
    changed = read_params(other)
    assert (changed.steps, changed.rng, changed.seed, changed.clip_skip, changed.prompt) == (
        2, "cpu", 42, 2, "a (fox:1.2), ink")
    # a new sampler from the command line takes its own Automatic schedule, not the file's
    dpm = tmp_path / "dpm.png"
    assert _run(tiny_ckpt, "--from-png", str(first), "--sampler", "dpmpp_2m_sde", "--out", str(dpm)) == 0
    assert (read_params(dpm).sampler, read_params(dpm).schedule) == ("dpmpp_2m_sde", "exponential")


def test_legacy_sampler_name_and_variation_batches(tiny_ckpt, tmp_path):
    out = tmp_path / "old.png"
    assert _run(tiny_ckpt, "--prompt", "x", "--seed", "7", *SMALL, "--sampler", "dpmpp_2m_karras",
                "--batch-size", "2", "--variation-seed", "10", "--variation-strength", "0.25",
                "--out", str(out)) == 0
    metas = [read_params(tmp_path / f"old-{k}.png") for k in (1, 2)]
    # A1111: with a variation every image keeps the seed and the variation seed counts up
    assert [(m.seed, m.variation_seed, m.variation_strength) for m in metas] == [(7, 10, 0.25), (7, 11, 0.25)]
    assert {(m.sampler, m.schedule) for m in metas} == {("dpmpp_2m", "karras")}
    with Image.open(tmp_path / "old-1.png") as image:
        assert "Sampler: DPM++ 2M, Schedule type: Karras" in image.text["parameters"]


def test_from_png_warns_about_what_it_cannot_restore(tiny_ckpt, tmp_path, capsys):
    source = tmp_path / "a1111.png"
    text = ("a cat\nNegative prompt: dog\nSteps: 2, Sampler: Restart, Schedule type: Karras, CFG scale: 5, "
            "Seed: 3, Size: 64x64, Model: other, Version: v1.10.1")
    save_png(Image.new("RGB", (64, 64)), source, ImageParams.from_parameters_text(text))
    out = tmp_path / "out.png"
    assert _run(tiny_ckpt, "--from-png", str(source), "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert "warning: a1111.png: sampler 'Restart' is not available" in err
    assert "using sampler dpmpp_2m instead (give --sampler to choose)" in err
    meta = read_params(out)
    assert (meta.prompt, meta.negative_prompt, meta.steps, meta.cfg_scale, meta.seed, meta.sampler) == (
        "a cat", "dog", 2, 5.0, 3, "dpmpp_2m")
    assert meta.rng == "nv"  # no RNG field in an A1111 infotext means its GPU noise
    # an explicit --sampler: nothing replaced, no fallback line
    assert _run(tiny_ckpt, "--from-png", str(source), "--sampler", "heun", "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert "'Restart' is not available" in err and "instead" not in err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--out", "{tmp}/o.png"], "--prompt is required"),
        (["--from-png", "{tmp}/none.png", "--out", "{tmp}/o.png"], "no file at"),
        (["--from-png", "{tmp}/plain.png", "--out", "{tmp}/o.png"], "has no generation parameters"),
        (["--prompt", "x", "--schedule", "beta", "--out", "{tmp}/o.png"], "invalid choice"),
        (["--prompt", "x", "--rng", "gpu9", "--out", "{tmp}/o.png"], "invalid choice"),
        (["--prompt", "x", "--clip-skip", "13", "--out", "{tmp}/o.png"], "clip_skip"),
        (["--prompt", "x", "--variation-strength", "2", "--out", "{tmp}/o.png"], "variation_strength"),
        (["--prompt", "x", "--sampler", "dpmpp_2m_karras", "--schedule", "uniform", "--out", "{tmp}/o.png"],
         "already means the karras schedule"),
    ],
)
def test_bad_sampling_arguments_exit_2_with_one_line(tiny_ckpt, tmp_path, capsys, args, words):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    argv = [a.format(tmp=tmp_path) for a in args]
    try:
        code = _run(tiny_ckpt, *argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "o.png").exists()
