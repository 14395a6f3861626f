"""Generation parameters in and out of image files, and the atomic writer underneath."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from inkpunk_studio import fileio
from inkpunk_studio.metadata import (
    ImageParams,
    decode_user_comment,
    exif_bytes,
    export_image,
    read_params,
    save_png,
)

A1111_TEXT = (
    "nvinkpunk portrait of a woman, (neon:1.2), detailed\n"
    "second line of the prompt\n"
    "Negative prompt: blurry, lowres\n"
    'Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, '
    'Model hash: 9a1b2c3d4e, Model: Inkpunk-Diffusion-v2, Denoising strength: 0.6, Clip skip: 2, '
    'Lora hashes: "ink: abc123, punk: def456", Version: v1.7.0'
)


def _image(size: tuple[int, int] = (32, 24)) -> Image.Image:
    return Image.linear_gradient("L").resize(size).convert("RGB")


def _png_with_text(**chunks: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    _image().save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_parse_known_a1111_string() -> None:
    p = ImageParams.from_parameters_text(A1111_TEXT)
    assert p is not None
    assert p.prompt == "nvinkpunk portrait of a woman, (neon:1.2), detailed\nsecond line of the prompt"
    assert p.negative_prompt == "blurry, lowres"
    assert (p.steps, p.sampler, p.schedule, p.cfg_scale, p.seed) == (30, "dpmpp_2m", "karras", 7.0, 1234567890)
    assert (p.width, p.height) == (512, 768)
    assert (p.model_hash, p.model_name, p.strength) == ("9a1b2c3d4e", "Inkpunk-Diffusion-v2", 0.6)
    assert (p.clip_skip, p.rng, p.version, p.lora_hashes) == (2, "nv", "v1.7.0", {"ink": "abc123", "punk": "def456"})
    assert p.extra == {} and p.legacy_sampler == "dpmpp_2m_karras"
    assert p.notes == ["Downcast alphas_cumprod (older A1111 behaviour) is not reproduced"]  # a v1.7 image


@pytest.mark.parametrize(
    ("sampler_part", "sampler", "schedule", "extra"),
    [
        ("Sampler: DPM++ 2M, Schedule type: Karras", "dpmpp_2m", "karras", {}),
        ("Sampler: DPM++ 2M, Schedule type: Automatic", "dpmpp_2m", "automatic", {}),
        ("Sampler: DPM++ 2M Karras", "dpmpp_2m", "karras", {}),  # legacy suffix
        ("Sampler: DPM++ 2M", "dpmpp_2m", "uniform", {}),  # no Schedule type: <= 1.8, unsuffixed meant Uniform
        ("Sampler: DPM++ 2M, Version: v1.10.1", "dpmpp_2m", "automatic", {}),
        ("Sampler: DPM++ 2M SDE Karras", "dpmpp_2m_sde", "karras", {}),
        ("Sampler: DPM++ 3M SDE Exponential", "dpmpp_3m_sde", "exponential", {}),
        ("Sampler: DPM2 a Karras", "dpm2_a", "karras", {}),
        ("Sampler: LMS Karras", "lms", "karras", {}),
        ("Sampler: k_dpmpp_2m_ka", "dpmpp_2m", "karras", {}),
        ("Sampler: Euler a", "euler_a", "uniform", {}),
        ("Sampler: Euler Ancestral Karras", "euler_a", "karras", {}),  # Stability Matrix's spelling
        ("Sampler: Heun, Schedule type: SGM Uniform", "heun", "sgm_uniform", {}),
        ("Sampler: DPM++ SDE, Schedule type: karras", "dpmpp_sde", "karras", {}),  # v1.8's lower-case field
        ("Sampler: DPM++ 2S a, Schedule type: Polyexponential", "dpmpp_2s_a", "polyexponential", {}),
        ("Sampler: DDIM", "ddim", "automatic", {}),
        ("Sampler: UniPC", "unipc", "automatic", {}),
        ("Sampler: DDPM", "ddpm", "automatic", {}),
        ("Sampler: euler_ancestral_karras", "euler_a", "karras", {}),  # ComfyUI's A1111-style savers
        ("Sampler: DPM++ 2M SDE Heun, Schedule type: Exponential", None, "exponential",
         {"Sampler": "DPM++ 2M SDE Heun"}),
        ("Sampler: Restart", None, None, {"Sampler": "Restart"}),
        ("Sampler: Euler, Schedule type: Align Your Steps", "euler", None, {"Schedule type": "Align Your Steps"}),
        ("Sampler: DPM++ 2M Beta", "dpmpp_2m", None, {"Schedule type": "Beta"}),
    ],
)
def test_sampler_names(sampler_part: str, sampler: str | None, schedule: str | None, extra: dict) -> None:
    p = ImageParams.from_parameters_text(f"a cat\n{sampler_part}, Steps: 20, CFG scale: 5, Seed: 1, Size: 64x64")
    assert p is not None and (p.sampler, p.schedule) == (sampler, schedule)
    assert {k: v for k, v in p.extra.items() if k != "Version"} == extra
    # what we could not restore is named, never replaced by something else
    assert bool(p.notes) == (sampler is None or schedule is None)
    if p.notes:
        assert any(("sampler" if sampler is None else "schedule") in n for n in p.notes)
    # and written back as it was read, so nothing is lost on a re-save
    again = ImageParams.from_parameters_text(p.to_parameters_text())
    assert again is not None and (again.sampler, again.schedule, again.extra) == (p.sampler, p.schedule, p.extra)


def test_hires_denoising_is_not_img2img_strength() -> None:
    p = ImageParams.from_parameters_text(
        "x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.7, "
        "Hires upscale: 2, Hires upscaler: Latent")
    assert p is not None and p.strength is None and p.extra["Denoising strength"] == "0.7"
    assert p.notes == []  # kept in extra: the window restores them (editing.hires_from_infotext)


def test_write_format() -> None:
    p = ImageParams(prompt="a cat", negative_prompt="", steps=20, sampler="euler_a", cfg_scale=7.5, seed=42,
                    width=512, height=640, model_name="Inkpunk-Diffusion-v2", model_hash="abcdef1234")
    assert p.to_parameters_text() == (
        "a cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, Size: 512x640, "
        "Model hash: abcdef1234, Model: Inkpunk-Diffusion-v2, RNG: CPU")
    p.negative_prompt, p.strength, p.extra = "ugly", 0.75, {"Clip skip": "3", "Note": 'say "hi", ok'}
    p.clip_skip = 2
    assert p.to_parameters_text().splitlines()[1:] == [
        "Negative prompt: ugly",
        ("Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, Size: 512x640, "
         'Model hash: abcdef1234, Model: Inkpunk-Diffusion-v2, Denoising strength: 0.75, Clip skip: 2, RNG: CPU, '
         'Note: "say \\"hi\\", ok"')]


@pytest.mark.parametrize(
    "params",
    [
        ImageParams(prompt="nvinkpunk, a cat, (red:1.3), \"quoted\", key: value", negative_prompt="a, b: c",
                    seed=7, sampler="ddim", strength=0.5, model_name="My, model: v2", model_hash="0123456789"),
        ImageParams(prompt="line one\nline two, with comma\n\nline four", negative_prompt="neg 1\nneg 2",
                    steps=1, cfg_scale=1.25, seed=0, width=64, height=2048, sampler="dpmpp_2m"),
        ImageParams(prompt="猫の絵, ñandú, emoji 🐈‍⬛, Ωμέγα", negative_prompt="日本語", seed=2**32 - 1,
                    sampler="euler", clip_skip=2, extra={"Weird": "a, \"b\": c\nd"}),
        ImageParams(prompt="", negative_prompt="only negative", seed=None),
        ImageParams(prompt="Steps: 3, Sampler: Euler, CFG scale: 5", seed=5),
    ],
)
def test_round_trip_text_png_jpeg_webp(tmp_path: Path, params: ImageParams) -> None:
    assert ImageParams.from_parameters_text(params.to_parameters_text()) == params
    png = save_png(_image(), tmp_path / "a.png", params)
    assert read_params(png) == params
    assert read_params(png.read_bytes()) == params
    with Image.open(png) as img:
        assert read_params(img) == params
    for fmt in ("JPEG", "WEBP"):
        out = export_image(png, tmp_path / f"a.{fmt.lower()}", fmt)
        assert read_params(out) == params, fmt
        with Image.open(out) as img:
            assert img.format == fmt


def test_exif_user_comment_is_a1111_layout() -> None:
    text = ("a cat, ünïcode\nSteps: 20, Sampler: Euler, Schedule type: Uniform, CFG scale: 7, Seed: 1, Size: 64x64, "
            "RNG: NV")
    buf = io.BytesIO()
    _image().save(buf, "JPEG", exif=exif_bytes(ImageParams.from_parameters_text(text)))
    raw = Image.open(io.BytesIO(buf.getvalue())).getexif().get_ifd(0x8769)[0x9286]
    assert raw.startswith(b"UNICODE\0") and raw[8:].decode("utf-16-be") == text
    # little-endian and ASCII-prefixed comments from other writers read too
    assert decode_user_comment(b"UNICODE\0" + text.encode("utf-16-le")) == text
    assert decode_user_comment(b"ASCII\0\0\0hello") == "hello"


def test_export_png_keeps_parameters_and_rejects_unknown_format(tmp_path: Path) -> None:
    params = ImageParams(prompt="keep me", seed=3)
    src = save_png(_image(), tmp_path / "src.png", params)
    assert read_params(export_image(src, tmp_path / "copy.png")) == params
    with pytest.raises(ValueError, match="unsupported"):
        export_image(src, tmp_path / "x.bmp")


def test_comfyui_prompt_graph() -> None:
    graph = {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 156680208700286, "steps": 20, "cfg": 8.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15/Inkpunk-Diffusion-v2.ckpt"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 640, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": ["10", 0], "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "bad hands, blurry", "clip": ["4", 1]}},
        "10": {"class_type": "PrimitiveString", "inputs": {"value": "nvinkpunk, a fox, neon"}},
    }
    p = read_params(_png_with_text(prompt=json.dumps(graph), workflow="{}"))
    assert p is not None
    assert (p.prompt, p.negative_prompt) == ("nvinkpunk, a fox, neon", "bad hands, blurry")
    assert (p.seed, p.steps, p.cfg_scale, p.sampler, p.schedule) == (156680208700286, 20, 8.0, "dpmpp_2m", "karras")
    assert (p.rng, p.emphasis, p.clip_skip) == ("cpu", "comfy", 1)
    assert (p.width, p.height, p.strength, p.model_name) == (512, 640, None, "Inkpunk-Diffusion-v2")
    graph["3"]["inputs"].update(sampler_name="euler_ancestral", scheduler="normal", denoise=0.55)
    p = read_params(_png_with_text(prompt=json.dumps(graph)))
    assert p is not None and (p.sampler, p.schedule, p.strength) == ("euler_a", "normal", 0.55)


def test_invokeai_metadata() -> None:
    meta = {"generation_mode": "img2img", "positive_prompt": "a lighthouse, ink", "negative_prompt": "people",
            "width": 768, "height": 512, "seed": 99, "steps": 35, "cfg_scale": 6.5, "scheduler": "dpmpp_2m_k",
            "strength": 0.4, "model": {"model_name": "inkpunk", "hash": "blake3:abc"}}
    p = read_params(_png_with_text(invokeai_metadata=json.dumps(meta)))
    assert p is not None
    assert (p.prompt, p.negative_prompt, p.width, p.height) == ("a lighthouse, ink", "people", 768, 512)
    assert (p.seed, p.steps, p.cfg_scale, p.sampler, p.schedule, p.strength) == (99, 35, 6.5, "dpmpp_2m", "karras",
                                                                                 0.4)
    assert (p.model_name, p.model_hash) == ("inkpunk", "blake3:abc")


def test_fooocus_json_scheme() -> None:
    meta = {"prompt": "a robot", "negative_prompt": "", "steps": 30, "resolution": "(896, 1152)",
            "guidance_scale": 4.0, "sampler": "dpmpp_2m", "scheduler": "karras", "seed": "12345",
            "base_model": "juggernaut", "metadata_scheme": "fooocus", "version": "Fooocus v2.5.0"}
    p = read_params(_png_with_text(parameters=json.dumps(meta), fooocus_scheme="fooocus"))
    assert p is not None
    assert (p.prompt, p.steps, p.width, p.height, p.cfg_scale) == ("a robot", 30, 896, 1152, 4.0)
    assert (p.sampler, p.schedule, p.seed, p.model_name) == ("dpmpp_2m", "karras", 12345, "juggernaut")
    assert p.version == "Fooocus v2.5.0"


@pytest.mark.parametrize(
    "blob",
    [
        b"", b"not an image", b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfftEXt",
        _png_with_text(parameters="Steps: x, Sampler: ??, CFG scale: nan, Seed: 1e99999, Size: -1x0"),
        _png_with_text(parameters='{"prompt": ["not", "a", "string"], "steps": {}}'),
        _png_with_text(prompt='{"1": {"class_type": "KSampler", "inputs": {"positive": ["1", 0], "seed": []}}}'),
        _png_with_text(prompt="[1, 2, 3]"), _png_with_text(prompt="just a plain prompt text"),
        _png_with_text(invokeai_metadata='{"seed": "abc", "width": null, "model": 5, "strength": "x"}'),
        _png_with_text(invokeai_metadata="{broken json"),
        _png_with_text(parameters='x\nSteps: 2, Sampler: "unterminated, CFG scale: 3, Size: 9'),
    ],
)
def test_malformed_never_raises(blob: bytes) -> None:
    p = read_params(blob)
    assert p is None or isinstance(p, ImageParams)
    if p is not None:
        p.to_parameters_text()  # and whatever was recognised can be written again


def test_no_metadata_is_none(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    _image().save(path)
    assert read_params(path) is None
    assert read_params(tmp_path / "does-not-exist.png") is None
    assert ImageParams.from_parameters_text("") is None
    assert ImageParams.from_parameters_text(None) is None  # type: ignore[arg-type]


def test_text_after_idat_and_compressed_itxt(tmp_path: Path) -> None:
    """Metadata chunks may come after the pixels and be zlib-compressed; both are found."""
    text = ImageParams(prompt="späte Notiz", seed=11).to_parameters_text()
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", text, zip=True)
    buf = io.BytesIO()
    _image().save(buf, "PNG", pnginfo=info)
    data = buf.getvalue()
    # move the iTXt chunk after IDAT
    start = data.index(b"iTXt") - 4
    length = int.from_bytes(data[start:start + 4], "big")
    chunk = data[start:start + 12 + length]
    data = data[:start] + data[start + 12 + length:]
    iend = data.index(b"IEND") - 4
    data = data[:iend] + chunk + data[iend:]
    p = read_params(data)
    assert p is not None and p.prompt == "späte Notiz" and p.seed == 11


def test_atomic_write(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    assert fileio.atomic_write_bytes(target, b"first") == target
    fileio.atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_failure_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        fileio.atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    blocker = tmp_path / "a-dir-now"  # os.replace onto a non-empty folder fails after the temp was written
    blocker.mkdir()
    (blocker / "f").write_bytes(b"")
    with pytest.raises(OSError):
        fileio.atomic_write_bytes(blocker, b"x")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir-now", "out.bin"]


def test_remove_stale_temp_files(tmp_path: Path) -> None:
    old = tmp_path / ".tmp-a.png.1234"
    new = tmp_path / ".tmp-b.png.5678"
    keep = tmp_path / "c.png"
    for p in (old, new, keep):
        p.write_bytes(b"x")
    os.utime(old, (1, 1))
    assert fileio.remove_stale_temp_files(tmp_path, older_than=60) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [new.name, keep.name]


def test_display_names_match_the_engine() -> None:
    """metadata keeps its own table so reading never imports torch (and names samplers an engine may lack);
    every sampler the engine has is in it, under the engine's own label."""
    from engine.names import DISPLAY_NAMES as ENGINE_NAMES
    from inkpunk_studio.metadata import DISPLAY_NAMES

    assert ENGINE_NAMES.items() <= DISPLAY_NAMES.items()


