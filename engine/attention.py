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

    `fuse()` concatenates their weights once and turns each layer's parameters into views of that single
    tensor: no extra memory, and the layers keep their names, so state dicts load and save as before. One
    (B, N, 3C) matmul reads the input once instead of three times, and bigger matrices run faster.
    If the layers' parameters are later replaced (`.to()`, new `Parameter`s), they no longer point into the
    fused tensor; `__call__` notices and returns None, and the caller runs the layers one by one.
    """

    def __init__(self) -> None:
        self.layers: list[nn.Module] = []
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self._pointers: list[int] = []

    def fuse(self, *layers: nn.Module) -> None:
        weights = [m.weight for m in layers]
        biases = [m.bias for m in layers]
        with_bias = all(b is not None for b in biases)
        if not with_bias and any(b is not None for b in biases):
            raise ValueError("cannot fuse layers where only some have a bias")
        weight = torch.cat([w.reshape(w.shape[0], -1) for w in weights])  # (sum of out, in)
        bias = torch.cat(biases) if with_bias else None
        start = 0
        for m, w in zip(layers, weights):
            n = w.shape[0]
            m.weight = nn.Parameter(weight[start : start + n].view(w.shape), requires_grad=w.requires_grad)
            if bias is not None:
                m.bias = nn.Parameter(bias[start : start + n], requires_grad=m.bias.requires_grad)
            start += n
        self.layers, self.weight, self.bias = list(layers), weight, bias
        self._pointers = [m.weight.data_ptr() for m in layers]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """x (..., in) -> one (..., out_i) view per layer; None when not fused (or no longer valid)."""
        if self.weight is None or [m.weight.data_ptr() for m in self.layers] != self._pointers:
            return None
        if self.bias is not None and self.layers[0].bias.data_ptr() != self.bias.data_ptr():
            return None
        out = F.linear(x, self.weight, self.bias)
        return out.split([m.weight.shape[0] for m in self.layers], dim=-1)
