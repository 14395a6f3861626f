"""CLIP's text transformer (Radford et al. 2021), the conditioning model of SD1.x.

Module names follow transformers' `CLIPTextModel` (`text_model.encoder.layers.N.self_attn.q_proj`, ...), which
is also how SD1.x checkpoints store it under `cond_stage_model.transformer.`. Output: the final-layer-norm
hidden states of every token (= transformers' `last_hidden_state`), what SD1.x cross-attends to.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.attention import FusedProjection, attention
from engine.config import TextEncoderConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


class Embedding(nn.Embedding):
    """nn.Embedding that skips random init on the meta device: the loader builds models there, and torch's
    meta `normal_` imports torch._dynamo (seconds of start-up) for values that are replaced anyway."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        self.fusable = ("q_proj", "k_proj", "v_proj")  # run as one matmul once loaded (see FusedProjection)
        self.fused = FusedProjection()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.fused(x)
        if qkv is None:
            qkv = (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        return self.out_proj(attention(*qkv, self.heads, causal=True))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.self_attn = SelfAttention(cfg.width, cfg.heads)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.width, cfg.mlp_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.token_embedding = Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = Embedding(cfg.max_positions, cfg.width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Positions are always 0..N-1: the `position_ids` buffer some merged checkpoints store is corrupted
        # (float drift), so it is never read.
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.token_embedding(ids) + self.position_embedding(positions)


class Encoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))


class TextModel(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)


class TextEncoder(nn.Module):
    """ids (B, N<=77) -> final-layer-norm hidden states (B, N, width)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.config = cfg
        self.text_model = TextModel(cfg)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[1] > self.config.max_positions:
            raise ValueError(
                f"expected token ids of shape (B, <={self.config.max_positions}), got {tuple(ids.shape)}"
            )
        tm = self.text_model
        x = tm.embeddings(ids)
        for layer in tm.encoder.layers:
            x = layer(x)
        return tm.final_layer_norm(x)
