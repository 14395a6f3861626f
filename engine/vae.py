"""The KL-regularised autoencoder of SD1.x (LDM `AutoencoderKL`, `ldm/modules/diffusionmodules/model.py`).

Module names are LDM's (`encoder.down.0.block.1.conv1`, `decoder.mid.attn_1.q`, ...), so the checkpoint's
`first_stage_model.` tensors load with a prefix strip. `decode(z)` equals diffusers' `vae.decode(z).sample`
and `encode(x)` its `latent_dist.mean` (or `.sample(generator)`); neither applies the 0.18215 scaling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine import layers, vae_tiled
from engine.attention import FusedProjection, attention
from engine.config import GROUPS, VAEConfig
from engine.layers import Conv2d, NearestUpsampleConv

log = logging.getLogger(__name__)

Interrupt = Callable[[], None]  # called between blocks; raises (engine.Cancelled) to abandon the decode

SCALING_FACTOR = 0.18215  # SD1.x's latent scale: latents = SCALING_FACTOR * z, giving roughly unit variance

def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.norm1 = norm(channels)
        self.conv1 = Conv2d(channels, out_channels, 3, padding=1)
        self.norm2 = norm(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        if channels != out_channels:
            self.nin_shortcut = Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place SiLU and residual add: every tensor they overwrite was just made here.
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return h.add_(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels, with q/k/v/proj_out as 1x1 convs."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.fusable = ("q", "k", "v")  # run as one matmul once loaded (see FusedProjection)
        self.fused = FusedProjection()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # The 1x1 convs run as matmuls over tokens: (B, C, H, W) -> (B, H*W, C), a view when channels_last.
        t = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        qkv = self.fused(t)
        if qkv is None:
            qkv = tuple(F.linear(t, m.weight.view(c, c), m.bias) for m in (self.q, self.k, self.v))
        out = attention(*qkv, heads=1)
        out = F.linear(out, self.proj_out.weight.view(c, c), self.proj_out.bias)
        out = out.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, H*W, C) -> (B, C, H, W), channels_last strides
        if not x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous()  # keep the caller's layout
        return out.add_(x)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # LDM pads right/bottom only


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)
        self.fast = NearestUpsampleConv(self.conv)  # the same numbers, 2.25x fewer multiply-adds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if layers.PHASE_UPSAMPLE and not torch.is_grad_enabled():
            return self.fast(x)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution: `block` res blocks then an optional `downsample`/`upsample`."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if resample is not None:
            self.add_module(name, resample)
        self.resample_name = name

    def forward(self, x: torch.Tensor, interrupt: Interrupt | None = None) -> torch.Tensor:
        for block in self.block:
            x = block(x)
            if interrupt is not None:
                interrupt()
        resample = getattr(self, self.resample_name, None)
        return x if resample is None else resample(x)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.channels
        self.conv_in = Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        widths = [ch] + [ch * m for m in cfg.channel_mult]
        for i in range(len(cfg.channel_mult)):
            blocks = [
                ResnetBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1])
                for j in range(cfg.num_res_blocks)
            ]
            last = i == len(cfg.channel_mult) - 1
            self.down.append(Level(blocks, None if last else Downsample(widths[i + 1]), "downsample"))
        top = widths[-1]
        self.mid = Mid(top)
        self.norm_out = norm(top)
        self.conv_out = Conv2d(top, 2 * cfg.z_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x: torch.Tensor, interrupt: Interrupt | None = None) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h, interrupt)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        top = widths[-1]
        self.conv_in = Conv2d(cfg.z_channels, top, 3, padding=1)
        self.mid = Mid(top)
        # Stored lowest resolution last (`up.0` is full size), run from the top level down.
        up: list[nn.Module] = []
        ch = top
        for i in reversed(range(len(widths))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(ch, widths[i]))
                ch = widths[i]
            up.insert(0, Level(blocks, Upsample(ch) if i else None, "upsample"))
        self.up = nn.ModuleList(up)
        self.norm_out = norm(ch)
        self.conv_out = Conv2d(ch, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, interrupt: Interrupt | None = None) -> torch.Tensor:
        """`interrupt`, when given, is called after the middle block and after every res block (as the UNet
        calls it between its blocks), so a cancel stops a decode within one block, not at its end."""
        h = self.mid(self.conv_in(z))
        if interrupt is not None:
            interrupt()
        for level in reversed(self.up):
            h = level(h, interrupt)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None,
               interrupt: Interrupt | None = None, tiled: bool | None = None) -> torch.Tensor:
        """image (B, 3, H, W) in [-1, 1] -> z (B, 4, H/8, W/8), unscaled (multiply by SCALING_FACTOR).

        Without a generator: the posterior mean; with one: mean + std * noise drawn from it (noise is drawn
        on the generator's device and moved, like diffusers' `randn_tensor`). `interrupt` is called after
        every res block of the encoder (img2img at a large size: cancel within a block). tiled: as decode's.
        """
        if tiled is None:
            tiled = needs_tiling(self.config, image.shape[0], image.shape[-2], image.shape[-1], image)
        if tiled:
            moments = vae_tiled.encode_moments(self, image, interrupt=interrupt).contiguous()
        else:
            moments = self.quant_conv(self.encoder(image, interrupt)).contiguous()
        mean, logvar = moments.chunk(2, dim=1)
        if generator is None:
            return mean
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
        return mean + std * noise.to(mean.device)

    def decode(self, z: torch.Tensor, tiled: bool | None = None, interrupt: Interrupt | None = None) -> torch.Tensor:
        """z = latents / SCALING_FACTOR, (B, 4, h, w) -> image (B, 3, 8h, 8w), roughly in [-1, 1].

        tiled=None tiles only when the whole-image decode would not fit in the memory available on z's device
        (needs_tiling); tiled or not, the numbers are the same (engine.vae_tiled). `interrupt` is called
        between decoder blocks (see Decoder.forward); whatever it raises propagates.
        """
        if tiled is None:
            tiled = needs_tiling(self.config, z.shape[0], z.shape[-2] * 8, z.shape[-1] * 8, z)
        if tiled:
            return vae_tiled.decode(self, z, interrupt=interrupt)
        return self.decoder(self.post_quant_conv(z), interrupt).contiguous()


# Peak bytes of a whole-image decode or encode, in units of one full-resolution activation
# (B * C0 * H * W * itemsize, C0 = channels * channel_mult[0]): a res block's input, its two convolution
# outputs and the upsampling conv's output at the top level. Measured (peak RSS) on the tiny model on the
# CPU, fp32, 1024x1024: 770 MB above the model = 6.0 activations of 128 MB; tiled (engine.vae_tiled): 252 MB.
UNTILED_PEAK_ACTIVATIONS = 6
MEMORY_FRACTION = 0.8  # leave this share of the available memory to everything else


def untiled_bytes(cfg: VAEConfig, batch: int, height: int, width: int, itemsize: int) -> int:
    """Estimated peak memory of a whole-image decode (or encode) of `height` x `width` pixels."""
    return UNTILED_PEAK_ACTIVATIONS * batch * cfg.channels * cfg.channel_mult[0] * height * width * itemsize


def available_bytes(device: torch.device) -> int:
    """Memory free for new tensors: on CUDA the driver's free memory plus PyTorch's cached-but-unused
    blocks; elsewhere (CPU, and MPS's unified memory) the system's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil is optional: Linux's own estimate
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return 2**62  # unknown: never tile on our own


def needs_tiling(cfg: VAEConfig, batch: int, height: int, width: int, like: torch.Tensor) -> bool:
    """Whether a whole-image pass would exceed MEMORY_FRACTION of what `like`'s device has free."""
    need = untiled_bytes(cfg, batch, height, width, like.element_size())
    free = available_bytes(like.device)
    if need > MEMORY_FRACTION * free:
        log.info("VAE in tiles: %.2f GB needed whole, %.2f GB free", need / 1e9, free / 1e9)
        return True
    return False
