"""Architecture configs for the three SD1.x models, read from a checkpoint's tensor shapes.

Each config is a frozen dataclass. `from_state_dict` takes the model's own state dict (prefix already
stripped, e.g. `input_blocks.0.0.weight`, not `model.diffusion_model.input_blocks.0.0.weight`) and infers
every width and depth from shapes; the few things shapes cannot tell are SD1.x's fixed conventions:
GroupNorm with 32 groups, 8 UNet attention heads, 64-wide text-encoder heads, 4 latent channels.
Only shapes are read, so a state dict of `meta` tensors works as well as real weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

GROUPS = 32  # GroupNorm groups everywhere in SD1.x (LDM's `normalization()` / `Normalize()`)


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """Number of distinct integers N for keys matching `pattern` (a regex with one `(\\d+)` group)."""
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in state if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise KeyError(key)
    return tuple(state[key].shape)


@dataclass(frozen=True)
class TextEncoderConfig:
    """CLIP ViT-L/14's text transformer (OpenAI CLIP as packaged by transformers' CLIPTextModel)."""

    vocab_size: int = 49408
    max_positions: int = 77
    width: int = 768
    layers: int = 12
    heads: int = 12  # width / 64: CLIP's heads are 64 wide
    mlp_width: int = 3072
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> TextEncoderConfig:
        vocab, width = _shape(state, "text_model.embeddings.token_embedding.weight")
        positions, _ = _shape(state, "text_model.embeddings.position_embedding.weight")
        layers = _count(state, r"text_model\.encoder\.layers\.(\d+)\.")
        mlp_width = _shape(state, "text_model.encoder.layers.0.mlp.fc1.weight")[0]
        if width % 64:
            raise ValueError(f"text encoder width {width} is not a multiple of CLIP's 64-wide heads")
        return cls(vocab, positions, width, layers, width // 64, mlp_width)

    @classmethod
    def tiny(cls) -> TextEncoderConfig:
        return cls(width=64, layers=2, heads=1, mlp_width=256)

    @classmethod
    def sd15(cls) -> TextEncoderConfig:
        return cls()


@dataclass(frozen=True)
class UNetConfig:
    """The LDM `UNetModel` as configured by SD1.x's v1-inference.yaml."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = (True, True, True, False)  # SD1.x: no attention at 1/8 scale
    context_dim: int = 768
    num_heads: int = 8  # SD1.x fixes the head count (not the head width): dim_head = channels / 8
    transformer_depth: int = 1

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> UNetConfig:
        model_channels, in_channels = _shape(state, "input_blocks.0.0.weight")[:2]
        out_channels = _shape(state, "out.2.weight")[0]
        n_input = _count(state, r"input_blocks\.(\d+)\.")
        downsamples = sorted(
            int(m.group(1)) for k in state if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k))
        )
        # Input blocks: conv_in, then per level `num_res_blocks` res blocks and (but the last) a downsample.
        num_res_blocks = downsamples[0] - 1 if downsamples else n_input - 1
        levels = len(downsamples) + 1
        if n_input != levels * (num_res_blocks + 1):
            raise ValueError(f"unexpected UNet layout: {n_input} input blocks for {levels} levels")
        mult, attention = [], []
        for level in range(levels):
            first = 1 + level * (num_res_blocks + 1)
            width = _shape(state, f"input_blocks.{first}.0.out_layers.3.weight")[0]
            mult.append(width // model_channels)
            attention.append(f"input_blocks.{first}.1.proj_in.weight" in state)
        context_dim = _shape(state, "middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
        depth = _count(state, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
        return cls(
            in_channels,
            out_channels,
            model_channels,
            tuple(mult),
            num_res_blocks,
            tuple(attention),
            context_dim,
            8,
            depth,
        )

    @classmethod
    def tiny(cls) -> UNetConfig:
        return cls(model_channels=32, channel_mult=(1, 2), attention_levels=(True, False), context_dim=64)

    @classmethod
    def sd15(cls) -> UNetConfig:
        return cls()


@dataclass(frozen=True)
class VAEConfig:
    """The LDM `AutoencoderKL` (KL-f8) as configured by SD1.x."""

    in_channels: int = 3
    out_channels: int = 3
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4  # SD1.x latents have 4 channels
    embed_dim: int = 4

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> VAEConfig:
        channels, in_channels = _shape(state, "encoder.conv_in.weight")[:2]
        out_channels = _shape(state, "decoder.conv_out.weight")[0]
        levels = _count(state, r"encoder\.down\.(\d+)\.")
        num_res_blocks = _count(state, r"encoder\.down\.0\.block\.(\d+)\.")
        mult = tuple(
            _shape(state, f"encoder.down.{i}.block.0.conv1.weight")[0] // channels for i in range(levels)
        )
        z_channels = _shape(state, "decoder.conv_in.weight")[1]
        embed_dim = _shape(state, "post_quant_conv.weight")[1]
        return cls(in_channels, out_channels, channels, mult, num_res_blocks, z_channels, embed_dim)

    @classmethod
    def tiny(cls) -> VAEConfig:
        return cls(channels=32, channel_mult=(1, 1, 2, 2))

    @classmethod
    def sd15(cls) -> VAEConfig:
        return cls()
