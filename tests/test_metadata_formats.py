"""Metadata written by other tools: one small fixture per format, written here in that tool's layout
(the real files in ../shared/metadata-corpus were used to check the layouts by hand; none is copied)."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from inkpunk_studio.metadata import ImageParams, encode_user_comment, read_params

_EXIF_IFD, _USER_COMMENT, _MAKE, _MODEL = 0x8769, 0x9286, 0x010F, 0x0110


def _image() -> Image.Image:
    return Image.linear_gradient("L").resize((24, 16)).convert("RGB")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(*chunks: bytes, **texts: str) -> bytes:
    """A PNG with ``texts`` as Pillow writes them, and raw ``chunks`` put before the pixels."""
    info = PngImagePlugin.PngInfo()
    for k, v in texts.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    _image().save(buf, "PNG", pnginfo=info)
    data = buf.getvalue()
    at = data.index(b"IDAT") - 4
    return data[:at] + b"".join(chunks) + data[at:]


def _saved(fmt: str, exif: Image.Exif | None = None, **kw: object) -> bytes:
    buf = io.BytesIO()
    if exif is not None:
        kw["exif"] = exif.tobytes()
    _image().save(buf, fmt, **kw)
    return buf.getvalue()


def _exif(comment: bytes | None = None, **ifd0: str) -> Image.Exif:
    exif = Image.Exif()
    for tag, value in ifd0.items():
        exif[{"make": _MAKE, "model": _MODEL}[tag]] = value
    if comment is not None:
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = comment
    return exif


def _graph(sampler: str = "euler_ancestral", scheduler: str = "karras", *, hires: bool = False) -> dict:
    """A ComfyUI API graph as ComfyUI's default workflow (and its hires variant) saves it."""
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15\\inkpunk-v2.safetensors"}},
        "skip": {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["ckpt", 1]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "ink fox, テスト", "clip": ["skip", 0]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["skip", 0]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 1}},
        "k1": {"class_type": "KSampler", "inputs": {
            "seed": 422847914351919, "steps": 20, "cfg": 5.0, "sampler_name": sampler, "scheduler": scheduler,
            "denoise": 1.0, "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": ["latent", 0]}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["k1", 0], "vae": ["ckpt", 2]}},
    }
    if hires:  # the second pass comes first in the file, as it may in any dict order
        g = {"k2": {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": 10, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.3,
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["enc", 0]}},
            "scale": {"class_type": "ImageScale", "inputs": {"width": 768, "height": 1152, "image": ["dec", 0]}},
            "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["scale", 0], "vae": ["ckpt", 2]}}, **g}
    return g


def _check_comfy(p: ImageParams | None) -> None:
    assert p is not None
    assert (p.prompt, p.negative_prompt, p.seed, p.steps, p.cfg_scale) == ("ink fox, テスト", "blurry",
                                                                           422847914351919, 20, 5.0)
    assert (p.sampler, p.schedule, p.width, p.height, p.strength) == ("euler_a", "karras", 512, 768, None)
    assert (p.clip_skip, p.rng, p.emphasis, p.model_name) == (2, "cpu", "comfy", "inkpunk-v2")


def test_comfyui_png() -> None:
    _check_comfy(read_params(_png(prompt=json.dumps(_graph()), workflow="{}")))


@pytest.mark.parametrize("fmt", ["WEBP", "JPEG"])
def test_comfyui_graph_in_exif_make_and_model(fmt: str) -> None:
    """ComfyUI's WebP saver writes 'prompt:{...}' and 'workflow:{...}' into the Make/Model tags."""
    exif = _exif(model="prompt:" + json.dumps(_graph()), make='workflow:{"nodes": []}')
    _check_comfy(read_params(_saved(fmt, exif)))


def test_comfyui_saveimage_plus_json_user_comment_in_ifd0() -> None:
    exif = Image.Exif()
    exif[_USER_COMMENT] = json.dumps({"prompt": _graph(), "workflow": {"nodes": []}})
    _check_comfy(read_params(_saved("JPEG", exif)))


def test_civitai_graph_in_user_comment() -> None:
    graph = {**_graph(), "extra": {"airs": []}, "extraMetadata": "{}"}
    _check_comfy(read_params(_saved("JPEG", _exif(encode_user_comment(json.dumps(graph))))))


