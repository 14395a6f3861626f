"""engine.brownian against k-diffusion 0.0.16's BrownianTreeNoiseSampler on torchsde itself, with torchsde's
`_randn` patched as A1111 patches it (a fresh generator of the RNG source per child seed), for the queries
the SDE samplers make."""

from __future__ import annotations

import random

import pytest
import torch
import torchsde._brownian.brownian_interval as torchsde_interval
from reference.k_diffusion import sampling as kd

from engine import rng, schedules
from engine.brownian import BrownianTree, BrownianTreeNoiseSampler

# torchsde warns when a query lands a rounding error outside [t0, t1]; it clamps, and so do we
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:torchsde")


@pytest.fixture
def a1111_randn(monkeypatch):
    """Install A1111's replace_torchsde_browinan for a source; returns the setter."""
    def use(source: str) -> None:
        def randn(size, dtype, device, seed):  # devices.randn_local(seed, size).to(device, dtype)
            return rng.randn(int(seed), size, source).to(device=device, dtype=dtype)
        monkeypatch.setattr(torchsde_interval, "_randn", randn)
    return use


def _dpmpp_2m_sde_queries(sigmas: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # k-diffusion sample_dpmpp_2m_sde / 3m_sde: noise_sampler(sigmas[i], sigmas[i + 1]) if sigmas[i + 1] > 0
    return [(sigmas[i], sigmas[i + 1]) for i in range(len(sigmas) - 1) if sigmas[i + 1] > 0]


def _dpmpp_sde_queries(sigmas: torch.Tensor, r: float = 0.5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # k-diffusion sample_dpmpp_sde: t = -log sigma; a half step to s = t + h r, then the full step
    def sigma_fn(t):
        return t.neg().exp()

    def t_fn(sigma):
        return sigma.log().neg()

    out = []
    for i in range(len(sigmas) - 1):
        if sigmas[i + 1] == 0:
            continue
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        s = t + (t_next - t) * r
        out += [(sigma_fn(t), sigma_fn(s)), (sigma_fn(t), sigma_fn(t_next))]
    return out


def _sigma_range(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # A1111 KDiffusionSampler.create_noise_sampler: min(sigmas > 0), max(sigmas)
    return sigmas[sigmas > 0].min(), sigmas.max()


CASES = {
    "dpmpp_2m_sde/exponential": (lambda: schedules.sigmas("exponential", 12), _dpmpp_2m_sde_queries),
    "dpmpp_3m_sde/exponential": (lambda: schedules.sigmas("exponential", 9, discard_penultimate=True),
                                 _dpmpp_2m_sde_queries),
    "dpmpp_2m_sde/karras": (lambda: schedules.sigmas("karras", 10), _dpmpp_2m_sde_queries),
    "dpmpp_sde/karras": (lambda: schedules.sigmas("karras", 8), _dpmpp_sde_queries),
}


@pytest.mark.parametrize("source", ["cpu", "nv"])
@pytest.mark.parametrize("case", list(CASES))
def test_equals_k_diffusion_on_torchsde(a1111_randn, source, case):
    a1111_randn(source)
    make_sigmas, make_queries = CASES[case]
    sigmas = make_sigmas()
    x = torch.zeros(2, 4, 8, 8)
    seeds = [1234, 98765]
    ours = BrownianTreeNoiseSampler(x, *_sigma_range(sigmas), seeds, source=source)
    reference = kd.BrownianTreeNoiseSampler(x, *_sigma_range(sigmas), seed=seeds)
    for sigma, sigma_next in make_queries(sigmas):
        got, expected = ours(sigma, sigma_next), reference(sigma, sigma_next)
        assert got.shape == x.shape and got.dtype == torch.float32
        assert torch.equal(got, expected), (case, sigma.item(), sigma_next.item())


def test_single_seed_float64_and_arbitrary_queries_equal_torchsde(a1111_randn):
    a1111_randn("cpu")
    x = torch.zeros(3, 5, dtype=torch.float64)  # one tree over the whole tensor, in float64
    ours = BrownianTreeNoiseSampler(x, 0.03, 14.6, 77)
    reference = kd.BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=77)
    rnd = random.Random(0)
    for _ in range(40):
        a, b = rnd.uniform(0.03, 14.6), rnd.uniform(0.03, 14.6)
        got, expected = ours(a, b), reference(a, b)  # either order: the sign flips
        assert got.dtype == torch.float64 and torch.equal(got, expected)


def test_noise_depends_on_the_seed_only():
    sigmas = schedules.sigmas("karras", 10)
    queries = _dpmpp_sde_queries(sigmas)
    pair = BrownianTreeNoiseSampler(torch.zeros(2, 4, 8, 8), *_sigma_range(sigmas), [5, 6])
    alone = BrownianTreeNoiseSampler(torch.zeros(1, 4, 8, 8), *_sigma_range(sigmas), [6])
    forward = [pair(a, b) for a, b in queries]
    backward = [alone(a, b) for a, b in reversed(queries)][::-1]  # the halfway tree ignores query order
    for both, one in zip(forward, backward, strict=True):
        assert torch.equal(both[1], one[0])
    assert not torch.equal(forward[0][0], forward[0][1])


def test_increments_add_up_and_are_brownian():
    tree = BrownianTree(0.0, 10.0, (4, 64, 64), entropy=3)
    whole = tree(1.0, 9.0)
    parts = tree(1.0, 2.5) + tree(2.5, 9.0)
    assert torch.allclose(whole, parts, atol=1e-5)  # W is additive over adjacent intervals
    assert torch.equal(tree(4.0, 4.0), torch.zeros(4, 64, 64))
    noise = BrownianTreeNoiseSampler(torch.zeros(1, 4, 64, 64), 0.03, 14.6, [9])
    for a, b in [(14.6, 7.0), (7.0, 6.9), (0.5, 0.03)]:  # normalised noise is standard normal
        n = noise(a, b)
        assert abs(n.mean().item()) < 0.05 and abs(n.std().item() - 1) < 0.05
    # a later, overlapping query is consistent with the earlier one
    left, right = tree(1.0, 3.0), tree(3.0, 9.0)
    assert torch.allclose(left + right, whole, atol=1e-5)


def test_bad_arguments_raise():
    x = torch.zeros(2, 4, 8, 8)
    with pytest.raises(ValueError, match="one seed per batch row"):
        BrownianTreeNoiseSampler(x, 0.03, 14.6, [1, 2, 3])
    with pytest.raises(ValueError, match="RNG source"):
        BrownianTreeNoiseSampler(x, 0.03, 14.6, [1, 2], source="cuda")
    with pytest.raises(ValueError, match="must not be negative"):
        BrownianTreeNoiseSampler(x, 0.03, 14.6, [1, -2])
