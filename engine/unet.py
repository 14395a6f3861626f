"""The SD1.x denoising UNet (Rombach et al. 2022), named after LDM's `openaimodel.UNetModel` keys.

Because module names are the checkpoint's own (`input_blocks.1.1.transformer_blocks.0.attn2.to_k`, ...), a
state dict under `model.diffusion_model.` loads with a plain prefix strip. Output: predicted noise epsilon,
the same as diffusers' `UNet2DConditionModel(x, t, encoder_hidden_states=context).sample`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from engine import layers
from engine.attention import FusedProjection, attention
from engine.config import GROUPS, UNetConfig
from engine.layers import Conv2d, NearestUpsampleConv

if TYPE_CHECKING:
    from engine.tome import TokenMerging


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] (LDM `timestep_embedding`, diffusers with flip_sin_to_cos=True)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added in between (Ho et al. 2020's block)."""

    def __init__(self, channels: int, emb_dim: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(GROUPS, channels), nn.SiLU(inplace=True), Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(GROUPS, out_channels),
            nn.SiLU(inplace=True),
            nn.Dropout(0.0),
            Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if channels == out_channels else Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h += self.emb_layers(emb)[:, :, None, None]  # in place: h is this block's own fresh tensor
        return self.out_layers(h).add_(self.skip_connection(x))


class CrossAttention(nn.Module):
    """Self-attention when `context` is None, else queries from x and keys/values from the text."""

    def __init__(self, dim: int, context_dim: int, heads: int, self_attention: bool = False):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))
        # What one matmul computes once fused after loading (see FusedProjection): q, k, v of x for
        # self-attention, k and v of the text for cross-attention.
        self.fusable = ("to_q", "to_k", "to_v") if self_attention else ("to_k", "to_v")
        self.fused = FusedProjection()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            qkv = self.fused(x) if len(self.fusable) == 3 else None
            q, k, v = qkv if qkv is not None else (self.to_q(x), self.to_k(x), self.to_v(x))
        else:
            q = self.to_q(x)
            kv = self.fused(context) if len(self.fusable) == 2 else None
            k, v = kv if kv is not None else (self.to_k(context), self.to_v(context))
        return self.to_out(attention(q, k, v, self.heads))


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): proj to 2x width, one half gates the other through exact GELU."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden * 2)

    # Above this many output elements (level 1 at 512x512 with CFG: 21 M), the projection runs as two
    # half-size matmuls: the one big output would be a fresh allocation that the CPU page-faults in on every
    # call (32 MB and up bypass malloc's reuse), ~20% of this layer's time. Same numbers either way.
    SPLIT_ABOVE = 1 << 24

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.proj.out_features // 2
        if x.numel() // x.shape[-1] * self.proj.out_features > self.SPLIT_ABOVE:
            w, b = self.proj.weight, self.proj.bias
            gate = F.linear(x, w[hidden:], b[hidden:])
            # GELU in place where autograd allows: no second fresh 20-40 MB tensor (page-faulted in each call)
            gate = F.gelu(gate) if torch.is_grad_enabled() else torch.ops.aten.gelu_(gate)
            return gate.mul_(F.linear(x, w[:hidden], b[:hidden]))
        x, gate = self.proj(x).chunk(2, dim=-1)
        return F.gelu(gate).mul_(x)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    # Token merging (engine/tome.py) when on: the self-attention runs on merged tokens. None: off.
    tome: TokenMerging | None = None

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, self_attention=True)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.tome is None:
            x = self.attn1(self.norm1(x)).add_(x)
        else:  # tomesd patch.py make_tome_block: merge by the block input x, self-attention only
            merge, unmerge = self.tome.merge_fns(x)
            x = unmerge(self.attn1(merge(self.norm1(x)))).add_(x)
        x = self.attn2(self.norm2(x), context).add_(x)
        return self.ff(self.norm3(x)).add_(x)


