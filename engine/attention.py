"""Multi-head attention on (batch, tokens, heads * head_dim) tensors, shared by the three models."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, causal: bool = False
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head (Vaswani et al. 2017, eq. 1) via PyTorch's fused kernels.

    q: (B, Nq, H*D); k, v: (B, Nk, H*D) -> (B, Nq, H*D).
    """
    b, nq, inner = q.shape
    d = inner // heads
    # (B, N, H*D) -> (B, H, N, D)
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    # (B, H, Nq, D) -> (B, Nq, H*D)
    return out.transpose(1, 2).reshape(b, nq, inner)
