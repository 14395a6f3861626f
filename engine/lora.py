"""LoRA files merged into the loaded text encoder and UNet, and taken out again bit-for-bit.

Formats read (`.safetensors`, or `.pt`/`.ckpt` through checkpoint.read_state_dict's weights-only reader):
  * kohya / A1111: `lora_unet_<module>` and `lora_te_<module>` with `.lora_down.weight`, `.lora_up.weight`,
    optional `.alpha`, and LoCon's `.lora_mid.weight` (CP-decomposed 3x3 convolutions); module names in the
    LDM spelling (`input_blocks_1_1_proj_in`) or the diffusers one (`down_blocks_0_attentions_0_proj_in`);
  * diffusers / PEFT: `unet.<module>.lora_A.weight` / `lora_B.weight`, `text_encoder.<module>...`, diffusers'
    own `.lora.down.weight` / `.lora.up.weight`, and the older attention-processor keys (`to_q_lora.down`).
  * LyCORIS LoHa (`.hada_w1_a` ...) and LoKr (`.lokr_w1`, `.lokr_w2_a` ...) in the same naming styles.
Their CP-decomposed variants, (IA)^3, OFT, DoRA, GLoRA and SD2/SDXL/Flux LoRAs are refused with a message saying
which they are.

Maths (A1111 extensions-builtin/Lora: network_lora.py NetworkModuleLora.calc_updown, lyco_helpers.py
rebuild_conventional / rebuild_cp_decomposition, network.py finalize_updown; diffusers' fuse_lora computes the
same): W += multiplier * scale * up @ down (LoHa, LoKr: network_hada.py, network_lokr.py), scale = alpha / rank
(1 without alpha), multiplier the text-encoder weight for text-encoder modules and the UNet weight otherwise.
Deltas are merged into the weights, so a step with LoRAs costs what a step without them costs; the originals
of the touched tensors are kept in their dtype and copied back by LoraSet.restore(). A LoRA on every layer
(LCM-LoRA touches 1.7 GB of a bf16 SD1.5 UNet, 3.4 GB in fp32) would double the UNet in RAM, as A1111's weights
backup does: past KEEP_IN_MEMORY bytes the originals go to an unnamed temporary file instead (_Originals).

Our modules are named after the LDM keys (unet.py, clip.py), so an LDM-style name is our name with `_` for
`.`; diffusers-style names are mapped by `diffusers_unet_name`, derived from the UNet config the same way
diffusers' convert_ldm_unet_checkpoint numbers the blocks.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.checkpoint import advise_huge_pages, read_state_dict
from engine.config import UNetConfig
from engine.devices import release_freed_memory
from engine.errors import CheckpointError
from engine.layers import Conv2d as PackedConv2d

log = logging.getLogger(__name__)

LORA_SUFFIXES = {".safetensors", ".pt", ".ckpt", ".bin", ".pth"}

# key suffix -> role, longest first (".lora_down.weight" before ".weight").
_ROLES = [
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_mid.weight", "mid"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),  # attention processors: to_q_lora.down.weight
    (".alpha", "alpha"),
    *((f".hada_w{i}_{ab}", f"hada_w{i}_{ab}") for i in (1, 2) for ab in "ab"),
    *((f".lokr_{n}", f"lokr_{n}") for n in ("w1_a", "w1_b", "w2_a", "w2_b", "w1", "w2")),
]
_KINDS = {"down": "lora", "hada_w1_a": "loha", "lokr_w1": "lokr", "lokr_w1_a": "lokr"}
_REQUIRED = {"lora": ("up", "down"), "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}

# Marks of formats we do not merge (LyCORIS and relatives), and the name to give the user.
_OTHER_FORMATS = [
    (re.compile(r"\.hada_t\d$"), "LyCORIS LoHa with CP (Tucker) decomposition"),
    (re.compile(r"\.lokr_t\d$"), "LyCORIS LoKr with CP (Tucker) decomposition"),
    (re.compile(r"\.oft_\w+$|\.oft_blocks$"), "LyCORIS OFT"),
    (re.compile(r"\.on_input$"), "LyCORIS (IA)^3"),
    (re.compile(r"\.dora_scale$|\.lora_magnitude_vector"), "DoRA"),
    (re.compile(r"\.a1\.weight$|\.b1\.weight$"), "LyCORIS GLoRA"),
    (re.compile(r"\.diff(_b)?$"), "LyCORIS full-weight diff"),
]

# Older diffusers attention-processor names -> module names.
_PROCESSOR = [
    (re.compile(r"\.processor\.to_(q|k|v)$"), r".to_\1"),
    (re.compile(r"\.processor\.to_out$"), ".to_out.0"),
    (re.compile(r"(self_attn)\.to_(q|k|v)$"), r"\1.\2_proj"),
    (re.compile(r"(self_attn)\.to_out$"), r"\1.out_proj"),
]

_RESNET = {"in_layers.2": "conv1", "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj",
           "skip_connection": "conv_shortcut", "in_layers.0": "norm1", "out_layers.0": "norm2"}


def diffusers_unet_name(name: str, cfg: UNetConfig) -> str | None:
    """Our (LDM) UNet module name -> diffusers' UNet2DConditionModel name, or None if it has none.

    The block numbering of diffusers' convert_ldm_unet_checkpoint (single_file_utils.py): input block
    1 + level * (n + 1) + i is down_blocks.level's resnet/attention i, the last of each level its downsampler;
    output block level' * (n + 1) + i is up_blocks.level''s i-th, with the upsampler after the last.
    """
    parts = name.split(".")
    n = cfg.num_res_blocks
    head, rest = parts[0], parts[1:]
    if head == "time_embed" and rest in (["0"], ["2"]):
        return f"time_embedding.linear_{1 if rest[0] == '0' else 2}"
    if head == "out" and rest in (["0"], ["2"]):
        return "conv_norm_out" if rest[0] == "0" else "conv_out"
    if head not in ("input_blocks", "middle_block", "output_blocks") or len(rest) < 2:
        return None
    if head == "middle_block":
        layer, tail = int(rest[0]), rest[1:]
        block = {0: "resnets.0", 1: "attentions.0", 2: "resnets.1"}.get(layer)
        return None if block is None else _join_tail(f"mid_block.{block}", tail, resnet=layer != 1)
    block, layer, tail = int(rest[0]), int(rest[1]), rest[2:]
    if head == "input_blocks":
        if block == 0:
            return "conv_in" if not tail else None
        level, i = divmod(block - 1, n + 1)
        if i == n:
            return f"down_blocks.{level}.downsamplers.0.conv" if tail == ["op"] else None
        prefix = f"down_blocks.{level}"
    else:
        level, i = divmod(block, n + 1)
        prefix = f"up_blocks.{level}"
        if tail == ["conv"]:  # the Upsample, after the resnet (and the attention, if any)
            return f"{prefix}.upsamplers.0.conv"
    if layer == 0:
        return _join_tail(f"{prefix}.resnets.{i}", tail, resnet=True)
    if layer == 1:
        return _join_tail(f"{prefix}.attentions.{i}", tail, resnet=False)
    return None


def _join_tail(prefix: str, tail: list[str], resnet: bool) -> str | None:
    if not resnet:
        return ".".join([prefix, *tail])
    renamed = _RESNET.get(".".join(tail))
    return None if renamed is None else f"{prefix}.{renamed}"


@dataclass
class LoraModule:
    """One layer's update, by `kind` (tensors `w` by role, see _ROLES):
      * "lora": up (out, r[, 1, 1]) @ [mid (r, r, kh, kw)] @ down (r, in[, kh, kw]);
      * "loha": (hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b), elementwise (LyCORIS LoHa);
      * "lokr": kron(lokr_w1 or lokr_w1_a @ lokr_w1_b, lokr_w2 or lokr_w2_a @ lokr_w2_b) (LyCORIS LoKr).
    """

    component: str  # "text_encoder" or "unet"
    name: str  # our module name inside that component
    kind: str
    w: dict[str, torch.Tensor]
    alpha: float | None = None

    @property
    def dim(self) -> int | None:
        """The rank alpha is divided by (A1111 network_lora.py / network_hada.py / network_lokr.py)."""
        if self.kind == "lora":
            return self.w["down"].shape[0]
        if self.kind == "loha":
            return self.w["hada_w1_b"].shape[0]
        for role in ("lokr_w2_b", "lokr_w1_b"):
            if role in self.w:
                return self.w[role].shape[0]
        return None

    @property
    def scale(self) -> float:
        """alpha / rank, or 1 without either (A1111 network.py NetworkModule.calc_scale)."""
        dim = self.dim
        return 1.0 if self.alpha is None or not dim else self.alpha / dim

    def update_shape(self) -> tuple[int, int]:
        """(out, in * kh * kw) of the update, from the tensor shapes alone (nothing computed)."""
        w = {k: v.reshape(v.shape[0], -1) for k, v in self.w.items() if k != "mid"}
        if self.kind == "lora":
            inner = w["down"].shape[1] * (math.prod(self.w["mid"].shape[2:]) if "mid" in self.w else 1)
            return w["up"].shape[0], inner
        if self.kind == "loha":
            return w["hada_w1_a"].shape[0], w["hada_w1_b"].shape[1]
        w1 = (w["lokr_w1"].shape if "lokr_w1" in w else (w["lokr_w1_a"].shape[0], w["lokr_w1_b"].shape[1]))
        w2 = (w["lokr_w2"].shape if "lokr_w2" in w else (w["lokr_w2_a"].shape[0], w["lokr_w2_b"].shape[1]))
        return w1[0] * w2[0], w1[1] * w2[1]

    def consistent(self) -> bool:
        """Whether the factors' inner dimensions agree (a matmul would not fail)."""
        w = {k: v.reshape(v.shape[0], -1) for k, v in self.w.items() if k != "mid"}
        pairs = {"lora": [("up", "down")], "loha": [("hada_w1_a", "hada_w1_b"), ("hada_w2_a", "hada_w2_b")],
                 "lokr": [("lokr_w1_a", "lokr_w1_b"), ("lokr_w2_a", "lokr_w2_b")]}[self.kind]
        ok = all(a not in w or b in w and w[a].shape[1] == w[b].shape[0] for a, b in pairs)
        if self.kind == "lora" and "mid" in self.w:
            mid = self.w["mid"]
            ok = ok and mid.ndim == 4 and tuple(mid.shape[:2]) == (w["up"].shape[1], w["down"].shape[0])
        if self.kind == "loha":
            ok = ok and w["hada_w1_a"].shape[0] == w["hada_w2_a"].shape[0] and (
                w["hada_w1_b"].shape[1] == w["hada_w2_b"].shape[1])
        return ok

    def add_to(self, flat: torch.Tensor, multiplier: float) -> None:
        """flat (out, in * kh * kw), fp32, += multiplier * scale * updown."""
        w = {k: v.to(flat.device, torch.float32) for k, v in self.w.items()}
        w2d = {k: v.reshape(v.shape[0], -1) for k, v in w.items() if k != "mid"}
        alpha = self.scale * multiplier
        if self.kind == "lora" and "mid" not in w:  # lyco_helpers.rebuild_conventional, as one addmm
            flat.addmm_(w2d["up"], w2d["down"], alpha=alpha)
            return
        if self.kind == "lora":  # lyco_helpers.rebuild_cp_decomposition
            updown = torch.einsum("n m k l, i n, m j -> i j k l", w["mid"], w2d["up"], w2d["down"])
        elif self.kind == "loha":  # network_hada.py: (w1a @ w1b) * (w2a @ w2b)
            updown = (w2d["hada_w1_a"] @ w2d["hada_w1_b"]) * (w2d["hada_w2_a"] @ w2d["hada_w2_b"])
        else:  # network_lokr.py make_kron; a 4-D w2 flattened: the same element order as the 4-D kron
            w1 = w2d["lokr_w1"] if "lokr_w1" in w2d else w2d["lokr_w1_a"] @ w2d["lokr_w1_b"]
            w2 = w2d["lokr_w2"] if "lokr_w2" in w2d else w2d["lokr_w2_a"] @ w2d["lokr_w2_b"]
            updown = torch.kron(w1, w2)
        flat.add_(updown.reshape(flat.shape), alpha=alpha)