class SpatialTransformer(nn.Module):
    """GroupNorm, 1x1 conv in, transformer blocks over the H*W tokens, 1x1 conv out, residual."""

    def __init__(self, channels: int, context_dim: int, heads: int, depth: int):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, channels, eps=1e-6)  # LDM's Normalize(): eps 1e-6, unlike ResBlock
        self.proj_in = Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, context_dim, heads) for _ in range(depth)
        )
        self.proj_out = Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x))
        # (B, C, H, W) -> (B, H*W, C): free (a view) when x is channels_last, one copy otherwise
        t = t.permute(0, 2, 3, 1).reshape(b, h * w, c)
        for block in self.transformer_blocks:
            t = block(t, context)
        t = t.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, H*W, C) -> (B, C, H, W), channels_last strides
        if not x.is_contiguous(memory_format=torch.channels_last):
            t = t.contiguous()  # keep the layout the caller uses
        return self.proj_out(t).add_(x)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)
        # The same numbers with 2.25x fewer multiply-adds, for 16/9 of the conv weight in extra memory (the
        # 2x2 phase kernels). Used with 16-bit weights (+118 MB for SD1.5, 4% a step); in fp32 the extra
        # 236 MB would break the memory budget (docs/benchmarks.md).
        self.fast = NearestUpsampleConv(self.conv)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        # `size`: the matching skip's size, so odd latent sizes (width % 64 != 0) come back to the right
        # shape, as diffusers does with `upsample_size`.
        doubled = size is None or tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1])
        if doubled and layers.PHASE_UPSAMPLE and x.dtype != torch.float32 and not torch.is_grad_enabled():
            return self.fast(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class TimestepEmbedSequential(nn.ModuleList):
    """One UNet block: layers applied in turn, each given what it needs (time embedding, text, skip size)."""

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    tome: TokenMerging | None = None  # set by engine.tome.set_token_merging

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        mc, emb_dim = cfg.model_channels, cfg.time_embed_dim

        def transformer(ch: int) -> SpatialTransformer:
            return SpatialTransformer(ch, cfg.context_dim, cfg.num_heads, cfg.transformer_depth)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential([Conv2d(cfg.in_channels, mc, 3, padding=1)])]
        )
        skip_channels = [mc]
        ch = mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc)]
                ch = mult * mc
                if cfg.attention_levels[level]:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(layers))
                skip_channels.append(ch)
            if level != cfg.levels - 1:
                self.input_blocks.append(TimestepEmbedSequential([Downsample(ch)]))
                skip_channels.append(ch)

        self.middle_block = TimestepEmbedSequential(
            [ResBlock(ch, emb_dim, ch), transformer(ch), ResBlock(ch, emb_dim, ch)]
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * mc)]
                ch = mult * mc
                if cfg.attention_levels[level]:
                    layers.append(transformer(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(layers))

        self.out = nn.Sequential(
            nn.GroupNorm(GROUPS, ch), nn.SiLU(inplace=True), Conv2d(mc, cfg.out_channels, 3, padding=1)
        )

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor,
        interrupt: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """x (B, 4, h, w) latents, timesteps 0-d / number / (B,), context (B, 77*k, D) -> noise (B, 4, h, w).

        `interrupt`, when given, is called between blocks; it raises to abandon the step (cancel).
        """
        b = x.shape[0]
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0 or t.shape == (1,):
            t = t.reshape(1).expand(b)
        elif t.shape != (b,):
            raise ValueError(f"timesteps must be a scalar or have shape ({b},), got {tuple(t.shape)}")
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        if self.tome is not None:
            self.tome.size = (x.shape[2], x.shape[3])  # tomesd's hook_tome_model: the latent (h, w)

        def check() -> None:
            if interrupt is not None:
                interrupt()

        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
            check()
        h = self.middle_block(h, emb, context)
        check()
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb, context, size=tuple(skips[-1].shape[-2:]) if skips else None)
            check()
        return self.out(h).contiguous()  # channels_last inside (see checkpoint.py), the usual layout out
