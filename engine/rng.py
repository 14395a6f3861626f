"""Seeds -> noise, as AUTOMATIC1111 draws it (`modules/rng.py`, `modules/rng_philox.py`, v1.10.1).

Two sources:
- ``"cpu"``: a `torch.Generator("cpu")` seeded with the seed, `torch.randn` in float32. This is A1111's
  "RNG: CPU", ComfyUI's default, and the noise this engine has always drawn.
- ``"nv"`` (alias ``"gpu"``): A1111's NumPy emulation of CUDA's `torch.randn` (Philox4x32-10 counter-based
  generator + Box-Muller), so "RNG: GPU" / "RNG: NV" images made on NVIDIA cards reproduce on any device.
  It matches CUDA to a few ulp for SD1-sized latents (see the research notes §3.4 for the limits).

`ImageNoise` is A1111's `ImageRNG`: one generator per image (so an image's noise never depends on the batch
size), the variation-seed slerp, optional seed resize, and the ENSD re-seed after the initial noise.
Everything here returns float32 tensors on the CPU; callers move them to their device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

RNG_SOURCES = ("cpu", "nv", "gpu")  # "gpu" is A1111's default "RNG: GPU", emulated by "nv"

# Philox4x32 constants (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3";
# Random123's philox.h)
_PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_32 = np.uint64(32)
_PHILOX_ROUNDS = 10
# rng_philox.py's float32 scale factors; the Box-Muller arithmetic itself runs in float64 (NumPy promotes
# uint32 * float32 to float64) and only the result is rounded to float32.
_TWO_POW32_INV = np.float32(2.3283064e-10)
_TWO_POW32_INV_2PI = np.float32(2.3283064e-10 * 6.2831855)


def _check_source(source: str) -> str:
    if source not in RNG_SOURCES:
        raise ValueError(f"unknown RNG source {source!r}; expected one of {', '.join(RNG_SOURCES)}")
    return "nv" if source == "gpu" else source


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        # house rule: bad input is a ValueError, whatever its kind
        raise ValueError(f"seed must be an integer, got {seed!r}")  # noqa: TRY004
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must not have negative sizes, got {shape}")
    return shape


def philox4x32(counter: Sequence[np.ndarray | int], key: tuple[int, int],
               rounds: int = _PHILOX_ROUNDS) -> np.ndarray:
    """Philox4x32 over N counters at once: `counter` is 4 words, each an array of N uint32 values or one int
    for all, `key` the two key words; returns the (4, N) uint32 outputs.

    One round (Random123 `philox4x32round`): (hi, lo) of c0*M0 and c2*M1 (exact in uint64);
    c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0); the key is bumped by the Weyl constants between rounds.
    """
    c0, c1, c2, c3 = np.broadcast_arrays(*(np.asarray(c, dtype=np.uint32) for c in counter))
    k0, k1 = (int(k) & 0xFFFFFFFF for k in key)
    for r in range(rounds):
        p0 = c0.astype(np.uint64) * _PHILOX_M[0]
        p1 = c2.astype(np.uint64) * _PHILOX_M[1]
        hi0, lo0 = (p0 >> _32).astype(np.uint32), p0.astype(np.uint32)
        hi1, lo1 = (p1 >> _32).astype(np.uint32), p1.astype(np.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint32(k0), lo1, hi0 ^ c3 ^ np.uint32(k1), lo0
        k0, k1 = (k0 + _PHILOX_W[0]) & 0xFFFFFFFF, (k1 + _PHILOX_W[1]) & 0xFFFFFFFF
    return np.stack([c0, c1, c2, c3])


class PhiloxGenerator:
    """A1111's `rng_philox.Generator`: CUDA-like normal numbers from a seed.

    Each `randn` call uses one Philox counter block: element i gets counter (offset, 0, i, 0) and key
    (seed low 32 bits, seed high 32 bits), and keeps only the first Box-Muller output of (g0, g1) - what
    thread i of PyTorch's CUDA kernel returns as long as the tensor fits one grid stride. `offset` then
    advances by one, as CUDA's generator does for tensors up to 4 strides.
    """

    def __init__(self, seed: int) -> None:
        self.seed = _check_seed(seed)
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        shape = _check_shape(shape)
        n = math.prod(shape)
        if n > 2**32:
            raise ValueError(f"the NV generator draws at most 2**32 numbers per call, asked for {n}")
        counter = (self.offset & 0xFFFFFFFF, 0, np.arange(n, dtype=np.uint32), 0)
        self.offset += 1
        g = philox4x32(counter, (self.seed & 0xFFFFFFFF, self.seed >> 32))
        # Box-Muller (rng_philox.box_muller): uniforms in (0, 1) and (0, 2*pi), float64, first output only
        u = g[0] * _TWO_POW32_INV + _TWO_POW32_INV / 2
        v = g[1] * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
        return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32).reshape(shape)


class _CpuGenerator:
    """`torch.Generator("cpu")` behind the same `randn(shape)` face as `PhiloxGenerator`."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator("cpu").manual_seed(_check_seed(seed))

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(_check_shape(shape), generator=self.generator, dtype=torch.float32)


def create_generator(seed: int, source: str = "cpu") -> PhiloxGenerator | _CpuGenerator:
    """A fresh generator for `seed` (A1111 `rng.create_generator`); draw from it with `draw(gen, shape)`."""
    source = _check_source(source)
    return PhiloxGenerator(seed) if source == "nv" else _CpuGenerator(seed)


