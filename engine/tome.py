"""Token merging for Stable Diffusion (Bolya & Hoffman 2023, "ToMe for SD"), as A1111 applies it.

A1111's "Token merging ratio" option (modules/sd_models.py `apply_token_merging`) patches the UNet with
tomesd 0.1.3: `apply_patch(model, ratio=r, use_rand=False, merge_attn=True, merge_crossattn=False,
merge_mlp=False)`, the other arguments at their defaults (max_downsample=1, sx=sy=2). So only the
self-attention of the transformer blocks whose token count is the latent's own h*w (the UNet's first
level) runs on merged tokens:

    x = unmerge(attn1(merge(norm1(x)))) + x       (the similarity metric is the block input x)

`bipartite_soft_matching` below is tomesd's `merge.bipartite_soft_matching_random2d` on its no_rand path
(the top-left token of each 2x2 cell is a destination) with the same arithmetic, op for op (its gathers and
scatters done as row copies: the same values, faster), so an image made with the option reproduces A1111's;
`TokenMerging.merge_fns` is tomesd's `patch.compute_merge`. tests/test_tome.py checks merge/unmerge bit for
bit against tomesd's, and a whole UNet step against diffusers' UNet patched by the tomesd package itself.

A ratio of 0 leaves no trace: the blocks hold `tome = None` and run their usual code.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

Merge = Callable[[torch.Tensor], torch.Tensor]

# tomesd.apply_patch's defaults, which A1111 keeps: merge only where the tokens are not downsampled,
# destinations on a 2x2 grid.
MAX_DOWNSAMPLE = 1
SX = SY = 2


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def check_ratio(ratio: float, name: str = "token merging ratio") -> float:
    """`ratio` as a float when it is a usable token merging ratio (0 <= ratio < 1), else ValueError.

    tomesd itself caps what a ratio can do (at most the 3/4 of the tokens that are not 2x2-grid
    destinations are merged), so 0.75-0.99 all merge the same; A1111's slider stops at 0.9.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise ValueError(f"{name} must be a number, got {ratio!r}")  # noqa: TRY004
    if not (math.isfinite(ratio) and 0 <= ratio < 1):
        raise ValueError(f"{name} must be at least 0 and below 1, got {ratio}")
    return float(ratio)


