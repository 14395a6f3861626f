"""Checkpoint files -> state dict -> the three SD1.x models.

Loading is a prefix table (`PREFIXES`) plus a short list of documented exceptions, then
`load_state_dict(strict=True)`: our module names are the LDM checkpoint's own names.

Exceptions to a plain prefix strip:
  * the older text-encoder layout `cond_stage_model.transformer.embeddings...` (no `text_model.`);
  * VAE attention q/k/v/proj_out saved as 2-D Linear weights [C, C] by diffusers-to-LDM converters
    (reshaped to the 1x1 convs [C, C, 1, 1]);
  * keys real files carry that are not weights we use: EMA copies, the noise schedule (outside the
    prefixes, dropped) and `position_ids` (`IGNORED`).

Pickled `.ckpt` files are read only by `torch.load(weights_only=True)`: never a fallback to full unpickling.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import mmap
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.attention import fuse_projections, fusion_groups
from engine.clip import TextEncoder
from engine.config import TextEncoderConfig, UNetConfig, VAEConfig
from engine.devices import prefers_channels_last
from engine.errors import CheckpointError
from engine.unet import UNet
from engine.vae import VAE

log = logging.getLogger(__name__)

# (file prefix, module prefix) per model; the first matching row wins.
PREFIXES: dict[str, list[tuple[str, str]]] = {
    "unet": [("model.diffusion_model.", "")],
    "vae": [("first_stage_model.", "")],
    "text_encoder": [
        ("cond_stage_model.transformer.text_model.", "text_model."),
        ("cond_stage_model.transformer.", "text_model."),  # transformers < 4.2 layout, no `text_model.`
    ],
}

# Keys under a model prefix that are not weights (always recomputed): dropped before the strict load.
IGNORED = re.compile(r"(^|\.)position_ids$")

# Globals that training frameworks pickle next to the weights (PyTorch Lightning's ModelCheckpoint callback
# state, numpy scalars in its "best score"). They are replaced by an inert stub, never imported or run.
METADATA_GLOBALS = re.compile(r"^(pytorch_lightning|lightning|lightning_fabric)\.|^numpy\.|^_codecs\.encode$")

# VAE attention: 1x1 convs, stored as [C, C] Linear weights by diffusers-to-LDM converters.
_VAE_ATTN = re.compile(r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}


@dataclass
class LoadedModels:
    text_encoder: TextEncoder
    unet: UNet
    vae: VAE
    text_encoder_config: TextEncoderConfig
    unet_config: UNetConfig
    vae_config: VAEConfig
    path: Path


class _Inert:
    """Stands in for a pickled metadata object: accepts any construction and state, does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def check_checkpoint_path(path: Path) -> None:
    """Raise CheckpointError unless ``path`` is a regular file, saying what is there instead.

    A folder or a FIFO given as the checkpoint would otherwise read as "no file", which sends the person
    looking for a file that is not missing.
    """
    if path.is_file():
        return
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if path.exists():
        raise CheckpointError(f"{path} is not a regular file (a pipe, socket or device), not a checkpoint file")
    raise CheckpointError(f"no checkpoint file at {path} (no such file or folder)")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.safetensors` or pickled `.ckpt`/`.pt` file into a flat {name: tensor} dict (memory-mapped).

    A `{"state_dict": {...}}` wrapper is unwrapped. Raises CheckpointError for anything unreadable.
    """
    path = Path(path)
    check_checkpoint_path(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name}: the file is empty")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state = _read_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        state = _read_pickle(path)
    else:
        raise CheckpointError(
            f"{path.name}: unsupported file type {suffix!r} (expected .ckpt or .safetensors)"
        )
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name}: holds a {type(state).__name__}, not a state dict")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path.name}: contains no tensors")
    return tensors


# safetensors dtype names -> torch dtypes (the ones a Stable Diffusion file can hold).
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Memory-map a .safetensors file: tensors are views of the file's pages, nothing is read up front.

    The format (huggingface/safetensors): an 8-byte little-endian header length, a JSON header
    {name: {"dtype", "shape", "data_offsets": [begin, end]}}, then the data. safetensors' own `load_file`
    copies every tensor into RAM first, so converting an fp16 file to bf16 would need file + model in memory;
    mapped, each tensor is paged in when the loader converts it, like `torch.load(mmap=True)` for .ckpt.
    """
    size = path.stat().st_size

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path.name}: not a readable safetensors file ({why}); is it truncated?")

    try:
        with path.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or 8 + n > size:
                raise bad("header length out of range")
            header = json.loads(f.read(n))
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 8 + n else b""
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise bad(str(e)) from e
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_size = size - 8 - n
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"bad entry for {name!r}: {e}") from e
        count = math.prod(shape)
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size:
            raise bad(f"{name!r} lies outside the file")
        if end - begin != count * dtype.itemsize:
            raise bad(f"{name!r}: {end - begin} bytes for shape {shape}")
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        raw = torch.frombuffer(buffer, dtype=torch.uint8, count=end - begin, offset=8 + n + begin)
        if (8 + n + begin) % dtype.itemsize:
            raw = raw.clone()  # unaligned (never written so by safetensors itself): copy this one tensor
        tensors[name] = raw.view(dtype).view(shape)
    return tensors


def _read_pickle(path: Path) -> Any:
    with path.open("rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path.name}: the zip archive is damaged (truncated download?)")
    # Files from before torch 1.6 are not zip archives and cannot be memory-mapped; still weights_only.
    mmap = is_zip

    def load() -> Any:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            return load()
        except (pickle.UnpicklingError, RuntimeError) as first:
            extra = _metadata_globals(path, first)
            if not extra:
                raise
            log.info("%s: ignoring pickled metadata objects %s", path.name, ", ".join(extra))
            with torch.serialization.safe_globals([(_Inert, name) for name in extra]):
                return load()
    except CheckpointError:
        raise
    except Exception as e:  # any failure of the restricted unpickler means a bad file
        raise CheckpointError(
            f"{path.name}: cannot be read safely as a PyTorch checkpoint: {_short(e)}"
        ) from e


def _metadata_globals(path: Path, error: BaseException) -> list[str]:
    """The non-tensor globals the file needs, if all of them are harmless training metadata; else raise."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:
        raise CheckpointError(
            f"{path.name}: cannot be read safely as a PyTorch checkpoint: {_short(error)}"
        ) from e
    unsafe = [n for n in names if not METADATA_GLOBALS.search(n)]
    if unsafe:
        raise CheckpointError(
            f"{path.name}: refused: the pickle calls {', '.join(unsafe[:5])}, which a weights file never "
            "needs (possibly malicious); nothing from it was run"
        )
    return names


def _short(e: BaseException) -> str:
    """The informative line of a torch.load error (not its advice to retry with the unsafe unpickler)."""
    text = str(e)
    if m := re.search(r"(?:unsupported )?GLOBAL ([\w.]+)", text, re.IGNORECASE):
        return (
            f"refused: the pickle calls {m.group(1)}, which a weights file never needs (possibly malicious)"
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    return (lines[0] if lines else type(e).__name__)[:300]


def split_state_dict(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"unet"|"vae"|"text_encoder": module state dict} by the prefix table; other keys are dropped."""
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in PREFIXES}
    for name, rows in PREFIXES.items():
        for file_prefix, module_prefix in rows:
            found = {k[len(file_prefix) :]: v for k, v in state.items() if k.startswith(file_prefix)}
            if found:
                parts[name] = {module_prefix + k: v for k, v in found.items() if not IGNORED.search(k)}
                break
    for k, v in list(parts["vae"].items()):
        if _VAE_ATTN.match(k) and v.ndim == 2:
            parts["vae"][k] = v[:, :, None, None]
    return parts


def identify(state: dict[str, torch.Tensor]) -> str | None:
    """A short description of what a non-SD1.x state dict is, or None if it looks like SD1.x."""
    keys = list(state)
    if not keys:
        return "an empty file"
    if any("lora_" in k or ".lora." in k or k.startswith("lora") for k in keys):
        return "a LoRA file (lora_* keys), not a full model; load it on top of a checkpoint instead"
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "an SDXL checkpoint (conditioner.embedders.*): only Stable Diffusion 1.x is supported"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder cond_stage_model.model.*)"
    has_unet = any(k.startswith("model.diffusion_model.") for k in keys)
    vae_only = any(k.startswith(("first_stage_model.", "encoder.", "decoder.")) for k in keys)
    if not has_unet:
        if vae_only:
            return "a VAE-only file (no UNet or text encoder)"
        return f"not a Stable Diffusion checkpoint ({len(keys)} tensors, e.g. {', '.join(keys[:3])})"
    conv_in = state.get("model.diffusion_model.input_blocks.0.0.weight")
    # 9 channels: an inpainting UNet (sd-v1-5-inpainting), conditioned on the mask and the masked image's
    # latents (engine.inpaint); other widths need conditioning we do not provide.
    if conv_in is not None and conv_in.ndim == 4 and conv_in.shape[1] not in (4, 9):
        c = conv_in.shape[1]
        kind = {9: "an inpainting", 8: "an instruct-pix2pix", 5: "a depth-conditioned"}.get(
            c, "a non-standard"
        )
        return f"{kind} UNet ({c} input channels); only 4-channel and 9-channel (inpainting) SD1.x UNets are supported"
    if any(k.startswith("model.diffusion_model.label_emb.") for k in keys):
        return "a class-conditioned UNet (label_emb, e.g. SD2 unCLIP/upscaler), not SD1.x"
    k = state.get("model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight")
    if k is not None and k.ndim == 2 and k.shape[1] == 1024:
        return "a Stable Diffusion 2.x checkpoint (1024-wide text context)"
    p = state.get("model.diffusion_model.input_blocks.1.1.proj_in.weight")
    if p is not None and p.ndim == 2:
        return "a Stable Diffusion 2.x checkpoint (linear proj_in)"
    return None


def infer_configs(
    parts: dict[str, dict[str, torch.Tensor]],
) -> tuple[TextEncoderConfig, UNetConfig, VAEConfig]:
    for name, what in (
        ("unet", "UNet (model.diffusion_model.*)"),
        ("vae", "VAE (first_stage_model.*)"),
        ("text_encoder", "text encoder (cond_stage_model.transformer.*)"),
    ):
        if not parts[name]:
            raise CheckpointError(f"incomplete SD1.x checkpoint: no {what} weights")
    try:
        te = TextEncoderConfig.from_state_dict(parts["text_encoder"])
        unet = UNetConfig.from_state_dict(parts["unet"])
        vae = VAEConfig.from_state_dict(parts["vae"])
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"unrecognised SD1.x layout: missing or odd tensor {e}") from e
    if unet.context_dim != te.width:
        raise CheckpointError(
            f"UNet context width {unet.context_dim} does not match text encoder width {te.width}"
        )
    if unet.in_channels not in (4, 9) or unet.out_channels != 4 or vae.embed_dim != 4:
        raise CheckpointError(
            f"expected 4 latent channels (9 UNet inputs for inpainting), found UNet {unet.in_channels} in / "
            f"{unet.out_channels} out, VAE {vae.embed_dim}"
        )
    return te, unet, vae


_HUGE_PAGE = 2 << 20
_madvise: Any = None


def advise_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """Ask Linux to back a new, untouched CPU tensor with 2 MiB pages (MADV_HUGEPAGE); returns `t`.

    A model's weights are gigabytes of fresh memory, and on Linux's default 4 KiB pages merely faulting them
    in costs about as much as reading the checkpoint (one fault per page). With transparent huge pages in
    "madvise" mode (most distributions), advised memory faults in 2 MiB at a time: an fp32 SD1.5 load makes
    0.17 M page faults instead of 1.05 M, and filling 3.4 GiB of new weights was 15-20% faster in repeated
    A/B runs (docs/benchmarks.md). Only the 2 MiB-aligned interior is advised. A no-op elsewhere (other OSes,
    CUDA, small tensors, THP disabled).
    """
    global _madvise
    if t.device.type != "cpu" or t.nbytes < 2 * _HUGE_PAGE or not sys.platform.startswith("linux"):
        return t
    if _madvise is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _madvise = libc.madvise
            _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError):
            _madvise = False
    if _madvise:
        start = -(-t.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        end = (t.data_ptr() + t.nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            _madvise(start, end - start, 14)  # MADV_HUGEPAGE; failure just leaves 4 KiB pages
    return t


class _Converter:
    """Copies file tensors into new model tensors of the target device, dtype and memory layout.

    Always a copy, even where the dtype already matches: the model must not keep the file's mapped pages
    (it would change if the file did, and Windows would keep the file locked). On the CPU, fp16 -> bf16 goes
    through a small fp32 scratch buffer, a few hundred thousand elements at a time, so both halves run
    vectorised in cache (measured on SD1.5: 0.3 ns per weight instead of 0.6-4 ns for PyTorch's direct copy).
    """

    CHUNK = 1 << 18  # elements per scratch pass: 1 MiB of fp32, stays in L2

    def __init__(self, device: torch.device, dtype: torch.dtype, channels_last: bool):
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.scratch = torch.empty(self.CHUNK) if device.type == "cpu" else None

    def __call__(self, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """v converted into `out` (default: a new tensor; channels_last for 4-D weights if so configured)."""
        dtype = self.dtype if v.is_floating_point() else v.dtype
        cl = self.channels_last and v.ndim == 4
        if out is None:
            fmt = torch.channels_last if cl else torch.contiguous_format
            out = advise_huge_pages(torch.empty(v.shape, dtype=dtype, device=self.device, memory_format=fmt))
        cl = cl and out.is_contiguous(memory_format=torch.channels_last)
        if self.scratch is None or not (v.dtype == torch.float16 and dtype == torch.bfloat16) or v.ndim == 0:
            return out.copy_(v)
        # Walk both in the output's memory order (NHWC for channels_last), whole rows of dim 0 at a time.
        src, dst = (v.permute(0, 2, 3, 1), out.permute(0, 2, 3, 1)) if cl else (v, out)
        row = max(1, src[0].numel()) if src.ndim > 1 else 1
        step = max(1, self.CHUNK // row)
        for i in range(0, src.shape[0], step):
            part = src[i : i + step]
            tmp = self.scratch[: part.numel()].view(part.shape)
            dst[i : i + step].copy_(tmp.copy_(part))
        return out


def build(
    module_cls: type[nn.Module],
    cfg: Any,
    state: dict[str, torch.Tensor],
    *,
    device: torch.device,
    dtype: torch.dtype,
    what: str,
) -> nn.Module:
    """Construct on the meta device (no memory), then adopt the converted tensors directly (assign=True).

    Inference layout: conv weights channels_last where the device runs it faster (see devices.py), so the
    activations follow; attention projections fused (see attention.FusedProjection; state dict keys unchanged).
    """
    with torch.device("meta"):
        module = module_cls(cfg)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    bad = [k for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{what}: shape mismatch for {k}: file {tuple(state[k].shape)}, "
            f"model {tuple(expected[k].shape)} ({len(bad)} mismatches)"
        )
    # Convert one tensor at a time and drop the file's (memory-mapped) copy as we go: one copy of each
    # weight, made straight into the layout it runs in; peak memory stays ~ one model. Layers that will run
    # as one matmul (attention q/k/v) are converted into consecutive rows of one tensor.
    convert = _Converter(device, dtype, prefers_channels_last(device))
    converted = {}
    for names, _ in fusion_groups(module):
        for kind in ("weight", "bias"):
            keys = [f"{n}.{kind}" for n in names]
            if not all(k in state for k in keys):
                continue
            shapes = [state[k].shape for k in keys]
            rows = sum(shape[0] for shape in shapes)
            fused = advise_huge_pages(torch.empty((rows, *shapes[0][1:]), dtype=dtype, device=device))
            start = 0
            for k, shape in zip(keys, shapes):
                converted[k] = convert(state.pop(k), out=fused[start : start + shape[0]])
                start += shape[0]
    for k in list(state):
        converted[k] = convert(state.pop(k))
    del convert
    module.load_state_dict(converted, strict=True, assign=True)
    del converted
    fuse_projections(module)
    return module.eval().requires_grad_(False)


def load_models(
    path: str | Path, *, device: torch.device | str, dtype: torch.dtype, vae_dtype: torch.dtype | None = None
) -> LoadedModels:
    """Read an SD1.x checkpoint and build its text encoder, UNet and VAE on `device` in `dtype`.

    `vae_dtype` (default: `dtype`) lets the VAE run in fp32/bf16 while the rest is fp16.
    Raises CheckpointError.
    """
    path = Path(path)
    device = torch.device(device)
    state = read_state_dict(path)
    what = identify(state)
    if what is not None:
        raise CheckpointError(f"{path.name}: {what}")
    parts = split_state_dict(state)
    del state
    try:
        te_cfg, unet_cfg, vae_cfg = infer_configs(parts)
    except CheckpointError as e:
        raise CheckpointError(f"{path.name}: {e}") from e
    log.info("%s: text encoder %s, UNet %s, VAE %s", path.name, te_cfg, unet_cfg, vae_cfg)
    try:
        te = build(
            TextEncoder, te_cfg, parts.pop("text_encoder"), device=device, dtype=dtype, what="text encoder"
        )
        unet = build(UNet, unet_cfg, parts.pop("unet"), device=device, dtype=dtype, what="UNet")
        vae = build(VAE, vae_cfg, parts.pop("vae"), device=device, dtype=vae_dtype or dtype, what="VAE")
    except CheckpointError as e:
        raise CheckpointError(f"{path.name}: {e}") from e
    return LoadedModels(te, unet, vae, te_cfg, unet_cfg, vae_cfg, path)  # type: ignore[arg-type]
