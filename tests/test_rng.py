"""engine.rng: A1111's noise sources (CPU torch.randn, the Philox "NV" emulation of CUDA), its variation slerp
and ImageRNG's per-image generators with ENSD, checked against independent re-computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine import rng

SHAPE = (4, 8, 6)


# --- an independent, scalar Philox4x32-10 + Box-Muller, written from the Random123 spec --------------------

def _philox_scalar(ctr: list[int], key: list[int]) -> list[int]:
    m0, m1, w0, w1, mask = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85, 0xFFFFFFFF
    c, k = list(ctr), list(key)
    for r in range(10):
        p0, p1 = m0 * c[0], m1 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & mask, (p0 >> 32) ^ c[3] ^ k[1], p0 & mask]
        if r < 9:
            k = [(k[0] + w0) & mask, (k[1] + w1) & mask]
    return c


def _nv_scalar(seed: int, offset: int, index: int) -> np.float32:
    g = _philox_scalar([offset, 0, index, 0], [seed & 0xFFFFFFFF, seed >> 32])
    inv = float(np.float32(2.3283064e-10))
    inv_2pi = float(np.float32(2.3283064e-10 * 6.2831855))
    u = g[0] * inv + inv / 2
    v = g[1] * inv_2pi + inv_2pi / 2
    return np.float32(math.sqrt(-2.0 * math.log(u)) * math.sin(v))


@pytest.mark.parametrize(("ctr", "key", "expected"), [
    # Random123 kat_vectors, philox4x32 10 rounds
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
])
def test_philox_known_answers(ctr, key, expected):
    out = rng.philox4x32(np.array(ctr, np.uint32)[:, None], tuple(key))
    assert out[:, 0].tolist() == expected
    assert _philox_scalar(ctr, key) == expected


def test_nv_matches_a1111_docstring_and_the_research_values():
    out = rng.randn(0, (3, 4), "nv")
    assert out.dtype == torch.float32 and out.shape == (3, 4)
    # A1111 rng_philox.py's docstring prints what CUDA's torch.randn gives; the emulation agrees to a few ulp
    cuda = torch.tensor([[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                         [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                         [-1.07454231, -0.36314407, -1.67105067, 2.26550497]])
    assert torch.allclose(out, cuda, rtol=0, atol=1e-6)
    assert not torch.equal(out, cuda)
    # ... and the emulation's own values (research notes §3.4) exactly
    assert out[0, :2].tolist() == [np.float32(-0.9246624), np.float32(-0.42534396)]


@pytest.mark.parametrize("seed", [0, 1234, 2**32 + 7, 2**63 + 12345])
def test_nv_equals_scalar_recomputation_with_offsets(seed):
    gen = rng.PhiloxGenerator(seed)
    first, second = gen.randn((5, 7)).ravel(), gen.randn((5, 7)).ravel()
    assert gen.offset == 2
    for i in (0, 1, 17, 34):
        assert first[i] == _nv_scalar(seed, 0, i)
        assert second[i] == _nv_scalar(seed, 1, i)


def test_gpu_is_the_nv_source():
    assert torch.equal(rng.randn(42, SHAPE, "gpu"), rng.randn(42, SHAPE, "nv"))


def test_cpu_is_todays_torch_noise():
    for seed in (0, 42, 2**32 - 1):
        expected = torch.randn((1, *SHAPE), generator=torch.Generator("cpu").manual_seed(seed))[0]
        assert torch.equal(rng.randn(seed, SHAPE, "cpu"), expected)
        assert torch.equal(rng.randn(seed, SHAPE), expected)


@pytest.mark.parametrize("bad", [{"source": "cuda"}, {"source": "CPU"}, {"seed": -1}, {"seed": 2**64},
                                 {"seed": 1.5}, {"shape": (4, -1, 2)}])
def test_bad_input_raises(bad):
    args = {"seed": 1, "shape": (2, 2), "source": "cpu"} | bad
    with pytest.raises(ValueError):
        rng.randn(args["seed"], args["shape"], args["source"])


def _slerp_by_columns(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    # the textbook slerp, applied to every (channel, column) vector over the H axis, in float64
    out = torch.empty(low.shape, dtype=torch.float64)
    for c in range(low.shape[0]):
        for w in range(low.shape[2]):
            a, b = low[c, :, w].double(), high[c, :, w].double()
            omega = torch.acos((a / a.norm()) @ (b / b.norm()))
            out[c, :, w] = (torch.sin((1 - val) * omega) * a + torch.sin(val * omega) * b) / torch.sin(omega)
    return out


def test_slerp_runs_per_channel_and_column():
    low, high = rng.randn(1, SHAPE), rng.randn(2, SHAPE)
    for val in (0.0, 0.3, 1.0):
        got = rng.slerp(val, low, high)
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), _slerp_by_columns(val, low, high), atol=1e-5)


def test_slerp_near_parallel_uses_a1111s_reversed_lerp():
    low = rng.randn(1, SHAPE)
    high = low + 1e-3 * rng.randn(2, SHAPE)
    got = rng.slerp(0.2, low, high)
    assert torch.equal(got, low * 0.2 + high * 0.8)
    assert not torch.allclose(got, low * 0.8 + high * 0.2, atol=1e-5)


@pytest.mark.parametrize("source", ["cpu", "nv"])
def test_image_noise_first_and_next_follow_each_images_generator(source):
    seeds = [7, 8, 9]
    noise = rng.ImageNoise(SHAPE, seeds, source=source)
    first, second, third = noise.first(), noise.next(), noise.next()
    assert first.shape == (3, *SHAPE) and first.dtype == torch.float32
    for k, seed in enumerate(seeds):
        gen = rng.create_generator(seed, source)
        assert torch.equal(first[k], rng.draw(gen, SHAPE))
        assert torch.equal(second[k], rng.draw(gen, SHAPE))
        assert torch.equal(third[k], rng.draw(gen, SHAPE))


@pytest.mark.parametrize("source", ["cpu", "nv"])
def test_image_noise_does_not_depend_on_batch_size(source):
    big = rng.ImageNoise(SHAPE, [100, 101, 102, 103], source=source, ensd=31337)
    small = rng.ImageNoise(SHAPE, [102], source=source, ensd=31337)
    for _ in range(3):
        assert torch.equal(big.next()[2], small.next()[0])


def test_image_noise_next_starts_with_the_initial_noise():
    assert torch.equal(rng.ImageNoise(SHAPE, [5, 6]).next(), rng.ImageNoise(SHAPE, [5, 6]).first())


@pytest.mark.parametrize("source", ["cpu", "nv"])
def test_ensd_reseeds_after_the_initial_noise(source):
    seeds, ensd = [3, 4], 31337
    noise = rng.ImageNoise(SHAPE, seeds, source=source, ensd=ensd)
    first, later = noise.first(), [noise.next(), noise.next()]
    plain = rng.ImageNoise(SHAPE, seeds, source=source)
    assert torch.equal(first, plain.first())  # ENSD leaves the initial noise alone
    assert not torch.equal(later[0], plain.next())
    for k, seed in enumerate(seeds):
        gen = rng.create_generator(seed + ensd, source)
        assert torch.equal(later[0][k], rng.draw(gen, SHAPE))
        assert torch.equal(later[1][k], rng.draw(gen, SHAPE))


@pytest.mark.parametrize("source", ["cpu", "nv"])
def test_variation_slerps_towards_the_variation_seed(source):
    seeds, subseeds = rng.batch_seeds(50, 2, variation_seed=900, variation_strength=0.25)
    assert seeds == [50, 50] and subseeds == [900, 901]
    noise = rng.ImageNoise(SHAPE, seeds, source=source, subseeds=subseeds, variation_strength=0.25)
    first, second = noise.first(), noise.next()
    for k in range(2):
        expected = rng.slerp(0.25, rng.randn(50, SHAPE, source), rng.randn(900 + k, SHAPE, source))
        assert torch.equal(first[k], expected)
    # the variation only shapes the initial noise; later draws continue seed 50's generator (both images)
    gen = rng.create_generator(50, source)
    rng.draw(gen, SHAPE)
    assert torch.equal(second[0], rng.draw(gen, SHAPE)) and torch.equal(second[1], second[0])
    # strength 0 ignores the variation seeds
    same = rng.ImageNoise(SHAPE, [50], source=source, subseeds=[900], variation_strength=0.0).first()
    assert torch.equal(same[0], rng.randn(50, SHAPE, source))


def test_batch_seeds_without_variation_count_up():
    assert rng.batch_seeds(10, 3) == ([10, 11, 12], None)
    assert rng.batch_seeds(10, 2, start=4) == ([14, 15], None)
    assert rng.batch_seeds(10, 2, variation_seed=5) == ([10, 11], None)
    with pytest.raises(ValueError, match="variation seed"):
        rng.batch_seeds(10, 2, variation_strength=0.5)


@pytest.mark.parametrize(("old", "expect_centre"), [((48, 32), True), ((96, 80), False)])
def test_seed_resize_pastes_the_old_size_noise_centred(old, expect_centre):
    noise = rng.ImageNoise(SHAPE, [11], seed_resize_from=old).first()[0]
    small = rng.randn(11, (4, old[0] // 8, old[1] // 8))
    full = rng.randn(11, SHAPE)  # the image's own generator draws the full size
    if expect_centre:  # old (6, 4) inside new (8, 6): offset (1, 1)
        assert torch.equal(noise[:, 1:7, 1:5], small)
        assert torch.equal(noise[:, 0], full[:, 0]) and torch.equal(noise[:, :, 5], full[:, :, 5])
    else:  # old (12, 10) larger than new (8, 6): the centre crop
        assert torch.equal(noise, small[:, 2:10, 2:8])


def test_image_noise_rejects_bad_arguments():
    with pytest.raises(ValueError, match="C, H, W"):
        rng.ImageNoise((1, *SHAPE), [1])
    with pytest.raises(ValueError, match="at least one seed"):
        rng.ImageNoise(SHAPE, [])
    with pytest.raises(ValueError, match="RNG source"):
        rng.ImageNoise(SHAPE, [1], source="mps")
