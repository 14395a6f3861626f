"""Tiled VAE decode and encode that give the whole-image numbers (within float rounding), in bounded memory.

Per-tile decoding (the old way, and A1111's default) normalises every tile with its own GroupNorm
statistics, which shows as seams and tone shifts between tiles. Here the network runs layer by layer over
whole-image activations kept on `store` (the CPU when the model is on a GPU, so GPU memory is bounded by the
tile size), and each layer in tiles:
- every GroupNorm first gathers per-group sums and sums of squares over all tiles (float64), so it
  normalises with the statistics of the whole image, exactly as `nn.GroupNorm` on the full tensor;
- convolutions, resampling and SiLU are local: each tile is computed from its patch plus a halo as wide as
  the receptive field (1 pixel for a 3x3 conv, 2 for the stride-2 downsample), and the halo's output,
  wrong where the module's own zero padding met a tile edge, is cropped away;
- the middle block's self-attention is global: it runs on the whole latent at once (latent resolution,
  h*w tokens; the same call as the untiled path).
The idea is that of multidiffusion-upscaler's "Tiled VAE" (GroupNorm parameters estimated over all tiles),
done here exactly rather than estimated.

Memory: the whole-image tensors of one res block (its input, its inner activation and, where channels
change, its output) live on `store`: at most 3 * B * C0 * H * W * itemsize bytes, C0 the decoder's
full-resolution width (128 for SD1.x, 32 for the tiny test model); the device holds one patch at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

TILE = 256  # activation pixels per tile side, at every resolution level (even: downsampling halves it)

Patch = Callable[[torch.Tensor], torch.Tensor]


class Tiler:
    """Runs VAE layers tile by tile over whole-image tensors kept on `store`, computing on `device`."""

    def __init__(self, device: torch.device, store: torch.device, tile: int = TILE,
                 interrupt: Callable[[], None] | None = None):
        if tile < 4 or tile % 2:
            raise ValueError(f"tile must be an even number of pixels >= 4, got {tile}")
        self.device, self.store, self.tile = device, store, tile
        self.interrupt = interrupt
        self.acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64

    def tiles(self, h: int, w: int) -> Iterator[tuple[int, int, int, int]]:
        for y in range(0, h, self.tile):
            for x in range(0, w, self.tile):
                yield y, min(y + self.tile, h), x, min(x + self.tile, w)

    def map(self, x: torch.Tensor, fn: Patch, channels: int, *, scale: float = 1, halo: int = 1,
            out: torch.Tensor | None = None, residual: torch.Tensor | None = None,
            shortcut: Patch | None = None) -> torch.Tensor:
        """out[tile] = fn(x[tile + halo])[cropped to tile] (+ shortcut(residual[tile])), for every tile.

        `out` may be `residual` itself (an in-place residual add: each tile reads only its own pixels of it).
        """
        b, _, h, w = x.shape
        if out is None:
            out = torch.empty(b, channels, int(h * scale), int(w * scale), dtype=x.dtype, device=self.store)
        for y0, y1, x0, x1 in self.tiles(h, w):
            py0, px0 = max(y0 - halo, 0), max(x0 - halo, 0)
            part = fn(x[:, :, py0 : min(y1 + halo, h), px0 : min(x1 + halo, w)].to(self.device))
            oy, ox = int((y0 - py0) * scale), int((x0 - px0) * scale)
            th, tw = int((y1 - y0) * scale), int((x1 - x0) * scale)
            part = part[:, :, oy : oy + th, ox : ox + tw]
            ty, tx = int(y0 * scale), int(x0 * scale)
            if residual is not None:
                r = residual[:, :, ty : ty + th, tx : tx + tw].to(self.device)
                part = part + (r if shortcut is None else shortcut(r))
            out[:, :, ty : ty + th, tx : tx + tw] = part.to(self.store)
        return out

    def norm_silu(self, x: torch.Tensor, gn: nn.GroupNorm) -> Patch:
        """A patch function computing silu(gn(patch)) with gn's statistics over the whole of `x`."""
        b, c, h, w = x.shape
        g = gn.num_groups
        sums = torch.zeros(b, g, dtype=self.acc, device=self.device)
        squares = torch.zeros_like(sums)
        for y0, y1, x0, x1 in self.tiles(h, w):
            t = x[:, :, y0:y1, x0:x1].to(self.device, self.acc).reshape(b, g, -1)
            sums += t.sum(-1)
            squares += (t * t).sum(-1)
        n = (c // g) * h * w
        mean = sums / n
        rstd = torch.rsqrt((squares / n - mean * mean).clamp_min(0) + gn.eps)
        # per channel: gn(x) = x * scale + shift (torch's GroupNorm, biased variance)
        weight = gn.weight.detach().to(self.device, self.acc)
        bias = gn.bias.detach().to(self.device, self.acc)
        scale = rstd.repeat_interleave(c // g, dim=1) * weight
        shift = bias - mean.repeat_interleave(c // g, dim=1) * scale
        scale, shift = scale.float()[:, :, None, None], shift.float()[:, :, None, None]

        def apply(p: torch.Tensor) -> torch.Tensor:
            return F.silu(p.float() * scale + shift).to(p.dtype)

        return apply

    def resnet(self, x: torch.Tensor, block: nn.Module) -> torch.Tensor:
        """engine.vae.ResnetBlock: conv2(silu(norm2(conv1(silu(norm1(x)))))) + shortcut(x)."""
        f1 = self.norm_silu(x, block.norm1)
        h = self.map(x, lambda p: block.conv1(f1(p)), block.conv1.out_channels)
        f2 = self.norm_silu(h, block.norm2)
        shortcut = getattr(block, "nin_shortcut", None)
        out = x if shortcut is None else None  # same width: add into x in place, tile by tile
        out = self.map(h, lambda p: block.conv2(f2(p)), block.conv2.out_channels, out=out, residual=x,
                       shortcut=shortcut)
        self._check()
        return out

    def whole(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """Run a global module (attention) on the whole tensor at once."""
        return module(x.to(self.device)).to(self.store)

    def mid(self, x: torch.Tensor, mid: nn.Module) -> torch.Tensor:
        x = self.resnet(x, mid.block_1)
        x = self.whole(x, mid.attn_1)
        return self.resnet(x, mid.block_2)

    def levels(self, x: torch.Tensor, levels: list[nn.Module], scale: float) -> torch.Tensor:
        """engine.vae.Level in order: res blocks, then the resample (Upsample x2, Downsample x0.5)."""
        for level in levels:
            for block in level.block:
                x = self.resnet(x, block)
            resample = getattr(level, level.resample_name, None)
            if resample is not None:
                # Upsample: a 1-pixel halo at low resolution; Downsample: 2 (stride 2, even patch offsets)
                x = self.map(x, resample, resample.conv.out_channels, scale=scale, halo=1 if scale > 1 else 2)
        return x

    def _check(self) -> None:
        if self.interrupt is not None:
            self.interrupt()


def storage_for(device: torch.device) -> torch.device:
    """Where whole-image activations live: the CPU (RAM), so that the device holds only one tile."""
    return torch.device("cpu") if device.type != "cpu" else device


def decode(vae: nn.Module, z: torch.Tensor, tile: int = TILE,
           interrupt: Callable[[], None] | None = None) -> torch.Tensor:
    """engine.vae.VAE.decode in tiles: z (B, 4, h, w) -> image (B, 3, 8h, 8w) on z's device."""
    dec = vae.decoder
    t = Tiler(z.device, storage_for(z.device), tile, interrupt)
    log.debug("tiled VAE decode of %dx%d latents, %d-pixel tiles", z.shape[-2], z.shape[-1], tile)
    x = t.map(z, lambda p: dec.conv_in(vae.post_quant_conv(p)), dec.conv_in.out_channels)
    x = t.mid(x, dec.mid)
    t._check()
    x = t.levels(x, list(reversed(dec.up)), scale=2)
    f = t.norm_silu(x, dec.norm_out)
    return t.map(x, lambda p: dec.conv_out(f(p)), dec.conv_out.out_channels).to(z.device)


def encode_moments(vae: nn.Module, image: torch.Tensor, tile: int = TILE,
                   interrupt: Callable[[], None] | None = None) -> torch.Tensor:
    """engine.vae.VAE's encoder + quant_conv in tiles: image (B, 3, H, W) -> moments (B, 8, H/8, W/8)."""
    enc = vae.encoder
    t = Tiler(image.device, storage_for(image.device), tile, interrupt)
    x = t.map(image, enc.conv_in, enc.conv_in.out_channels)
    x = t.levels(x, list(enc.down), scale=0.5)
    x = t.mid(x, enc.mid)
    f = t.norm_silu(x, enc.norm_out)
    moments = t.map(x, lambda p: vae.quant_conv(enc.conv_out(f(p))), vae.quant_conv.out_channels)
    return moments.to(image.device)
