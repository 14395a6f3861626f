"""Convolution layers with inference fast paths, used by the UNet and the VAE.

- `Conv2d`: nn.Conv2d that keeps its weight pre-packed for oneDNN on the CPU.
- `NearestUpsampleConv`: nearest 2x upsampling followed by a 3x3 convolution, computed as one 2x2
  convolution on the small image (2.25x fewer multiply-adds, no 4x-size intermediate).
Both give the numbers of the plain layers they replace (up to float rounding) and keep state dict keys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.devices import release_freed_memory

# Switches for measuring what each fast path buys (python -m engine.benchmark compares with diffusers).
PACK_CONV_WEIGHTS = True
PHASE_UPSAMPLE = True


def _packing_available(dtype: torch.dtype) -> bool:
    """Whether this PyTorch and this CPU can pre-pack `dtype` conv weights (cached per dtype).

    PyTorch's own ops for pre-packed oneDNN weights (what torch.compile's CPU backend uses). bf16 also needs
    the CPU's support (AVX-512 BW/VL/DQ or AVX-NE-CONVERT): on an AVX2-only CPU the reorder raises, and a bf16
    model there runs the plain convolution instead.
    """
    if dtype not in _PACKING_OK:
        try:
            ok = torch.backends.mkldnn.is_available() and all(
                hasattr(torch.ops.mkldnn, op) for op in ("_reorder_convolution_weight", "_convolution_pointwise")
            )
            if ok and dtype == torch.bfloat16:
                ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            ok = False
        _PACKING_OK[dtype] = ok
    return _PACKING_OK[dtype]


_PACKING_OK: dict[torch.dtype, bool] = {}


class Conv2d(nn.Conv2d):
    """nn.Conv2d that keeps its weight pre-packed in oneDNN's blocked layout when it runs on the CPU.

    An eager CPU convolution first reorders its weight into the layout oneDNN's kernels read (AMX: VNNI
    blocks) on every call. For the UNet's 8x8 and 16x16 levels that reorder costs about as much as the
    convolution itself (oneDNN's verbose log: 10-25 ms to reorder a 1280x1280x3x3 bf16 weight next to
    15-30 ms of convolution). The first inference call packs the weight once, for that call's input shape
    (other shapes stay correct), and the packed tensor *replaces* the dense one: no extra memory, the same
    numbers. state_dict() still returns dense weights; load_state_dict() and .to()/.float()/.cuda() unpack
    first; a call that autograd records unpacks too.
    """

    _packed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed:
            if not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
                return torch.ops.mkldnn._convolution_pointwise(
                    x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
                    "none", [], "",
                )
            self.unpack()
        elif self._can_pack(x):
            try:
                self.pack(x.shape)
            except RuntimeError:  # oneDNN refused this CPU/dtype after all: the plain path from now on
                _PACKING_OK[x.dtype] = False
            else:
                return self.forward(x)
        return super().forward(x)

    def _can_pack(self, x: torch.Tensor) -> bool:
        if not PACK_CONV_WEIGHTS or torch.is_grad_enabled() or self.weight.requires_grad:
            return False
        if x.device.type != "cpu" or self.weight.device.type != "cpu" or x.dim() != 4:
            return False
        if x.dtype != self.weight.dtype or x.dtype not in (torch.float32, torch.bfloat16):
            return False
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return False
        return _packing_available(x.dtype)

    _pack_shape: tuple[int, ...] | None = None  # the input shape of the last pack(), for repack()

    def pack(self, input_shape: torch.Size | tuple[int, ...]) -> None:
        dense_bytes = self.weight.nbytes
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(input_shape),
            )
        self.weight = nn.Parameter(packed, requires_grad=False)
        self._packed = True
        self._pack_shape = tuple(input_shape)
        _released(dense_bytes)

    def repack(self) -> None:
        """Pack again (for the last packed input shape) a weight that was unpacked to change it in place, as
        a LoRA merge does: now rather than at the next call, where the dense weights freed one by one during
        a generation would leave as much heap behind (0.7 GB for a bf16 SD1.5 UNet)."""
        if self._packed or self._pack_shape is None or self.weight.requires_grad or not PACK_CONV_WEIGHTS:
            return
        if self.weight.device.type == "cpu" and _packing_available(self.weight.dtype):
            self.pack(self._pack_shape)

    def unpack(self) -> None:
        if self._packed:
            dense = self.weight.to_dense().contiguous(memory_format=torch.channels_last)
            self.weight = nn.Parameter(dense, requires_grad=self.weight.requires_grad)
            self._packed = False

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._packed:
            destination[prefix + "weight"] = self.weight.to_dense()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.unpack()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> Conv2d:
        self.unpack()
        return super()._apply(fn, recurse)



# Bytes of dense conv weights freed by packing since the heap was last trimmed, and when to trim it. The first
# call of a model packs every conv: each packed weight is new memory and each dense one a hole in the C heap
# that the following (differently sized) weights do not fit, so without trimming a bf16 SD1.5 UNet's first
# step left ~0.45 GiB more resident than the unpacked model's (docs/benchmarks.md, fast mode's memory).
_RELEASED = [0]
TRIM_AFTER = 128 * 2**20


def _released(nbytes: int) -> None:
    _RELEASED[0] += nbytes
    if _RELEASED[0] >= TRIM_AFTER:
        _RELEASED[0] = 0
        release_freed_memory()


class NearestUpsampleConv:
    """conv3x3(nearest_upsample_2x(x)) without making the upsampled image.

    Output pixel (2i + a, 2j + b) sees input rows {i-1, i} (a = 0) or {i, i+1} (a = 1), and likewise columns,
    with the 3x3 taps that land on the same input pixel summed. So the four output phases are four 2x2
    convolutions of x, computed as one (4 * out)-channel 2x2 convolution with padding 1 whose (H+1) x (W+1)
    output holds phase (a, b) at offset (a, b); the phases are then interleaved. 16 instead of 36
    multiply-adds per input pixel and channel pair. Not a module: the 2x2 kernel is derived from `conv` at
    the first call and rebuilt when conv's weight, dtype or device changes; it is not in any state dict.
    """

    def __init__(self, conv: nn.Conv2d):
        ok = conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
        if not ok or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("NearestUpsampleConv needs a 3x3, stride 1, padding 1 convolution")
        self.conv = conv
        self.phases: Conv2d | None = None
        self._key: tuple[Any, ...] = ()

    def _phase_conv(self) -> Conv2d:
        w = self.conv.weight
        # An inference tensor (a model built inside torch.inference_mode()) has no version counter, so an
        # in-place change to it (a merged LoRA) cannot be seen: rebuild the small kernel on every call then.
        inference = w.is_inference()
        key = (id(w), None if inference else w._version, w.dtype, w.device)
        if self.phases is None or inference or key != self._key:
            with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable in any mode
                self.phases, self._key = self._build(w), key
        return self.phases

    def _build(self, w: torch.Tensor) -> Conv2d:
        dense = (w.to_dense() if w.is_mkldnn else w).float()
        # (O, I, 3, 3) -> per phase (O, I, 2, 2): rows, then columns, merge the taps on the same pixel
        rows = [torch.stack([dense[:, :, 0], dense[:, :, 1] + dense[:, :, 2]], 2),  # a = 0: rows i-1, i
                torch.stack([dense[:, :, 0] + dense[:, :, 1], dense[:, :, 2]], 2)]  # a = 1: rows i, i+1
        kernels = [torch.stack([r[..., 0], r[..., 1] + r[..., 2]], -1) for r in rows]  # b = 0
        kernels += [torch.stack([r[..., 0] + r[..., 1], r[..., 2]], -1) for r in rows]  # b = 1
        order = [kernels[0], kernels[2], kernels[1], kernels[3]]  # (a, b) = 00, 01, 10, 11
        out_c, in_c = dense.shape[:2]
        with torch.device("meta"):
            phases = Conv2d(in_c, 4 * out_c, 2, padding=1, bias=self.conv.bias is not None)
        fmt = torch.channels_last if w.is_mkldnn or w.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        weight = torch.cat(order).to(w.dtype).contiguous(memory_format=fmt)
        phases.weight = nn.Parameter(weight, requires_grad=False)
        if self.conv.bias is not None:
            phases.bias = nn.Parameter(self.conv.bias.detach().repeat(4), requires_grad=False)
        return phases

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self._phase_conv()(x)  # (B, 4*O, H+1, W+1)
        o = y.shape[1] // 4
        channels_last = y.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty(b, o, 2 * h, 2 * w, dtype=y.dtype, device=y.device, memory_format=fmt)
        # out[:, :, 2i + a, 2j + b] = phase (a, b)[:, :, i, j]
        grid = out.permute(0, 2, 3, 1).view(b, h, 2, w, 2, o) if channels_last else out.view(b, o, h, 2, w, 2)
        for k, (pa, pb) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            phase = y[:, k * o : (k + 1) * o, pa : pa + h, pb : pb + w]
            if channels_last:
                grid[:, :, pa, :, pb, :] = phase.permute(0, 2, 3, 1)
            else:
                grid[:, :, :, pa, :, pb] = phase
        return out