def test_comfyui_hires_reads_the_first_pass_and_says_the_second_is_not_restored() -> None:
    p = read_params(_png(prompt=json.dumps(_graph(hires=True))))
    _check_comfy(p)
    assert p is not None and any("hires" in n for n in p.notes)
    assert (p.extra["Hires steps"], p.extra["Hires denoising strength"]) == ("10", "0.3")


@pytest.mark.parametrize(("name", "scheduler", "sampler", "schedule"), [
    ("dpmpp_2m_sde_gpu", "karras", None, "karras"),  # GPU Brownian noise: not something we can redo
    ("uni_pc_bh2", "normal", None, "normal"),
    ("dpmpp_2m", "beta", "dpmpp_2m", None),
    ("sample_dpmpp_2m", "normal", "dpmpp_2m", "normal"),  # very old ComfyUI graphs
    ("ddim", "ddim_uniform", "euler", None),  # ComfyUI's "ddim" runs k-diffusion Euler
])
def test_comfyui_names_we_lack_are_left_unset_and_noted(name: str, scheduler: str, sampler: str | None,
                                                         schedule: str | None) -> None:
    p = read_params(_png(prompt=json.dumps(_graph(name, scheduler))))
    assert p is not None and (p.sampler, p.schedule) == (sampler, schedule)
    assert len(p.notes) == (sampler is None) + (schedule is None)
    assert "dpmpp_2m_karras" not in (p.sampler, p.legacy_sampler)


def test_a1111_text_next_to_a_comfyui_graph_takes_the_graph_for_what_it_omits() -> None:
    """Stability Matrix: A1111-style text without Clip skip/RNG next to the ComfyUI graph it ran."""
    text = ("ink fox\nNegative prompt: blurry\nSteps: 20, Sampler: Euler Ancestral Karras, CFG scale: 5, "
            "Seed: 395309383, Size: 1024x1024, Model: inkpunk-v2.safetensors")
    p = read_params(_png(parameters=text, prompt=json.dumps(_graph())))
    assert p is not None and (p.sampler, p.schedule, p.seed) == ("euler_a", "karras", 395309383)
    assert (p.clip_skip, p.rng, p.emphasis) == (2, "cpu", "comfy")
    alone = read_params(_png(parameters=text))
    assert alone is not None and (alone.clip_skip, alone.rng, alone.emphasis) == (1, "nv", "original")


SWARM = {"sui_image_params": {"prompt": "ink fox, テスト", "negativeprompt": "blurry", "model": "inkpunk-v2",
                              "seed": 2083100758, "steps": 20, "cfgscale": 7.0, "width": 512, "height": 640,
                              "sampler": "euler_ancestral", "scheduler": "karras", "clipstopatlayer": -2,
                              "swarm_version": "0.9.7.4"},
         "sui_models": [{"name": "inkpunk-v2.safetensors", "param": "model", "hash": "0x22d8cb95"}]}


@pytest.mark.parametrize("where", ["png", "jpeg"])
def test_swarmui(where: str) -> None:
    text = json.dumps(SWARM, indent=2)
    blob = _png(parameters=text) if where == "png" else _saved("JPEG", _exif(encode_user_comment(text)))
    p = read_params(blob)
    assert p is not None
    assert (p.prompt, p.negative_prompt, p.seed, p.steps, p.cfg_scale) == ("ink fox, テスト", "blurry", 2083100758,
                                                                           20, 7.0)
    assert (p.sampler, p.schedule, p.width, p.height, p.clip_skip) == ("euler_a", "karras", 512, 640, 2)
    assert (p.model_name, p.model_hash, p.version, p.rng) == ("inkpunk-v2", "22d8cb95", "SwarmUI 0.9.7.4", "cpu")