def draw(generator: PhiloxGenerator | _CpuGenerator, shape: Sequence[int]) -> torch.Tensor:
    """The next `shape` normal numbers of `generator`, as a float32 CPU tensor."""
    out = generator.randn(shape)
    return torch.from_numpy(out) if isinstance(out, np.ndarray) else out


def randn(seed: int, shape: Sequence[int], source: str = "cpu") -> torch.Tensor:
    """The first `shape` normal numbers of a fresh generator seeded with `seed` (float32, CPU).

    `source="cpu"` is bit-identical to
    `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`;
    `"nv"`/`"gpu"` is A1111's Philox emulation of CUDA (A1111 `rng.randn_local`).
    """
    return draw(create_generator(seed, source), shape)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's `rng.slerp`, quirks kept because they change pixels.

    The norms and dot products run over dim 1, which for a (C, H, W) latent is the H axis: one spherical
    interpolation per (channel, column). When the mean dot product is above 0.9995 it falls back to a linear
    mix with the weights the other way round (`low * val + high * (1 - val)`), exactly as A1111 does.
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return ((torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low
            + (torch.sin(val * omega) / so).unsqueeze(1) * high)


def batch_seeds(seed: int, batch_size: int, *, variation_seed: int | None = None,
                variation_strength: float = 0.0, start: int = 0) -> tuple[list[int], list[int] | None]:
    """Per-image (seeds, variation seeds) for images start .. start+batch_size-1 of a run, as A1111's
    `process_images_inner`: image k gets seed + k, unless a variation is in use (strength != 0), when every
    image keeps `seed` and the variation seeds count up instead (variation_seed + k)."""
    _check_seed(seed)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    ks = range(start, start + batch_size)
    if variation_strength == 0:
        return [seed + k for k in ks], None
    if variation_seed is None:
        raise ValueError("a variation strength needs a variation seed")
    _check_seed(variation_seed)
    return [seed] * batch_size, [variation_seed + k for k in ks]


class ImageNoise:
    """A1111's `ImageRNG`: the initial noise of a batch and the noise samplers draw afterwards.

    `shape` is one image's latent shape (C, H, W); `seeds` one seed per image (see `batch_seeds`).
    `first()` returns the initial noise (B, C, H, W); `next()` returns the next draw of every image's own
    generator - what A1111 substitutes for k-diffusion's `torch.randn_like` - and the initial noise on its
    first call if `first()` was not called. With `ensd` (eta noise seed delta) != 0 the generators are
    replaced by fresh ones seeded seed_k + ensd once the initial noise is drawn. `seed_resize_from` =
    (height, width) in pixels draws the noise of that size and pastes it centred (A1111's "Seed resize from").
    """

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], *, source: str = "cpu",
                 subseeds: Sequence[int] | None = None, variation_strength: float = 0.0, ensd: int = 0,
                 seed_resize_from: tuple[int, int] | None = None) -> None:
        self.shape = _check_shape(shape)
        if len(self.shape) != 3:
            raise ValueError(f"shape is one image's latent shape (C, H, W), got {self.shape}")
        if not seeds:
            raise ValueError("ImageNoise needs at least one seed")
        self.seeds = [_check_seed(s) for s in seeds]
        self.source = _check_source(source)
        self.subseeds = None if subseeds is None else [_check_seed(s) for s in subseeds]
        self.variation_strength = float(variation_strength)
        self.ensd = int(ensd)
        if seed_resize_from is not None and (len(seed_resize_from) != 2 or min(seed_resize_from) <= 0):
            raise ValueError(f"seed_resize_from is a (height, width) in pixels, got {seed_resize_from!r}")
        self.seed_resize_from = seed_resize_from
        self.generators = [create_generator(s, self.source) for s in self.seeds]
        self._drew_first = False

    def _noise_shape(self) -> tuple[int, ...]:
        if self.seed_resize_from is None:
            return self.shape
        h, w = self.seed_resize_from
        return (self.shape[0], h // 8, w // 8)

    def first(self) -> torch.Tensor:
        """The initial noise, (B, C, H, W) float32 on the CPU (A1111 `ImageRNG.first`)."""
        noise_shape = self._noise_shape()
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators, strict=True)):
            subnoise = None
            if self.subseeds is not None and self.variation_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                subnoise = randn(subseed, noise_shape, self.source)
            # seed resize: the small noise comes from a fresh generator, the image's own draws the full size
            if noise_shape != self.shape:
                noise = randn(seed, noise_shape, self.source)
            else:
                noise = draw(generator, self.shape)
            if subnoise is not None:
                noise = slerp(self.variation_strength, noise, subnoise)
            if noise_shape != self.shape:
                noise = self._paste_centred(noise, draw(generator, self.shape))
            xs.append(noise)
        if self.ensd:
            self.generators = [create_generator(s + self.ensd, self.source) for s in self.seeds]
        self._drew_first = True
        return torch.stack(xs)

    def _paste_centred(self, noise: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # index arithmetic of A1111 ImageRNG.first: crop when the old size is larger, pad when it is smaller
        dx = (self.shape[2] - noise.shape[2]) // 2
        dy = (self.shape[1] - noise.shape[1]) // 2
        w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
        h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
        tx, ty = max(dx, 0), max(dy, 0)
        dx, dy = max(-dx, 0), max(-dy, 0)
        x[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
        return x

    def next(self) -> torch.Tensor:
        """The next noise of every image's generator, (B, C, H, W) float32 on the CPU."""
        if not self._drew_first:
            return self.first()
        return torch.stack([draw(g, self.shape) for g in self.generators])
