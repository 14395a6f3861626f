"""GenerationRequest validation and device/precision choice: clear errors, nothing silently fixed."""

import pytest
import torch
from PIL import Image

from engine.devices import cpu_has_native_bf16, resolve_device, resolve_dtype
from engine.request import GenerationRequest


def test_defaults_are_valid():
    req = GenerationRequest(prompt="nvinkpunk a fox")
    assert req.sampler == "dpmpp_2m" and req.schedule == "automatic" and req.resolved_schedule == "karras"
    assert (
        req.rng,
        req.clip_skip,
        req.emphasis,
        req.variation_seed,
        req.variation_strength,
        req.ensd,
        req.loras,
    ) == ("cpu", 1, "original", None, 0.0, 0, ())
    assert not req.is_img2img


def test_legacy_combined_sampler_names_keep_working():
    req = GenerationRequest(prompt="x", sampler="dpmpp_2m_karras")
    assert (req.sampler, req.schedule) == ("dpmpp_2m", "karras")
    assert GenerationRequest(prompt="x", sampler="dpmpp_2m_karras", schedule="karras").schedule == "karras"
    with pytest.raises(ValueError, match="already means the karras schedule"):
        GenerationRequest(prompt="x", sampler="dpmpp_2m_karras", schedule="exponential")
    req = GenerationRequest(prompt="x", sampler="ddim", schedule="karras")
    assert (req.schedule, req.resolved_schedule) == ("karras", "automatic")  # DDIM walks its own grid


def test_loras_are_path_and_weights():
    req = GenerationRequest(prompt="x", loras=[["a.safetensors", 0.8], ("b.safetensors", 1.0, 0.5)])
    assert req.loras == (("a.safetensors", 0.8), ("b.safetensors", 1.0, 0.5))
    for bad in ("a.safetensors", [("a.safetensors",)], [("a", "strong")], [(3, 1.0)]):
        with pytest.raises(ValueError, match="lora"):
            GenerationRequest(prompt="x", loras=bad)


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
        ("sampler", "plms", "dpmpp_2m"),
        ("sampler", None, "sampler"),
        ("schedule", "Karras", "unknown schedule"),
        ("rng", "cuda", "rng"),
        ("clip_skip", 0, "clip_skip"),
        ("clip_skip", 13, "clip_skip"),
        ("emphasis", "Original", "emphasis"),
        ("variation_seed", -5, "variation_seed"),
        ("variation_strength", 1.5, "variation_strength"),
        ("ensd", -1, "ensd"),
        ("ensd", 0.5, "ensd"),
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


def test_request_names_match_the_engine_modules():
    # request.py keeps torch- and lark-free copies; the modules that use the values must agree
    from engine import prompt, request, rng

    assert request.EMPHASIS_MODES == prompt.EMPHASIS_MODES
    assert set(request.RNG_SOURCES) == set(rng.RNG_SOURCES)
