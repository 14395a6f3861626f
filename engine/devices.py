"""Choosing the device and precision a pipeline runs in.

`"auto"` picks CUDA, then Apple's MPS, then the CPU. Precision `"auto"` picks fp16 on CUDA/MPS (with the VAE
kept out of fp16, whose decoder overflows into black NaN images), bf16 on CPUs that execute bf16 natively
(AVX512-BF16 or AMX), and fp32 on other CPUs. fp16 on the CPU is refused: PyTorch emulates it, slowly.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

import torch

log = logging.getLogger(__name__)

DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` -> the best available device; anything else is checked for availability."""
    if isinstance(device, torch.device):
        device = str(device)
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU on this machine")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for, but Apple's Metal backend is not available here")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True where the CPU executes bf16 matrix math in hardware (AVX512-BF16 or AMX tiles)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for probe in probes:
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:  # probe unavailable on this build/CPU
            continue
    return False


def prefers_channels_last(device: torch.device) -> bool:
    """Whether convolutions should run channels_last (NHWC) on `device`.

    CPU: oneDNN runs NHWC bf16 convolutions ~1.5x faster than NCHW (AMX/AVX512-BF16 kernels take NHWC
    directly), fp32 at least as fast, and the UNet's (B, C, H, W) <-> (B, H*W, C) token reshapes become free
    views. CUDA: cuDNN's tensor-core kernels are NHWC-native (diffusers recommends channels_last there too).
    MPS: left NCHW (its NHWC support has been patchy).
    """
    return device.type in ("cpu", "cuda")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """Return (model dtype, VAE dtype) for `dtype` on `device`; raises ValueError for unsupported pairs."""
    if isinstance(dtype, torch.dtype):
        chosen = dtype
    else:
        name = dtype.strip().lower()
        if name == "auto":
            if device.type in ("cuda", "mps"):
                chosen = torch.float16
            else:
                chosen = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        elif name in DTYPE_NAMES:
            chosen = DTYPE_NAMES[name]
        else:
            raise ValueError(f"unknown precision {dtype!r}: use auto, fp32, fp16 or bf16")
    if chosen not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"unsupported precision {chosen}: use fp32, fp16 or bf16")
    if chosen == torch.float16 and device.type == "cpu":
        raise ValueError("fp16 is not supported on the CPU (it is emulated and very slow): use bf16 or fp32")
    vae_dtype = chosen
    if chosen == torch.float16:
        # The SD1.x VAE decoder overflows fp16 and returns NaN (black) images: decode in bf16 where the GPU
        # supports it, else fp32.
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        vae_dtype = torch.bfloat16 if bf16_ok else torch.float32
    return chosen, vae_dtype


def release_freed_memory() -> None:
    """Return the C heap's freed memory to the OS (glibc malloc_trim; a no-op elsewhere).

    Tensors under glibc's mmap threshold (up to 32 MiB) come from the heap, and what is freed there stays in the
    process until reused. After work that frees many weight-sized tensors at once (a LoRA merge or restore:
    read file tensors, fp32 scratch copies, unpacked conv weights) that is hundreds of MB of resident memory
    the next generation would not reuse; trimming costs a few milliseconds.
    """
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux"):
            try:
                _malloc_trim = ctypes.CDLL(None).malloc_trim
            except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
                pass
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None
