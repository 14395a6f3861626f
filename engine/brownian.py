"""Brownian-tree noise for the SDE samplers (DPM++ SDE, DPM++ 2M SDE, DPM++ 3M SDE), as A1111 draws it.

k-diffusion's `BrownianTreeNoiseSampler` (sampling.py, 0.0.16) wraps one `torchsde.BrownianTree` per image:
a Brownian motion W on [sigma_min, sigma_max] whose value over any interval is fixed by the seed alone
(torchsde `BrownianInterval` with `halfway_tree=True`: a dyadic tree of intervals, each split at its rounded
midpoint with a Brownian-bridge sample whose seed comes from `numpy.random.SeedSequence`). The noise for a
step from sigma to sigma_next is W(sigma, sigma_next) / sqrt|sigma_next - sigma|.

A1111 (sd_samplers_common.replace_torchsde_browinan) replaces torchsde's `_randn(size, dtype, device, seed)`
by `devices.randn_local(seed, size)`: a fresh generator of the selected RNG source per seed, first draw. This
module ports exactly that combination (torchsde 0.2.6 `_brownian/brownian_interval.py`, no Levy area),
so neither torchsde nor its dependencies are needed at run time. Arithmetic follows torchsde's operation
order, so the values are bit-identical to k-diffusion + torchsde + A1111's patch.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from engine import rng

log = logging.getLogger(__name__)

# torchsde.BrownianTree's defaults, which k-diffusion keeps
_TOL = 1e-6
_POOL_SIZE = 24
# Recently computed node increments kept per tree. torchsde keeps 45; a query at a new point needs ~20 new
# nodes, each a fresh normal draw, so a larger cache saves about half the draws (values never depend on it).
_CACHE_MIN, _CACHE_MAX, _CACHE_BYTES = 45, 256, 16 * 2**20


class _Node:
    """One interval [start, end] of the dyadic tree (torchsde `_Interval`)."""

    __slots__ = (
        "depth", "end", "is_left", "left", "midway", "parent", "right", "spawn_key", "start", "w_seed",
    )

    def __init__(self, start: float, end: float, parent: _Node | None, is_left: bool) -> None:
        self.start, self.end, self.parent, self.is_left = start, end, parent, is_left
        self.midway: float | None = None
        self.left: _Node | None = None
        self.right: _Node | None = None
        # torchsde: the root is (0, 0); a child is (2 * parent key + side, parent depth + 1)
        if parent is None:
            self.spawn_key, self.depth = 0, 0
        else:
            self.spawn_key, self.depth = 2 * parent.spawn_key + (0 if is_left else 1), parent.depth + 1


class BrownianTree:
    """One image's Brownian motion on [t0, t1] (torchsde `BrownianTree` = `BrownianInterval(halfway_tree=True,
    tol=1e-6, pool_size=24)`), its normal draws from `engine.rng` source `source` as A1111 patches them.

    `tree(ta, tb)` is the increment W(tb) - W(ta) for t0 <= ta <= tb <= t1, a tensor of `shape` and `dtype`
    on the CPU.
    """

    def __init__(self, t0: float, t1: float, shape: Sequence[int], *, entropy: int, source: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        t0, t1 = float(t0), float(t1)
        if t0 > t1:
            raise ValueError(f"the tree's start {t0} must not be after its end {t1}")
        if int(entropy) < 0:
            raise ValueError(f"the Brownian tree's seed must not be negative, got {entropy}")
        self.shape, self.dtype, self.entropy = tuple(shape), dtype, int(entropy)
        self.source = source
        ndigits = -int(math.log10(_TOL))
        self._round = lambda x: round(x, ndigits)
        self._root = _Node(self._round(t0), self._round(t1), None, False)
        # the root increment; torchsde also draws an (unused) space-time Levy area H from the second seed
        seq = np.random.SeedSequence(entropy=self.entropy, pool_size=_POOL_SIZE)
        w_seed = seq.generate_state(3)[0]  # (W, H, Levy area) seeds
        self._root_w = self._randn(w_seed) * math.sqrt(t1 - t0)
        self._cache: OrderedDict[_Node, torch.Tensor] = OrderedDict()
        nbytes = max(self._root_w.numel() * self._root_w.element_size(), 1)
        self._cache_size = min(max(_CACHE_BYTES // nbytes, _CACHE_MIN), _CACHE_MAX)

    def _randn(self, seed: np.uint32) -> torch.Tensor:
        # A1111's torchsde _randn: devices.randn_local(seed, size).to(dtype)
        return rng.randn(int(seed), self.shape, self.source).to(self.dtype)

    def _split(self, node: _Node) -> None:
        # torchsde _Interval._split_exact at the rounded halfway point, with the node's own seeds
        midway = self._round(0.5 * (node.end + node.start))
        if not node.start < midway < node.end:
            raise ValueError(f"cannot split [{node.start}, {node.end}] finer than the tolerance {_TOL}")
        node.midway = midway
        seq = np.random.SeedSequence(entropy=self.entropy, spawn_key=(node.spawn_key, node.depth),
                                     pool_size=_POOL_SIZE)
        node.w_seed = seq.generate_state(4)[0]  # (W, H, left Levy area, right Levy area) seeds
        node.left = _Node(node.start, midway, node, True)
        node.right = _Node(midway, node.end, node, False)

    def _locate(self, ta: float, tb: float) -> list[_Node]:
        """The tree nodes that tile [ta, tb], left to right, splitting nodes as needed (torchsde `_loc`)."""
        out: list[_Node] = []
        todo = [(self._root, ta, tb)]
        while todo:
            node, a, b = todo.pop()
            if a == node.start and b == node.end:
                out.append(node)
                continue
            if node.midway is None:
                self._split(node)
            if b <= node.midway:
                todo.append((node.left, a, b))
            elif a >= node.midway:
                todo.append((node.right, a, b))
            else:  # both halves; the left one is popped first
                todo.append((node.right, node.midway, b))
                todo.append((node.left, a, node.midway))
        return out

    def _increment(self, node: _Node) -> torch.Tensor:
        """W over `node`, from its parent's W by the Brownian bridge (torchsde
        `_increment_and_space_time_levy_area` without H), computed top-down from the nearest known node."""
        chain = []
        while node.parent is not None and node not in self._cache:
            chain.append(node)
            node = node.parent
        if node.parent is None:
            w = self._root_w
        else:
            w = self._cache[node]
            self._cache.move_to_end(node)
        for child in reversed(chain):
            parent = child.parent
            left_w = self._cache.get(parent.left) if not child.is_left else None
            if left_w is None:  # else the left sibling's W is exactly the left_w torchsde would recompute
                h_reciprocal = 1 / (parent.end - parent.start)
                left_diff = parent.midway - parent.start
                right_diff = parent.end - parent.midway
                mean = left_diff * w * h_reciprocal
                var = left_diff * right_diff * h_reciprocal
                left_w = mean + math.sqrt(var) * self._randn(parent.w_seed)
            w = left_w if child.is_left else w - left_w
            self._cache[child] = w
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return w

    def __call__(self, ta: float, tb: float) -> torch.Tensor:
        ta, tb = float(ta), float(tb)
        start, end = self._root.start, self._root.end
        if not (start <= ta <= end and start <= tb <= end):
            log.debug("Brownian query (%s, %s) clamped to the tree's [%s, %s]", ta, tb, start, end)
            ta, tb = min(max(ta, start), end), min(max(tb, start), end)
        if ta > tb:
            raise ValueError(f"query times must be ordered, got ta={ta} > tb={tb}")
        if ta == tb:
            return torch.zeros(self.shape, dtype=self.dtype)
        nodes = self._locate(self._round(ta), self._round(tb))
        w = self._increment(nodes[0])
        for node in nodes[1:]:
            w = w + self._increment(node)
        return w


class BrownianTreeNoiseSampler:
    """k-diffusion's `BrownianTreeNoiseSampler` (with `BatchedBrownianTree`) under A1111's RNG patch.

    `seeds`: one seed per row of `x` (A1111 passes the batch's image seeds), or a single int for one tree
    over all of `x`. `noise(sigma, sigma_next)` returns W(sigma, sigma_next) / sqrt|sigma_next - sigma|,
    shaped like `x`, in x's dtype on x's device; the same seed gives the same noise whatever the batch and
    the query order.
    """

    def __init__(self, x: torch.Tensor, sigma_min: float | torch.Tensor, sigma_max: float | torch.Tensor,
                 seeds: int | Sequence[int], source: str = "cpu") -> None:
        if source not in rng.RNG_SOURCES:
            raise ValueError(f"unknown RNG source {source!r}; expected one of {', '.join(rng.RNG_SOURCES)}")
        t0, t1 = torch.as_tensor(sigma_min).cpu(), torch.as_tensor(sigma_max).cpu()
        t0, t1, self.sign = self._sort(t0, t1)
        self.batched = not isinstance(seeds, (int, np.integer))
        if self.batched:
            seeds = list(seeds)
            if len(seeds) != x.shape[0]:
                raise ValueError(
                    f"one seed per batch row: got {len(seeds)} seeds for a batch of {x.shape[0]}")
        else:
            seeds = [seeds]
        shape = x.shape[1:] if self.batched else x.shape
        self.device = x.device
        self.trees = [BrownianTree(t0, t1, shape, entropy=s, source=source, dtype=x.dtype) for s in seeds]

    @staticmethod
    def _sort(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        return (a, b, 1) if a < b else (b, a, -1)

    def __call__(self, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma).cpu(), torch.as_tensor(sigma_next).cpu()
        a, b, sign = self._sort(t0, t1)
        w = torch.stack([tree(a, b) for tree in self.trees]) * (self.sign * sign)
        w = w if self.batched else w[0]
        return (w / (t1 - t0).abs().sqrt()).to(self.device)
