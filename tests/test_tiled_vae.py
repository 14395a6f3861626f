"""Tiled VAE decode and encode against the whole-image passes (engine.vae_tiled), on random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import vae_tiled
from engine.checkpoint import build
from engine.config import VAEConfig
from engine.testing import random_state_dict
from engine.vae import VAE, needs_tiling, untiled_bytes

TOL = 1e-3


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def vae() -> VAE:
    cfg = VAEConfig.tiny()
    with torch.device("meta"):
        shapes = VAE(cfg)
    state = random_state_dict(shapes, np.random.default_rng(5), torch.float32)
    return build(VAE, cfg, state, device=torch.device("cpu"), dtype=torch.float32, what="VAE")


@torch.inference_mode()
def test_tiled_decode_equals_untiled(vae):
    # 20x28 latents with 8-pixel tiles: 3x4 tiles at latent resolution, 20x28 at the full 160x224, and odd
    # remainders at every level.
    z = torch.randn(1, 4, 20, 28, generator=torch.Generator().manual_seed(3))
    full = vae.decode(z, tiled=False)
    tiled = vae_tiled.decode(vae, z, tile=8)
    assert tiled.shape == full.shape == (1, 3, 160, 224)
    assert rel_err(tiled, full) < TOL
    # the per-tile statistics this replaces were off by ~8%: make sure the comparison can fail
    assert rel_err(full[..., :80, :112], vae.decode(z[..., :10, :14], tiled=False)) > 10 * TOL


@torch.inference_mode()
def test_tiled_encode_equals_untiled(vae):
    image = torch.rand(2, 3, 96, 112, generator=torch.Generator().manual_seed(4)) * 2 - 1
    full = vae.encode(image, tiled=False)
    tiled = vae.encode(image, tiled=True)  # default 256-pixel tiles: one tile at the top level
    assert rel_err(tiled, full) < TOL
    moments = vae_tiled.encode_moments(vae, image, tile=10)  # 10 x 12 tiles at full resolution
    assert rel_err(moments[:, :4], full) < TOL
    # the posterior sample draws the same noise either way
    a = vae.encode(image, generator=torch.Generator().manual_seed(1), tiled=False)
    b = vae.encode(image, generator=torch.Generator().manual_seed(1), tiled=True)
    assert rel_err(b, a) < TOL


@torch.inference_mode()
def test_tiled_decode_interrupt_and_bad_tile(vae):
    class Stop(Exception):
        pass

    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    with pytest.raises(Stop):
        vae.decode(torch.zeros(1, 4, 8, 8), tiled=True, interrupt=interrupt)
    with pytest.raises(ValueError, match="even"):
        vae_tiled.decode(vae, torch.zeros(1, 4, 8, 8), tile=7)


def test_tiling_decided_by_available_memory(vae):
    cfg = vae.config
    z = torch.zeros(1)
    # 2048x2048 with SD1.5's VAE in fp32: 6 * 128 * 2048^2 * 4 bytes = 12.9 GB estimated whole
    assert untiled_bytes(VAEConfig.sd15(), 1, 2048, 2048, 4) == 6 * 128 * 2048 * 2048 * 4
    assert not needs_tiling(cfg, 1, 64, 64, z)  # 64x64 of the tiny model: a few MB
    assert needs_tiling(cfg, 1 << 20, 2048, 2048, z)  # a batch no machine holds