@dataclass
class LoraFile:
    """A LoRA file read and matched against a model: its layers and what did not match."""

    path: Path
    modules: list[LoraModule]
    unmatched: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.stem


def _layers(models: Any) -> dict[str, dict[str, nn.Module]]:
    """{component: {our module name: Linear/Conv2d}} for the text encoder and the UNet."""
    out: dict[str, dict[str, nn.Module]] = {}
    for component in ("text_encoder", "unet"):
        model = getattr(models, component)
        out[component] = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    return out


def _name_table(models: Any, layers: dict[str, dict[str, nn.Module]]) -> dict[str, tuple[str, str]]:
    """Every spelling a LoRA file may use for a layer -> (component, our name)."""
    table: dict[str, tuple[str, str]] = {}
    cfg = models.unet.config
    for name in layers["unet"]:
        spellings = [name]
        if (diffusers := diffusers_unet_name(name, cfg)) is not None:
            spellings.append(diffusers)
            table["unet." + diffusers] = ("unet", name)
        for s in spellings:
            table["lora_unet_" + s.replace(".", "_")] = ("unet", name)
        table["diffusion_model." + name] = ("unet", name)  # ComfyUI's LoRA saver: LDM names, dotted
    for name in layers["text_encoder"]:
        table["lora_te_" + name.replace(".", "_")] = ("text_encoder", name)
        table["text_encoder." + name] = ("text_encoder", name)
        table["text_encoder." + name.removeprefix("text_model.")] = ("text_encoder", name)  # transformers 5
        table["text_encoders.clip_l.transformer." + name] = ("text_encoder", name)  # ComfyUI
    return table


