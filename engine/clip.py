"""CLIP's text transformer (Radford et al. 2021), the conditioning model of SD1.x.

Module names follow transformers' `CLIPTextModel` (`text_model.encoder.layers.N.self_attn.q_proj`, ...), which
is also how SD1.x checkpoints store it under `cond_stage_model.transformer.`. Output: the final-layer-norm
hidden states of every token (= transformers' `last_hidden_state`), what SD1.x cross-attends to; with clip skip
N > 1 the hidden states after layer L-N+1 go through the final LayerNorm instead (= `hidden_states[-N]`, as
A1111 `FrozenCLIPEmbedderWithCustomWords.encode_with_transformers` does).
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

    def forward(self, ids: torch.Tensor, token_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Token + position embeddings; `token_embeds` (B, N, width), when given, replaces the token lookup
        (textual inversion writes its vectors there, as A1111's `EmbeddingsWithFixes`)."""
        # Positions are always 0..N-1: the `position_ids` buffer some merged checkpoints store is corrupted
        # (float drift), so it is never read.
        positions = torch.arange(ids.shape[1], device=ids.device)
        tokens = self.token_embedding(ids) if token_embeds is None else token_embeds
        return tokens + self.position_embedding(positions)


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
    """ids (B, N<=77) -> final-layer-norm hidden states (B, N, width) of the last layer, or with
    `clip_skip=N` of layer L-N+1 (transformers' `hidden_states[-N]`; 1 = the last layer)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.config = cfg
        self.text_model = TextModel(cfg)

    def forward(
        self, ids: torch.Tensor, *, clip_skip: int = 1, token_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        cfg = self.config
        if ids.ndim != 2 or ids.shape[1] > cfg.max_positions:
            raise ValueError(f"expected token ids of shape (B, <={cfg.max_positions}), got {tuple(ids.shape)}")
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= cfg.layers:
            raise ValueError(f"clip skip must be an integer 1..{cfg.layers}, got {clip_skip!r}")
        if token_embeds is not None and token_embeds.shape != (*ids.shape, cfg.width):
            raise ValueError(
                f"token_embeds must have shape {(*ids.shape, cfg.width)}, got {tuple(token_embeds.shape)}"
            )
        tm = self.text_model
        x = tm.embeddings(ids, token_embeds)
        for layer in tm.encoder.layers[: cfg.layers - clip_skip + 1]:
            x = layer(x)
        return tm.final_layer_norm(x)

    def token_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        """The input token embeddings (B, N, width) of `ids`, before positions are added."""
        return self.text_model.embeddings.token_embedding(ids)
