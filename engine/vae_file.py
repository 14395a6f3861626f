"""External VAE files (e.g. vae-ft-mse-840000-ema-pruned) that replace a checkpoint's own VAE.

Accepted layouts, in `.safetensors` or weights-only `.ckpt`/`.pt`:
  * LDM keys (`encoder.down.0.block.0.conv1.weight`), bare or under `first_stage_model.` (a VAE cut from a
    full checkpoint, or a whole checkpoint whose VAE is wanted);
  * diffusers' AutoencoderKL layout (`encoder.down_blocks.0.resnets.0.conv1.weight`, mid-block attention as
    `to_q`/`query` Linear layers), converted to LDM names by `diffusers_vae_to_ldm`, the inverse of
    diffusers' convert_ldm_vae_checkpoint (single_file_utils.py).
Other keys real VAE files carry (the training loss's discriminator `loss.*`, EMA copies) are dropped.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from engine.checkpoint import build, read_state_dict, split_state_dict
from engine.config import VAEConfig
from engine.errors import CheckpointError
from engine.vae import VAE

log = logging.getLogger(__name__)

_VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")

_RESNET = {"conv_shortcut": "nin_shortcut"}
_ATTENTION = {
    "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",  # diffusers < 0.14 names
}
_MID_RESNETS = {"0": "block_1", "1": "block_2"}


def diffusers_vae_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> LDM keys (keys that are already LDM pass through unchanged)."""
    ups = [int(m.group(1)) for k in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))]
    n_up = max(ups) + 1 if ups else 0
    out = {}
    for key, value in state.items():
        out[_ldm_key(key, n_up)] = value
    return out


def _ldm_key(key: str, n_up: int) -> str:
    if m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)$", key):
        return f"{m.group(1)}.norm_out.{m.group(2)}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)$", key):
        return f"encoder.down.{m.group(1)}.block.{m.group(2)}.{_RESNET.get(m.group(3), m.group(3))}.{m.group(4)}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
        return f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)$", key):
        level = n_up - 1 - int(m.group(1))  # diffusers counts up-blocks from the bottom, LDM from the top
        return f"decoder.up.{level}.block.{m.group(2)}.{_RESNET.get(m.group(3), m.group(3))}.{m.group(4)}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key):
        return f"decoder.up.{n_up - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(\w+)\.(.+)$", key):
        block = _MID_RESNETS.get(m.group(2), m.group(2))
        return f"{m.group(1)}.mid.{block}.{_RESNET.get(m.group(3), m.group(3))}.{m.group(4)}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key):
        name = _ATTENTION.get(m.group(2))
        if name is not None:
            return f"{m.group(1)}.mid.attn_1.{name}.{m.group(3)}"
    return key


def vae_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A VAE file's weights in our (LDM) names, attention 1x1 convs 4-D. Raises CheckpointError."""
    path = Path(path)
    state = read_state_dict(path)
    if any(k.startswith("first_stage_model.") for k in state):
        vae = split_state_dict(state)["vae"]
    else:
        if any(".down_blocks." in k or ".up_blocks." in k or ".mid_block." in k for k in state):
            state = diffusers_vae_to_ldm(state)
        roots = {"first_stage_model." + k: v for k, v in state.items() if k.startswith(_VAE_ROOTS)}
        vae = split_state_dict(roots)["vae"]
    if not vae:
        raise CheckpointError(
            f"{path.name}: not a VAE file: no encoder./decoder. weights (e.g. {', '.join(list(state)[:3])})"
        )
    return vae


def load_vae(path: str | Path, device: torch.device | str, dtype: torch.dtype) -> VAE:
    """Read an SD1.x VAE file and build our VAE on `device` in `dtype`. Raises CheckpointError."""
    path = Path(path)
    state = vae_state_dict(path)
    try:
        cfg = VAEConfig.from_state_dict(state)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path.name}: not an SD1.x VAE: missing or odd tensor {e}") from e
    if cfg.embed_dim != 4:
        raise CheckpointError(
            f"{path.name}: a VAE with {cfg.embed_dim} latent channels (SD3/Flux?): SD1.x VAEs have 4"
        )
    try:
        vae = build(VAE, cfg, state, device=torch.device(device), dtype=dtype, what="VAE")
    except CheckpointError as e:
        raise CheckpointError(f"{path.name}: {e}") from e
    log.info("%s: external VAE %s", path.name, cfg)
    return vae  # type: ignore[return-value]