def _split(key: str) -> tuple[str, str] | None:
    for suffix, role in _ROLES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _foreign(path: Path, keys: Iterable[str]) -> str | None:
    """Why a file is not an SD1.x LoRA we can merge, judging by its key names; None if it may be one."""
    keys = list(keys)
    for pattern, what in _OTHER_FORMATS:
        if any(pattern.search(k) for k in keys):
            return f"a {what} file: this format is not supported, only LoRA/LoCon/LoHa/LoKr"
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.", "text_encoders.clip_g.")) for k in keys) or any(
        "label_emb" in k or "add_embedding" in k for k in keys
    ):
        return "a LoRA for SDXL (two text encoders): only Stable Diffusion 1.x LoRAs are supported"
    if any(k.startswith(("lora_transformer_", "transformer.", "lora_unet_double_blocks", "lora_unet_single_"))
           or re.match(r"diffusion_model\.(double|single|joint)_blocks\.", k) for k in keys):
        return "a LoRA for a transformer model (Flux/SD3/...): only Stable Diffusion 1.x LoRAs are supported"
    return None


def _wrong_model(component: str, name: str, module: nn.Module, m: LoraModule) -> str:
    """A message for a shape mismatch, naming SD2/SDXL when the widths say so."""
    out, width_in = m.update_shape()
    if component == "text_encoder" and width_in in (1024, 4096) or name.endswith("attn2.to_k") and width_in == 1024:
        return "a LoRA for Stable Diffusion 2.x (1024-wide text encoder): only SD 1.x LoRAs are supported"
    if component == "text_encoder" and width_in in (1280, 5120) or name.endswith("attn2.to_k") and width_in == 2048:
        return "a LoRA for SDXL (1280/2048-wide text features): only SD 1.x LoRAs are supported"
    return (
        f"made for a different model: layer {name} is {tuple(module.weight.shape)} here, the LoRA's "
        f"update is ({out}, {width_in})"
    )