def test_inpainting_keys_round_trip_as_a1111_writes_them() -> None:
    """A1111 v1.10 (processing.py, StableDiffusionProcessingImg2Img.init) writes Mask blur (only above 0),
    Inpaint area and Masked area padding ("Only masked"), then Masked content (not for "original")."""
    from PIL import Image

    from inkpunk_studio import editing
    from inkpunk_studio.worker import GenerationParams

    text = ("x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.75, "
            "Mask blur: 6, Inpaint area: Only masked, Masked area padding: 48, Masked content: latent noise")
    p = ImageParams.from_parameters_text(text)
    assert p is not None and p.notes == [] and p.strength == 0.75
    assert editing.is_inpainting(p.extra)
    assert editing.inpaint_from_infotext(p.extra) == (
        {"only_masked": True, "mask_padding": 48, "mask_blur": 6, "masked_content": "latent noise"}, [])
    again = ImageParams.from_parameters_text(p.to_parameters_text())
    assert again is not None and list(again.extra.items()) == list(p.extra.items())
    # no Mask blur on an inpainting image: A1111 had 0; no Masked content: "original"; no area: whole picture
    assert editing.inpaint_from_infotext({"Masked content": "fill"}) == (
        {"only_masked": False, "mask_blur": 0, "masked_content": "fill"}, [])
    # a picture that was not inpainted leaves blur and content alone (and turns Only masked off)
    assert editing.inpaint_from_infotext({}) == ({"only_masked": False}, []) and not editing.is_inpainting({})
    assert editing.inpaint_from_infotext({"Mask blur": "soft"}) == (
        {"only_masked": False, "masked_content": "original"}, ["Mask blur 'soft' is not a usable value"])

    image, mask = Image.new("RGB", (64, 64)), Image.new("L", (64, 64), 255)
    ours = GenerationParams(prompt="x", width=64, height=64, init_image=image, mask=mask, mask_blur=3,
                            masked_content="latent nothing", only_masked=True, mask_padding=16)
    assert list(ours.image_params(seed=1).extra.items()) == [
        ("Mask blur", "3"), ("Inpaint area", "Only masked"), ("Masked area padding", "16"),
        ("Masked content", "latent nothing")]
    ours.mask_blur, ours.masked_content, ours.only_masked = 0, "original", False
    assert ours.image_params(seed=1).extra == {}  # A1111 writes nothing for these defaults
