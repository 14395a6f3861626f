"""Multi-head attention on (batch, tokens, heads * head_dim) tensors, shared by the three models, and the
fused q/k/v projection they use at inference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, causal: bool = False
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head (Vaswani et al. 2017, eq. 1) via PyTorch's fused kernels.

    q: (B, Nq, H*D); k, v: (B, Nk, H*D) -> (B, Nq, H*D). q, k, v may be strided views (slices of one fused
    projection): the fused kernels read them in place.
    """
    b, nq, inner = q.shape
    d = inner // heads
    # (B, N, H*D) -> (B, H, N, D)
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    # (B, H, Nq, D) -> (B, Nq, H*D); a view when the kernel wrote (B, Nq, H, D) memory (CPU flash does)
    return out.transpose(1, 2).reshape(b, nq, inner)


class FusedProjection:
    """Several projections of the same input (Linear layers or 1x1 convs) run as one matmul.

    A module owning one names the layers to join in `fusable` (e.g. ("to_q", "to_k", "to_v")). `fuse()`
    makes each layer's parameters views of one (sum of outputs, inputs) tensor: no extra memory, and the
    layers keep their names, so state dicts load and save as before. The loader converts the layers straight
    into one such tensor (see `fusion_groups`); otherwise `fuse()` concatenates them. One (B, N, 3C) matmul
    reads the input once instead of three times, and bigger matrices run faster. If the layers' parameters
    are later replaced (`.to()`, new `Parameter`s), they no longer point into the fused tensor; `__call__`
    notices and returns None, and the caller runs the layers one by one.
    """

    def __init__(self) -> None:
        self.layers: list[nn.Module] = []
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self._pointers: list[int] = []

    def fuse(self, *layers: nn.Module) -> None:
        biases = [m.bias for m in layers]
        if any(b is None for b in biases) and any(b is not None for b in biases):
            raise ValueError("cannot fuse layers where only some have a bias")
        self.weight = _join(layers, "weight")
        self.bias = None if biases[0] is None else _join(layers, "bias")
        self.layers = list(layers)
        self._pointers = [m.weight.data_ptr() for m in layers]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """x (..., in) -> one (..., out_i) view per layer; None when not fused (or no longer valid)."""
        if self.weight is None or [m.weight.data_ptr() for m in self.layers] != self._pointers:
            return None
        if self.bias is not None and self.layers[0].bias.data_ptr() != self.bias.data_ptr():
            return None
        out = F.linear(x, self.weight, self.bias)
        return out.split([m.weight.shape[0] for m in self.layers], dim=-1)


def _join(layers: tuple[nn.Module, ...], name: str) -> torch.Tensor:
    """The layers' `name` parameters as one (rows, cols) tensor whose row blocks they become views of.

    Already adjacent in one buffer (as the loader allocates them): a view of it, nothing copied. Otherwise
    concatenated once, and the layers re-pointed into the result.
    """
    params = [getattr(m, name) for m in layers]
    first = params[0]
    rows = sum(p.shape[0] for p in params)
    cols = first[0].numel() if first.ndim > 1 else 1
    adjacent, ptr = True, first.data_ptr()
    for p in params:
        same = p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        flat = p.is_contiguous() or p.is_contiguous(memory_format=torch.channels_last) and p.ndim == 4
        if not (same and flat and p.data_ptr() == ptr and p.dtype == first.dtype):
            adjacent = False
            break
        ptr += p.numel() * p.element_size()
    shape = (rows, cols) if first.ndim > 1 else (rows,)
    if adjacent:
        stride = (cols, 1) if first.ndim > 1 else (1,)
        return first.as_strided(shape, stride, first.storage_offset())
    joined = torch.cat([p.reshape(p.shape[0], -1) if p.ndim > 1 else p for p in params]).view(shape)
    start = 0
    for m, p in zip(layers, params):
        n = p.shape[0]
        setattr(m, name, nn.Parameter(joined[start : start + n].view(p.shape), requires_grad=p.requires_grad))
        start += n
    return joined


def fusion_groups(model: nn.Module) -> list[tuple[list[str], nn.Module]]:
    """(layer names in `model`, their owner) for each FusedProjection, to convert each group into one tensor."""
    groups = []
    for prefix, owner in model.named_modules():
        names = getattr(owner, "fusable", ())
        if names and isinstance(getattr(owner, "fused", None), FusedProjection):
            groups.append(([f"{prefix}.{n}" if prefix else n for n in names], owner))
    return groups


def fuse_projections(model: nn.Module) -> None:
    """Join every FusedProjection's layers in `model` (after its weights are loaded)."""
    for _, owner in fusion_groups(model):
        owner.fused.fuse(*(getattr(owner, n) for n in owner.fusable))