def read_lora(path: str | Path, models: Any) -> LoraFile:
    """Read a LoRA file and match its layers to `models` (anything with .text_encoder and .unet).

    Raises CheckpointError for unreadable, hostile (pickles that want code) or foreign files; nothing is
    changed in the models.
    """
    path = Path(path)
    if path.suffix.lower() not in LORA_SUFFIXES:
        raise CheckpointError(f"{path.name}: not a LoRA file (expected .safetensors, .pt or .ckpt)")
    state = read_state_dict(path)
    if (why := _foreign(path, state)) is not None:
        raise CheckpointError(f"{path.name}: {why}")
    layers = _layers(models)
    table = _name_table(models, layers)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        split = _split(key)
        if split is None:
            unknown.append(key)
            continue
        module_key, role = split
        for pattern, replacement in _PROCESSOR:
            module_key = pattern.sub(replacement, module_key)
        groups.setdefault(module_key, {})[role] = value
    modules: list[LoraModule] = []
    unmatched = list(unknown)
    for module_key, parts in groups.items():
        target = table.get(module_key)
        if target is None:
            unmatched.append(module_key)
            continue
        kind = next((k for role, k in _KINDS.items() if role in parts), None)
        lokr_ok = ("lokr_w1" in parts or "lokr_w1_b" in parts) and ("lokr_w2" in parts or "lokr_w2_a" in parts
                                                                    and "lokr_w2_b" in parts)
        if kind is None or kind == "lokr" and not lokr_ok or any(r not in parts for r in _REQUIRED.get(kind, ())):
            raise CheckpointError(f"{path.name}: {module_key} lacks some of its weights (has {', '.join(parts)})")
        component, name = target
        alpha = parts.pop("alpha", None)
        m = LoraModule(component, name, kind, parts, None if alpha is None else float(alpha.float().item()))
        _check_shapes(path, m, layers[component][name])
        modules.append(m)
    if not modules:
        if any(re.search(r"transformer_blocks_[1-9]", k) for k in unmatched):
            raise CheckpointError(f"{path.name}: a LoRA for SDXL: only Stable Diffusion 1.x LoRAs are supported")
        raise CheckpointError(
            f"{path.name}: not a Stable Diffusion 1.x LoRA: none of its {len(state)} tensors matches a layer "
            f"(e.g. {', '.join(sorted(unmatched)[:3])})"
        )
    if unmatched:
        log.warning("%s: %d entries match no layer and are ignored, e.g. %s", path.name, len(unmatched),
                    ", ".join(sorted(unmatched)[:3]))
    return LoraFile(path, modules, sorted(unmatched))