def _partition(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(1, h*w, 1) token indices, the 2x2-grid destinations first, then the sources (tomesd's no_rand idx).

    Exactly tomesd's construction (including its unstable argsort over -1/0 keys), so the orders match.
    """
    hsy, wsx = h // SY, w // SX
    rand_idx = torch.zeros(hsy, wsx, 1, device=device, dtype=torch.int64)
    idx_buffer_view = torch.zeros(hsy, wsx, SY * SX, device=device, dtype=torch.int64)
    idx_buffer_view.scatter_(dim=2, index=rand_idx, src=-torch.ones_like(rand_idx, dtype=rand_idx.dtype))
    idx_buffer_view = idx_buffer_view.view(hsy, wsx, SY, SX).transpose(1, 2).reshape(hsy * SY, wsx * SX)
    if (hsy * SY) < h or (wsx * SX) < w:  # odd h or w: the last row/column are all sources
        idx_buffer = torch.zeros(h, w, device=device, dtype=torch.int64)
        idx_buffer[: (hsy * SY), : (wsx * SX)] = idx_buffer_view
    else:
        idx_buffer = idx_buffer_view
    return idx_buffer.reshape(1, -1, 1).argsort(dim=1)


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, C) rows picked per batch item by index (B, K) -> (B, K, C): the values of tomesd's
    `x.gather(-2, index[..., None].expand(B, K, C))`, by one row copy (index_select) instead of an elementwise
    gather (4x slower in fp32, up to 400x in bf16 on CPU)."""
    nb, t, c = x.shape
    flat = (index + torch.arange(nb, device=index.device)[:, None] * t).reshape(-1)
    return x.reshape(nb * t, c).index_select(0, flat).view(nb, -1, c)


def _put(out: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    """out[b, index[b, k]] = src[b, k] (tomesd's `out.scatter_(-2, index expanded over C, src)`), row copies."""
    nb, n, c = out.shape
    flat = (index + torch.arange(nb, device=index.device)[:, None] * n).reshape(-1)
    out.view(nb * n, c).index_copy_(0, flat, src.reshape(-1, c))


def bipartite_soft_matching(
    metric: torch.Tensor, w: int, h: int, r: int, partition: torch.Tensor | None = None
) -> tuple[Merge, Merge]:
    """merge (B, N, C) -> (B, N - r, C) and its unmerge, for tokens of an h x w image (N = h*w).

    Each source token is matched to its most cosine-similar destination; the r best-matched sources are
    averaged into their destinations (tomesd merge.py `bipartite_soft_matching_random2d`, no_rand=True).
    Gathers and scatters are row copies here (same values); the arithmetic (normalise, scores, max, argsort
    descending, scatter_reduce "mean") is tomesd's own. `partition`: `_partition(h, w)`, when already known.
    """
    b, n, _ = metric.shape
    if r <= 0:
        return _identity, _identity
    if partition is None:
        partition = _partition(h, w, metric.device)
    num_dst = (h // SY) * (w // SX)
    a_idx = partition[0, num_dst:, 0]  # sources (the same for every batch item)
    b_idx = partition[0, :num_dst, 0]  # destinations

    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.index_select(1, a_idx), x.index_select(1, b_idx)

    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, bb = split(metric)
        scores = a @ bb.transpose(-1, -2)  # (B, sources, destinations) cosine similarities
        r = min(a.shape[1], r)  # can't merge more than there are sources
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)  # (B, sources), best matched first
        unm_idx = edge_idx[:, r:]  # sources kept
        src_idx = edge_idx[:, :r]  # sources merged
        dst_idx = node_idx.gather(dim=-1, index=src_idx)  # ... into these destinations
        # where the kept and the merged sources sit in the image (unmerge)
        unm_pos, src_pos = a_idx[unm_idx], a_idx[src_idx]

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = split(x)
        c = x.shape[-1]
        unm = _take(src, unm_idx)
        src = _take(src, src_idx)
        dst = dst.scatter_reduce(-2, dst_idx[..., None].expand(b, r, c), src, reduce="mean")
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        unm_len = unm_idx.shape[1]
        unm, dst = x[:, :unm_len], x[:, unm_len:]
        out = torch.empty(b, n, x.shape[-1], device=x.device, dtype=x.dtype)  # every row is written below
        out.index_copy_(1, b_idx, dst)
        _put(out, unm_pos, unm)
        _put(out, src_pos, _take(dst, dst_idx))  # merged sources take their destination's value
        return out

    return merge, unmerge


class TokenMerging:
    """One UNet's token merging: the ratio, and the latent size of the step in progress.

    The UNet records `size` at the start of each forward; each transformer block then asks `merge_fns(x)`.
    """

    def __init__(self, ratio: float):
        self.ratio = check_ratio(ratio)
        self.size: tuple[int, int] | None = None
        self._partitions: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def merge_fns(self, x: torch.Tensor) -> tuple[Merge, Merge]:
        """(merge, unmerge) for a block's input x (B, N, C): tomesd patch.py `compute_merge`."""
        if self.size is None:
            raise RuntimeError("token merging: the UNet did not record the latent size")
        original_h, original_w = self.size
        downsample = math.ceil(math.sqrt(original_h * original_w // x.shape[1]))
        if downsample > MAX_DOWNSAMPLE:
            return _identity, _identity
        w = math.ceil(original_w / downsample)
        h = math.ceil(original_h / downsample)
        key = (h, w, x.device)
        partition = self._partitions.get(key)
        if partition is None:
            partition = self._partitions[key] = _partition(h, w, x.device)
        return bipartite_soft_matching(x, w, h, int(x.shape[1] * self.ratio), partition)


def set_token_merging(unet: nn.Module, ratio: float) -> None:
    """Turn token merging on for `unet` at `ratio`, or off with 0 (A1111's `apply_token_merging`)."""
    from engine.unet import BasicTransformerBlock

    tome = TokenMerging(ratio) if check_ratio(ratio) > 0 else None
    unet.tome = tome
    for module in unet.modules():
        if isinstance(module, BasicTransformerBlock):
            module.tome = tome


def token_merging_ratio(unet: nn.Module) -> float:
    """The ratio `unet` runs with now (0: off)."""
    tome = getattr(unet, "tome", None)
    return 0.0 if tome is None else tome.ratio


@contextmanager
def token_merging(unet: nn.Module, ratio: float) -> Iterator[None]:
    """Run the body with token merging at `ratio`; the UNet's previous setting is back afterwards, also on
    an error or a cancel."""
    previous = token_merging_ratio(unet)
    set_token_merging(unet, ratio)
    try:
        yield
    finally:
        set_token_merging(unet, previous)


def hires_ratio(ratio: float, ratio_hr: float) -> float:
    """The ratio of a hires pass: its own when set, else the first pass's (A1111 processing.py
    `StableDiffusionProcessing.get_token_merging_ratio(for_hr=True)`)."""
    return ratio_hr or ratio