def test_invokeai_2_sd_metadata_and_dream() -> None:
    prompt = "full body photo, (freckles), at night [rendering, glowing eyes]"
    meta = {"model_weights": "deliberate_v08", "model_hash": "56d1442a", "app_version": "2.3.0",
            "image": {"prompt": [{"prompt": prompt, "weight": 1.0}], "steps": 50, "cfg_scale": 5, "height": 768,
                      "width": 512, "seed": 2980747362, "type": "txt2img", "sampler": "k_lms"}}
    dream = f'"{prompt}" -s 50 -S 2980747362 -W 512 -H 768 -C 5 -A k_lms -G 0.9'
    for blob in (_png(**{"sd-metadata": json.dumps(meta), "Dream": dream}), _png(Dream=dream)):
        p = read_params(blob)
        assert p is not None
        assert (p.prompt, p.negative_prompt) == ("full body photo, (freckles), at night", "rendering, glowing eyes")
        assert (p.steps, p.cfg_scale, p.seed, p.width, p.height) == (50, 5.0, 2980747362, 512, 768)
        assert (p.sampler, p.schedule) == ("lms", "automatic")
    p = read_params(_png(**{"sd-metadata": json.dumps(meta)}))
    assert p is not None and (p.model_name, p.model_hash, p.version) == ("deliberate_v08", "56d1442a",
                                                                         "InvokeAI 2.3.0")


@pytest.mark.parametrize(("device", "rng"), [("cpu", "cpu"), ("cuda", "nv")])
def test_invokeai_metadata_noise_device(device: str, rng: str) -> None:
    meta = {"generation_mode": "txt2img", "positive_prompt": "テスト", "negative_prompt": "", "width": 512,
            "height": 512, "seed": 1, "rand_device": device, "cfg_scale": 6.0, "steps": 24, "scheduler": "euler_a",
            "model": {"name": "inkpunk", "hash": "blake3:7c16"}, "app_version": "6.10.0"}
    p = read_params(_png(invokeai_metadata=json.dumps(meta, ensure_ascii=False)))
    assert p is not None and (p.prompt, p.sampler, p.schedule, p.rng) == ("テスト", "euler_a", "automatic", rng)
    assert (p.strength, p.model_name, p.version) == (None, "inkpunk", "InvokeAI 6.10.0")


def test_novelai_comment() -> None:
    comment = {"prompt": "1girl, テスト", "steps": 28, "height": 1216, "width": 832, "scale": 5.0, "seed": 2043807047,
               "noise_schedule": "karras", "sampler": "k_euler_ancestral", "uc": "lowres"}
    p = read_params(_png(Software="NovelAI", Description="1girl", Comment=json.dumps(comment)))
    assert p is not None
    assert (p.prompt, p.negative_prompt, p.steps, p.cfg_scale, p.seed) == ("1girl, テスト", "lowres", 28, 5.0,
                                                                           2043807047)
    assert (p.sampler, p.schedule, p.width, p.height) == ("euler_a", "karras", 832, 1216)
    assert p.notes  # NovelAI's own model and noise: said, not hidden
    assert read_params(_png(Comment="a photo I took")) is None


def test_fooocus_gpu_sde_sampler_is_not_replaced() -> None:
    meta = {"prompt": "a goldfish", "negative_prompt": "", "steps": 30, "resolution": "(768, 1280)",
            "guidance_scale": 4, "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras", "seed": "6952411511246973023",
            "clip_skip": 2, "base_model": "juggernaut", "metadata_scheme": "fooocus", "version": "Fooocus v2.4.3"}
    p = read_params(_png(parameters=json.dumps(meta), fooocus_scheme="fooocus"))
    assert p is not None and (p.sampler, p.schedule, p.clip_skip) == (None, "karras", 2)
    assert (p.seed, p.width, p.height) == (6952411511246973023, 768, 1280)
    assert any("dpmpp_2m_sde_gpu" in n for n in p.notes)


def test_ruined_fooocus() -> None:
    meta = {"Prompt": "ink fox, テスト", "Negative": "blurry", "steps": 30, "cfg": 8, "width": 1024, "height": 768,
            "seed": 2020047614, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "base_model_name": "inkpunk-v2.safetensors", "base_model_hash": "BEFC694A", "loras": [],
            "denoise": None, "clip_skip": 1, "software": "RuinedFooocus"}
    p = read_params(_png(parameters=json.dumps(meta)))
    assert p is not None
    assert (p.prompt, p.negative_prompt, p.steps, p.cfg_scale, p.seed) == ("ink fox, テスト", "blurry", 30, 8.0,
                                                                           2020047614)
    assert (p.sampler, p.schedule, p.width, p.height) == ("dpmpp_2m", "karras", 1024, 768)
    assert (p.model_name, p.model_hash, p.version) == ("inkpunk-v2", "BEFC694A", "RuinedFooocus")