def _check_shapes(path: Path, m: LoraModule, module: nn.Module) -> None:
    shape = tuple(module.weight.shape)
    if not m.consistent():
        raise CheckpointError(f"{path.name}: the factors of {m.name} do not fit together")
    if m.update_shape() != (shape[0], math.prod(shape[1:])):
        raise CheckpointError(f"{path.name}: {_wrong_model(m.component, m.name, module, m)}")


LoraSpec = tuple[str | Path, float] | tuple[str | Path, float, float]


def normalize_specs(loras: Sequence[LoraSpec]) -> list[tuple[Path, float, float]]:
    """(path, weight) or (path, te_weight, unet_weight) -> (path, te, unet); A1111: unet defaults to te."""
    out = []
    for spec in loras:
        if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3):
            raise ValueError(f"a LoRA is (path, weight) or (path, te_weight, unet_weight), got {spec!r}")
        path, te = Path(spec[0]), float(spec[1])
        unet = float(spec[2]) if len(spec) == 3 else te
        if not (math.isfinite(te) and math.isfinite(unet)):
            raise ValueError(f"{path.name}: LoRA weights must be finite numbers, got {te}, {unet}")
        out.append((path, te, unet))
    return out


def _normal_mode(method: Callable[..., None]) -> Callable[..., None]:
    """Run outside inference mode (also when called from generate()): the weights are normal tensors and
    an in-place update made under inference mode would leave them unusable outside it."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with torch.inference_mode(False), torch.no_grad():
            method(*args, **kwargs)

    return wrapper


class LoraSet:
    """LoRAs merged into a model's weights; restore() puts back the original weights exactly.

    The originals of the touched weights are kept on the CPU (dense); nothing else is copied.
    """

    def __init__(self, models: Any, keep_in_memory: int | None = None):
        self.models = models
        self.loras: list[tuple[LoraFile, float, float]] = []
        self._originals = _Originals(KEEP_IN_MEMORY if keep_in_memory is None else keep_in_memory)

    @property
    def applied(self) -> bool:
        return bool(self._originals)

    @property
    def kept_bytes(self) -> tuple[int, int]:
        """Bytes of original weights kept for restore(): (in memory, in the temporary file)."""
        return self._originals.in_memory, self._originals.spilled

    @_normal_mode
    def apply(self, loras: Sequence[tuple[LoraFile, float, float]]) -> None:
        """Merge `(file, te_weight, unet_weight)` into the weights (on top of what is already merged).

        Should merging fail midway (out of memory), every LoRA is taken out again before the error is raised.
        """
        layers = _layers(self.models)
        deltas: dict[tuple[str, str], list[tuple[LoraModule, float]]] = {}
        for lora, te, unet in loras:
            for m in lora.modules:
                w = te if m.component == "text_encoder" else unet
                if w != 0.0:
                    deltas.setdefault((m.component, m.name), []).append((m, w))
        try:
            for (component, name), parts in deltas.items():
                module = layers[component][name]
                weight = _dense_weight(module)
                if (component, name) not in self._originals:
                    self._originals.keep((component, name), weight)
                _merge(weight, parts)
                _repack(module)
        except BaseException:
            self.restore()
            raise
        finally:
            release_freed_memory()
        # what lora_hashes and the log need; the layers' tensors (135 MB for LCM-LoRA) are merged already
        self.loras.extend((LoraFile(f.path, [], f.unmatched), te, unet) for f, te, unet in loras)

    @_normal_mode
    def restore(self) -> None:
        """Copy the original weights back (bit-for-bit) and forget the merged LoRAs."""
        layers = _layers(self.models)
        for (component, name), original in self._originals.items():
            module = layers[component][name]
            _dense_weight(module).copy_(original)
            _repack(module)
        self._originals.clear()
        self.loras.clear()
        release_freed_memory()


KEEP_IN_MEMORY = 64 * 2**20  # originals kept in RAM; beyond it they go to a temporary file


class _Originals:
    """The original values of the weights LoRAs changed, for a bit-exact restore.

    Up to `budget` bytes stay in memory (a CPU copy each); the rest is written to one unnamed temporary file
    and read back one tensor at a time by items(). Written data sits in the OS page cache, which the OS may
    reclaim (it is on disk), unlike a copy in the process's memory. Should the file fail (no temporary
    folder, disk full), the originals stay in memory, as before.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self._memory: dict[tuple[str, str], torch.Tensor] = {}
        self._spilled: dict[tuple[str, str], tuple[int, torch.Size, torch.dtype, tuple[int, ...]]] = {}
        self._file: Any = None
        self._file_failed = False
        self.in_memory = self.spilled = 0

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._memory or key in self._spilled

    def __bool__(self) -> bool:
        return bool(self._memory or self._spilled)

    def keep(self, key: tuple[str, str], weight: torch.Tensor) -> None:
        weight = weight.detach()
        size = weight.numel() * weight.element_size()
        spill = self.in_memory + size > self.budget and not self._file_failed
        if spill and weight.device.type == "cpu" and _dense(weight):
            try:
                if self._file is None:
                    self._file = tempfile.TemporaryFile(prefix="inkpunk-lora-originals-")  # noqa: SIM115 (closed by clear)
                offset = self._file.seek(0, 2)
                self._file.write(memoryview(_bytes_of(weight).numpy()))
                self._spilled[key] = (offset, weight.shape, weight.dtype, weight.stride())
                self.spilled += size
                return
            except OSError as e:  # not again for this LoRA set: the next write would fail the same way
                self._file_failed = True
                log.warning("cannot write LoRA originals to a temporary file (%s); keeping them in memory", e)
        copy = advise_huge_pages(torch.empty_strided(weight.shape, weight.stride(), dtype=weight.dtype))
        self._memory[key] = copy.copy_(weight)
        self.in_memory += size

    def items(self) -> Iterable[tuple[tuple[str, str], torch.Tensor]]:
        """(key, original) for each kept weight; a spilled one is read back into a fresh tensor."""
        yield from self._memory.items()
        for key, (offset, shape, dtype, stride) in self._spilled.items():
            t = torch.empty_strided(shape, stride, dtype=dtype)
            self._file.seek(offset)
            view = memoryview(_bytes_of(t).numpy())
            if self._file.readinto(view) != len(view):
                raise OSError("the temporary file of LoRA originals is shorter than what was written to it")
            yield key, t

    def clear(self) -> None:
        self._memory.clear()
        self._spilled.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
        self._file_failed = False
        self.in_memory = self.spilled = 0


