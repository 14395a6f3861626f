"""The inference fast paths give the numbers of the plain layers and keep the modules' usual behaviour:
pre-packed CPU convolutions, phase-decomposed upsampling, fused q/k/v projections, the loader's conversion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine import layers
from engine.attention import FusedProjection
from engine.checkpoint import _Converter, load_models
from engine.layers import Conv2d, NearestUpsampleConv
from engine.testing import write_random_checkpoint


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def frozen_conv(*args, dtype=torch.float32, channels_last=True, **kwargs) -> Conv2d:
    conv = Conv2d(*args, **kwargs).to(dtype).requires_grad_(False)
    return conv.to(memory_format=torch.channels_last) if channels_last else conv


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_conv_same_numbers_any_shape(dtype):
    conv = frozen_conv(16, 8, 3, padding=1, dtype=dtype)
    plain = nn.Conv2d(16, 8, 3, padding=1).to(dtype).requires_grad_(False)
    plain.load_state_dict(conv.state_dict())
    with torch.inference_mode():
        first = torch.randn(2, 16, 8, 8, dtype=dtype).contiguous(memory_format=torch.channels_last)
        assert torch.equal(conv(first), plain(first))
        assert conv._packed == layers._packing_available(dtype)
        for shape in [(1, 16, 13, 7), (3, 16, 5, 5)]:  # other shapes than the one it was packed for
            x = torch.randn(*shape, dtype=dtype)
            assert rel_err(conv(x), plain(x)) < 1e-6


def test_conv_falls_back_when_onednn_refuses_to_pack(monkeypatch):
    # What an AVX2-only CPU does with bf16 weights: the reorder raises. The layer must run the plain path.
    tries = []

    def refuse(self, input_shape):
        tries.append(input_shape)
        raise RuntimeError("mkldnn_reorder_conv2d_weight: bf16 path needs the cpu support ...")

    monkeypatch.setattr(layers, "_PACKING_OK", {})
    monkeypatch.setattr(layers.Conv2d, "pack", refuse)
    monkeypatch.setattr(layers, "_packing_available", lambda dtype=torch.float32: layers._PACKING_OK.get(dtype, True))
    conv = frozen_conv(4, 6, 3, padding=1)
    plain = nn.Conv2d(4, 6, 3, padding=1).requires_grad_(False)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, 4, 6, 6)
    with torch.inference_mode():
        first, second = conv(x), conv(x)  # the second call must not try again
    assert rel_err(first, plain(x)) < 1e-6 and torch.equal(first, second)
    assert not conv._packed and layers._PACKING_OK == {torch.float32: False} and len(tries) == 1


def test_packed_conv_state_dict_load_to_and_autograd():
    conv = frozen_conv(4, 6, 3, padding=1)
    original = {k: v.clone() for k, v in conv.state_dict().items()}
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        expected = conv(x)
    sd = conv.state_dict()  # dense and equal, packed or not
    assert not sd["weight"].is_mkldnn and torch.equal(sd["weight"], original["weight"])
    new = {k: torch.randn_like(v) for k, v in original.items()}
    conv.load_state_dict(new)  # unpacks, then loads
    with torch.no_grad():
        assert torch.allclose(conv(x), F.conv2d(x, new["weight"], new["bias"], padding=1), atol=1e-5)
        double = conv.double()(x.double())  # .to() unpacks first
    assert double.dtype == torch.float64 and not conv.weight.is_mkldnn
    conv = conv.float()
    with torch.no_grad():
        conv(x)
    conv.requires_grad_(True)  # a call that records autograd runs the plain path
    xg = x.clone().requires_grad_(True)
    conv(xg).sum().backward()
    assert xg.grad is not None and conv.weight.grad is not None
    del expected


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (1, 16, 1, 1), (1, 16, 8, 8)])
def test_phase_upsample_equals_interpolate_then_conv(shape, channels_last):
    conv = frozen_conv(16, 8, 3, padding=1, channels_last=channels_last)
    x = torch.randn(*shape)
    with torch.inference_mode():
        expected = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), conv.weight, conv.bias, padding=1)
        got = NearestUpsampleConv(conv)(x)
    assert got.shape == expected.shape
    assert rel_err(got, expected) < 1e-6


def test_phase_upsample_follows_weight_changes():
    conv = frozen_conv(8, 8, 3, padding=1)
    up = NearestUpsampleConv(conv)
    x = torch.randn(1, 8, 4, 4)
    with torch.inference_mode():
        up(x)
    with torch.no_grad():
        conv.weight.mul_(2)  # in place: the cached 2x2 kernels must be rebuilt
        expected = F.conv2d(F.interpolate(x, scale_factor=2.0), conv.weight, conv.bias, padding=1)
        assert rel_err(up(x), expected) < 1e-6
    with pytest.raises(ValueError):
        NearestUpsampleConv(nn.Conv2d(8, 8, 3, padding=1, stride=2))


def test_fused_projection_views_and_fallback():
    layers_ = [nn.Linear(6, 6, bias=True).requires_grad_(False) for _ in range(3)]
    x = torch.randn(2, 5, 6)
    expected = [m(x) for m in layers_]
    fused = FusedProjection()
    fused.fuse(*layers_)
    got = fused(x)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, expected))
    assert layers_[1].weight.data_ptr() == fused.weight[6:].data_ptr()  # views, not copies
    layers_[0].weight = nn.Parameter(layers_[0].weight.double(), requires_grad=False)  # replaced: no longer fused
    assert fused(x) is None


def test_loader_fuses_in_place_and_bf16_tracks_fp32(tmp_path):
    path = write_random_checkpoint(tmp_path / "tiny.safetensors", seed=4)
    fp32 = load_models(path, device="cpu", dtype=torch.float32)
    bf16 = load_models(path, device="cpu", dtype=torch.bfloat16)
    attn = fp32.unet.input_blocks[1][1].transformer_blocks[0].attn1
    assert attn.fused.weight.data_ptr() == attn.to_q.weight.data_ptr()  # converted into one tensor
    assert attn.fused.weight.shape == (3 * attn.to_q.weight.shape[0], attn.to_q.weight.shape[1])
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 64, generator=g)
    with torch.inference_mode():
        ref = fp32.unet(x, 10, ctx)
        fast = bf16.unet(x.bfloat16(), 10, ctx.bfloat16())  # packed convs, phase upsampling (16-bit only)
        layers.PHASE_UPSAMPLE = False
        try:
            plain = bf16.unet(x.bfloat16(), 10, ctx.bfloat16())
        finally:
            layers.PHASE_UPSAMPLE = True
    assert rel_err(fast, ref) < 0.05 and rel_err(plain, ref) < 0.05
    assert fast.is_contiguous()


def test_converter_fp16_to_bf16_exact():
    convert = _Converter(torch.device("cpu"), torch.bfloat16, channels_last=True)
    for shape in [(40, 30, 3, 3), (300, 70), (5,), (1, 77)]:
        v = torch.randn(*shape).half()
        out = convert(v)
        assert torch.equal(out, v.to(torch.bfloat16))
        assert out.is_contiguous(memory_format=torch.channels_last) if len(shape) == 4 else out.is_contiguous()


def test_geglu_split_path_same_numbers(monkeypatch):
    from engine.unet import GEGLU

    geglu = GEGLU(16, 32).requires_grad_(False)
    x = torch.randn(2, 10, 16)
    with torch.inference_mode():
        whole = geglu(x)
        monkeypatch.setattr(GEGLU, "SPLIT_ABOVE", 0)
        split = geglu(x)
        h, gate = geglu.proj(x).chunk(2, dim=-1)
    assert torch.allclose(split, whole, atol=1e-6) and torch.allclose(whole, h * F.gelu(gate), atol=1e-6)
    # with autograd recording, the split path's GELU is not in place, so backward works
    geglu.requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    out = geglu(xg)
    out.sum().backward()
    assert torch.allclose(out.detach(), whole, atol=1e-6) and xg.grad is not None and geglu.proj.weight.grad is not None