def test_tensorart_generation_data_and_its_graph() -> None:
    data = {"prompt": "ink fox, テスト", "negativePrompt": "blurry", "width": 512, "height": 512, "steps": 25,
            "cfgScale": 7, "seed": "-1", "clipSkip": 2, "etaNoiseSeedDelta": 31337, "ksamplerName": "euler_ancestral",
            "schedule": "karras", "baseModel": {"modelFileName": "inkpunk-v2", "hash": "A5F58EB1"}}
    # written as UTF-8 inside a tEXt chunk, as Tensor.Art does
    raw = _chunk(b"tEXt", b"generation_data\0" + json.dumps(data, ensure_ascii=False).encode())
    p = read_params(_png(raw))
    assert p is not None and (p.prompt, p.seed, p.clip_skip, p.ensd) == ("ink fox, テスト", None, 2, 31337)
    assert (p.sampler, p.schedule, p.model_name) == ("euler_a", "karras", "inkpunk-v2")
    graph = _graph()
    graph["k1"]["inputs"].update(ensd=31337, seed_mode="A1111", seed=3036459311)
    p = read_params(_png(raw, prompt=json.dumps(graph)))  # the graph knows the real seed
    assert p is not None and (p.seed, p.ensd, p.rng) == (3036459311, 31337, "nv")


def test_utf8_in_text_chunk_is_not_mojibake() -> None:
    text = "猫の絵, テスト\nNegative prompt: ぼやけ\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64"
    p = read_params(_png(_chunk(b"tEXt", b"parameters\0" + text.encode("utf-8"))))
    assert p is not None and (p.prompt, p.negative_prompt) == ("猫の絵, テスト", "ぼやけ")
    latin1 = "café\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64"
    p = read_params(_png(_chunk(b"tEXt", b"parameters\0" + latin1.encode("latin-1"))))
    assert p is not None and p.prompt == "café"


def test_exif_in_a_png_exif_chunk() -> None:
    text = "ink fox\nSteps: 12, Sampler: DDIM, CFG scale: 6, Seed: 9, Size: 512x512, Model hash: 3E15BA0038"
    exif = _exif(encode_user_comment(text)).tobytes()
    p = read_params(_png(_chunk(b"eXIf", exif.removeprefix(b"Exif\0\0"))))
    assert p is not None and (p.prompt, p.steps, p.sampler, p.seed, p.model_hash) == ("ink fox", 12, "ddim", 9,
                                                                                     "3E15BA0038")


def test_files_without_settings_give_none() -> None:
    assert read_params(_saved("JPEG", comment="GIMPで再保存しただけ".encode())) is None  # a GIMP re-save
    assert read_params(_saved("JPEG", comment=b"a holiday photo, Paris: 2019")) is None
    assert read_params(_saved("JPEG", _exif(make="Canon", model="EOS 5D"))) is None
    assert read_params(_saved("WEBP", _exif(encode_user_comment("just a caption")))) is None
    assert read_params(_png(Title="AI generated image", Software="NovelAI")) is None
    text = "ink fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64"
    p = read_params(_saved("JPEG", comment=text.encode()))  # settings in a JPEG comment do count
    assert p is not None and p.seed == 3


def test_parameters_after_a_chunk_over_one_mib_are_read() -> None:
    """Issue 11: a 2 MB workflow chunk before the parameters ended the search."""
    workflow = json.dumps({"nodes": ["x" * 100] * 25_000})
    assert len(workflow) > 2 << 20
    text = "ink fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64"
    big = _chunk(b"tEXt", b"workflow\0" + workflow.encode())
    z = _chunk(b"zTXt", b"workflow2\0\0" + zlib.compress(workflow.encode()))
    p = read_params(_png(big, z, _chunk(b"tEXt", b"parameters\0" + text.encode())))
    assert p is not None and p.seed == 3