def _dense(t: torch.Tensor) -> bool:
    """Whether t's elements fill one block of memory (any order): contiguous or channels_last."""
    return t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a dense tensor in its memory order, as a uint8 view (no copy)."""
    flat = torch.as_strided(t, (t.numel(),), (1,), t.storage_offset())
    return flat.view(torch.uint8)


def _merge(weight: torch.Tensor, parts: list[tuple[LoraModule, float]]) -> None:
    """Add the updates to `weight` in place (fused q/k/v rows stay views of their fused tensor).

    fp32 contiguous weights are updated directly; others (fp16/bf16, channels_last convs) through an fp32
    copy, so each update is rounded once, to the weight's dtype.
    """
    direct = weight.dtype == torch.float32 and weight.is_contiguous()
    acc = weight if direct else weight.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    flat = acc.view(acc.shape[0], -1)
    for m, w in parts:
        m.add_to(flat, w)
    if not direct:
        weight.copy_(acc)


def _repack(module: nn.Module) -> None:
    if isinstance(module, PackedConv2d):
        module.repack()


def _dense_weight(module: nn.Module) -> torch.Tensor:
    """The module's weight as a normal tensor to update in place (a pre-packed conv is unpacked first; it
    re-packs at its next call)."""
    if isinstance(module, PackedConv2d):
        module.unpack()
    return module.weight


def apply_loras(models: Any, loras: Sequence[LoraSpec]) -> LoraSet:
    """Read every file first (any error leaves the models untouched), then merge them; returns the handle
    whose restore() takes them out again."""
    specs = normalize_specs(loras)
    files = [(read_lora(path, models), te, unet) for path, te, unet in specs]
    handle = LoraSet(models)
    handle.apply(files)
    log.info("merged %d LoRA(s): %s", len(files), ", ".join(f.name for f, _, _ in files))
    return handle


def _benchmark(rank: int = 128) -> None:
    """`python -m engine.lora [device [dtype]]`: merge and restore a LoRA of SD1.5 size (rank `rank` on every attention,
    feed-forward and projection layer, as kohya's default) on a random SD1.5 text encoder + UNet (fp32 CPU by default)."""
    import sys
    import tempfile
    import time
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from engine.attention import fuse_projections
    from engine.clip import TextEncoder
    from engine.config import TextEncoderConfig
    from engine.unet import UNet

    device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cpu")
    dtype = getattr(torch, sys.argv[2]) if len(sys.argv) > 2 else torch.float32
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with torch.no_grad():
        models = SimpleNamespace(text_encoder=TextEncoder(TextEncoderConfig.sd15()).eval().to(device, dtype),
                                 unet=UNet(UNetConfig.sd15()).eval().to(device, dtype))
        fuse_projections(models.text_encoder)
        fuse_projections(models.unet)
    state: dict[str, torch.Tensor] = {}
    for component, prefix in (("text_encoder", "lora_te_"), ("unet", "lora_unet_")):
        for name, m in _layers(models)[component].items():
            if isinstance(m, nn.Linear) or name.endswith(("proj_in", "proj_out")):
                key = prefix + name.replace(".", "_")
                state[f"{key}.lora_down.weight"] = torch.randn(rank, m.weight[0].numel(), dtype=torch.float16)
                state[f"{key}.lora_up.weight"] = torch.zeros(m.weight.shape[0], rank, dtype=torch.float16)
                state[f"{key}.alpha"] = torch.tensor(float(rank))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.safetensors"
        save_file(state, str(path))
        size = path.stat().st_size / 2**20
        for _ in range(2):
            started = time.perf_counter()
            handle = apply_loras(models, [(path, 1.0)])
            applied = time.perf_counter() - started
            started = time.perf_counter()
            handle.restore()
            log.info("%.0f MiB LoRA (%d layers): apply %.2f s, restore %.2f s", size, len(state) // 3, applied,
                     time.perf_counter() - started)


if __name__ == "__main__":
    _benchmark()
