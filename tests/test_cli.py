"""The command line: a real tiny checkpoint in, a PNG with A1111 parameters out; bad arguments exit 2."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.testing import write_random_checkpoint
from inkpunk_studio.cli import main
from inkpunk_studio.metadata import read_params

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("cli") / "tiny-model.safetensors")


def test_generate_writes_png_with_parameters(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "fox.png"
    code = main(["generate", "--checkpoint", str(tiny_ckpt), "--prompt", "nvinkpunk a fox, ink", "--seed", "42",
                 "--steps", "3", "--width", "64", "--height", "64", "--negative-prompt", "blurry",
                 "--sampler", "euler", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "3/3" in captured.err  # the progress bar reached the end
    assert f"wrote {out}" in captured.out
    with Image.open(out) as image:
        assert image.size == (64, 64)
        text = image.text["parameters"]
    assert text.startswith("nvinkpunk a fox, ink\nNegative prompt: blurry\nSteps: 3, Sampler: Euler, "
                           "Schedule type: Automatic, CFG scale: 7.5, ")
    assert "Seed: 42, Size: 64x64, Model hash: " in text and text.endswith("Model: tiny-model, RNG: CPU")
    params = read_params(out)
    assert (params.seed, params.steps, params.sampler, params.width) == (42, 3, "euler", 64)


def test_img2img_from_cli(tiny_ckpt, tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGB", (100, 80), (200, 30, 90)).save(src)  # resized/cropped to the requested size
    out = tmp_path / "out.png"
    code = main(["--checkpoint", str(tiny_ckpt), "--prompt", "x", "--steps", "4", "--width", "64",
                 "--height", "64", "--init-image", str(src), "--strength", "0.5", "--out", str(out)])
    assert code == 0
    assert read_params(out).strength == 0.5


@pytest.mark.parametrize(
    "args, words",
    [
        (["--steps", "0"], "steps"),
        (["--width", "65"], "multiple of 8"),
        (["--sampler", "plms"], "invalid choice"),
        (["--cfg", "abc"], "invalid float"),
        (["--out", "x.jpg"], ".png"),
    ],
)
def test_bad_arguments_one_line_exit_2(tiny_ckpt, tmp_path, capsys, args, words):
    base = {"--checkpoint": str(tiny_ckpt), "--prompt": "x", "--out": str(tmp_path / "o.png")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = [item for pair in base.items() for item in pair]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and words in err
    assert not (tmp_path / "o.png").exists()


def test_missing_and_broken_checkpoints(tmp_path, capsys):
    out = tmp_path / "o.png"
    assert main(["--checkpoint", str(tmp_path / "nope.ckpt"), "--prompt", "x", "--out", str(out)]) == 2
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    assert main(["--checkpoint", str(junk), "--prompt", "x", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("inkpunk generate: error:") for line in err)
    assert not out.exists()


def test_main_py_routes_generate(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "generate", "--prompt", "x"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--checkpoint" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
