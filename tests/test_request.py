"""GenerationRequest validation and device/precision choice: clear errors, nothing silently fixed."""

import pytest
import torch
from PIL import Image

from engine.devices import cpu_has_native_bf16, resolve_device, resolve_dtype
from engine.request import GenerationRequest


def test_defaults_are_valid():
    req = GenerationRequest(prompt="nvinkpunk a fox")
    assert req.sampler == "dpmpp_2m_karras" and not req.is_img2img


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("steps", 0, "steps"),
        ("steps", 1001, "steps"),
        ("steps", 2.5, "steps"),
        ("steps", True, "steps"),
        ("cfg_scale", -1, "cfg_scale"),
        ("cfg_scale", 51, "cfg_scale"),
        ("width", 500, "multiple of 8"),
        ("width", 56, "width"),
        ("height", 4096, "height"),
        ("seed", -1, "seed"),
        ("seed", 2**64, "seed"),
        ("sampler", "plms", "dpmpp_2m_karras"),
        ("batch_size", 0, "batch_size"),
        ("strength", 1.5, "strength"),
    ],
)
def test_bad_values_raise_clear_errors(field, value, words):
    with pytest.raises(ValueError, match=words):
        GenerationRequest(**{"prompt": "x", field: value})


def test_prompt_must_be_text():
    with pytest.raises(TypeError, match="strings"):
        GenerationRequest(prompt=None)


def test_init_image_must_match_size_and_run_a_step():
    image = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match="64x64 but the request is 128x64"):
        GenerationRequest(prompt="x", width=128, height=64, init_image=image)
    with pytest.raises(ValueError, match="no denoising step"):
        GenerationRequest(prompt="x", width=64, height=64, init_image=image, steps=10, strength=0.05)
    with pytest.raises(ValueError, match="PIL image"):
        GenerationRequest(prompt="x", width=64, height=64, init_image="photo.png")
    assert GenerationRequest(prompt="x", width=64, height=64, init_image=image, strength=0.5).is_img2img


def test_device_and_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        resolve_dtype("fp16", cpu)
    assert resolve_dtype("fp32", cpu) == (torch.float32, torch.float32)
    assert resolve_dtype("bf16", cpu) == (torch.bfloat16, torch.bfloat16)
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", cpu) == (expected, expected)
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_dtype("int8", cpu)
