"""Token merging (engine/tome.py) against diffusers' UNet patched by the tomesd package, as A1111 applies it.

A1111 (modules/sd_models.py apply_token_merging) calls tomesd 0.1.3's `apply_patch(model, ratio=r,
use_rand=False, merge_attn=True, merge_crossattn=False, merge_mlp=False)`; the reference here is that very
call on diffusers' UNet2DConditionModel holding our UNet's weights (tomesd patches diffusers models with
its `make_diffusers_tome_block`).
"""

from __future__ import annotations

import math
import threading

import pytest
import tomesd
import torch
from PIL import Image
from test_models_parity import reference_models, rel_err

import engine
from engine.checkpoint import load_models, read_state_dict
from engine.hires import HiresFix
from engine.testing import write_random_checkpoint
from engine.tome import (
    TokenMerging,
    bipartite_soft_matching,
    check_ratio,
    hires_ratio,
    set_token_merging,
    token_merging,
    token_merging_ratio,
)

TOL = 1e-4


@pytest.fixture(scope="module")
def unets(tmp_path_factory):
    path = write_random_checkpoint(tmp_path_factory.mktemp("tome") / "tiny.safetensors", seed=3)
    ours = load_models(path, device="cpu", dtype=torch.float32).unet
    _, reference, _ = reference_models(read_state_dict(path))
    return ours, reference


def a1111_patch(model: torch.nn.Module, ratio: float) -> None:
    tomesd.apply_patch(
        model, ratio=ratio, use_rand=False, merge_attn=True, merge_crossattn=False, merge_mlp=False
    )


@pytest.mark.parametrize(
    ("ratio", "h", "w", "batch"),
    [(0.5, 8, 8, 2), (0.3, 9, 7, 2), (0.5, 7, 9, 1), (0.9, 10, 6, 2), (0.6, 72 // 4, 56 // 4, 1)],
)
@torch.no_grad()
def test_unet_matches_diffusers_with_tomesd(unets, ratio, h, w, batch):
    ours, reference = unets
    g = torch.Generator().manual_seed(int(ratio * 10) + h * w)
    x = torch.randn(batch, 4, h, w, generator=g)
    ctx = torch.randn(batch, 77, 64, generator=g)
    plain = ours(x, 500, ctx)
    a1111_patch(reference, ratio)
    try:
        expected = reference(x, 500, encoder_hidden_states=ctx).sample
    finally:
        tomesd.remove_patch(reference)
    with token_merging(ours, ratio):
        got = ours(x, 500, ctx)
    assert rel_err(got, expected) <= TOL, (ratio, h, w)
    assert rel_err(got, plain) > 100 * TOL  # merging really happened (and changed the output)
    assert token_merging_ratio(ours) == 0


@torch.no_grad()
def test_ratio_zero_is_bit_identical_and_leaves_no_trace(unets):
    ours, _ = unets
    g = torch.Generator().manual_seed(7)
    x, ctx = torch.randn(2, 4, 9, 8, generator=g), torch.randn(2, 77, 64, generator=g)
    plain = ours(x, 300, ctx)
    set_token_merging(ours, 0.5)
    assert ours(x, 300, ctx).ne(plain).any()
    set_token_merging(ours, 0)
    assert ours.tome is None and all(getattr(m, "tome", None) is None for m in ours.modules())
    assert torch.equal(ours(x, 300, ctx), plain)
    with token_merging(ours, 0.0):
        assert torch.equal(ours(x, 300, ctx), plain)


@torch.no_grad()
def test_context_restores_previous_setting_on_error(unets):
    ours, _ = unets
    set_token_merging(ours, 0.3)
    try:
        with pytest.raises(KeyError), token_merging(ours, 0.7):
            assert token_merging_ratio(ours) == 0.7
            raise KeyError("cancelled")
        assert token_merging_ratio(ours) == 0.3
    finally:
        set_token_merging(ours, 0)
    assert token_merging_ratio(ours) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("b", "h", "w", "ratio"), [(2, 8, 8, 0.5), (1, 9, 7, 0.3), (2, 7, 10, 0.9), (2, 32, 24, 0.5)])
def test_merge_and_unmerge_are_bit_identical_to_tomesd(dtype, b, h, w, ratio):
    g = torch.Generator().manual_seed(h * w)
    metric = torch.randn(b, h * w, 16, generator=g).to(dtype)
    metric[:, ::3] = metric[:, :1]  # repeated tokens (a flat area): ties in the similarity ranking
    x = torch.randn(b, h * w, 24, generator=g).to(dtype)  # merged by the metric's matching, like norm1(x)
    r = int(h * w * ratio)
    ours_merge, ours_unmerge = bipartite_soft_matching(metric, w, h, r)
    ref_merge, ref_unmerge = tomesd.merge.bipartite_soft_matching_random2d(metric, w, h, 2, 2, r, no_rand=True)
    merged = ours_merge(x)
    assert torch.equal(merged, ref_merge(x))
    assert torch.equal(ours_unmerge(merged), ref_unmerge(merged))


def test_merge_unmerge_shapes_and_means():
    # 4x4 tokens: destinations at the top-left of each 2x2 cell; r sources averaged into them.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, generator=g)
    merge, unmerge = bipartite_soft_matching(x, 4, 4, r=6)
    merged = merge(x)
    assert merged.shape == (2, 10, 8)
    restored = unmerge(merged)
    assert restored.shape == x.shape
    dst = [0, 2, 8, 10]
    # a destination is the mean of itself and the sources merged into it; merged sources copy it
    assert torch.allclose(restored[:, dst], merged[:, -4:])
    sources = [i for i in range(16) if i not in dst]
    assert int((restored[:, sources] == x[:, sources]).all(-1).sum()) == 2 * (12 - 6)  # 6 kept per image
    identity, _ = bipartite_soft_matching(x, 4, 4, r=0)
    assert identity(x) is x


def test_tokens_at_other_levels_are_untouched():
    tome = TokenMerging(0.5)
    tome.size = (9, 7)
    x = torch.randn(1, 5 * 4, 8)  # level 2: (9, 7) -> (5, 4) tokens
    merge, unmerge = tome.merge_fns(x)
    assert merge(x) is x and unmerge(x) is x
    x = torch.randn(1, 63, 8)
    assert tome.merge_fns(x)[0](x).shape == (1, 63 - math.floor(63 * 0.5), 8)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.5", None, True])
def test_bad_ratio_raises(bad, unets):
    ours, _ = unets
    with pytest.raises(ValueError, match="token merging ratio"):
        set_token_merging(ours, bad)
    assert token_merging_ratio(ours) == 0
    assert check_ratio(0) == 0.0 and check_ratio(0.9) == 0.9


def test_hires_ratio_falls_back_to_the_first_pass():
    assert hires_ratio(0.5, 0.0) == 0.5
    assert hires_ratio(0.5, 0.3) == 0.3
    assert hires_ratio(0.0, 0.0) == 0.0


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("tome_pipe") / "tiny.safetensors", seed=4)
    return engine.load_pipeline(ckpt, device="cpu", dtype="fp32")


def test_generate_applies_the_ratios_per_pass_and_removes_them(pipe):
    seen = []

    def on_step(event):  # runs inside the sampler: sees the ratio the UNet runs with
        seen.append(token_merging_ratio(pipe.unet))

    common = {"width": 64, "height": 64, "steps": 2, "seed": 5, "sampler": "euler"}
    pipe.generate(engine.GenerationRequest("a lighthouse", token_merging_ratio=0.5, **common), on_step=on_step)
    assert seen == [0.5] * 2 and token_merging_ratio(pipe.unet) == 0

    fix = HiresFix(scale=1.5, steps=1, denoise=0.5, upscaler="Latent")
    for ratio, ratio_hr, expected in [(0.5, 0.0, [0.5] * 3), (0.0, 0.3, [0.0, 0.0, 0.3]),
                                      (0.4, 0.2, [0.4, 0.4, 0.2])]:
        seen.clear()
        req = engine.GenerationRequest("a lighthouse", hires=fix, token_merging_ratio=ratio,
                                       token_merging_ratio_hr=ratio_hr, **common)
        pipe.generate(req, on_step=on_step)
        assert seen == expected and token_merging_ratio(pipe.unet) == 0


def test_cancel_removes_token_merging(pipe):
    cancel = threading.Event()
    req = engine.GenerationRequest("a lighthouse", width=64, height=64, steps=4, seed=1,
                                   token_merging_ratio=0.5)
    with pytest.raises(engine.Cancelled):
        pipe.generate(req, on_step=lambda event: cancel.set(), cancel=cancel)
    assert token_merging_ratio(pipe.unet) == 0 and pipe.unet.tome is None


@pytest.mark.parametrize("bad", [-0.5, 1, float("nan"), "0.5", None, True])
@pytest.mark.parametrize("name", ["token_merging_ratio", "token_merging_ratio_hr"])
def test_request_validates_ratios(name, bad):
    with pytest.raises(ValueError, match=name):
        engine.GenerationRequest("x", **{name: bad})
    assert engine.GenerationRequest("x", **{name: 0.9}).__dict__[name] == 0.9


def test_cli_flag_is_used_recorded_and_read_back(tmp_path, capsys):
    from inkpunk_studio.cli import main
    from inkpunk_studio.metadata import read_params

    ckpt = tmp_path / "tiny.safetensors"
    write_random_checkpoint(ckpt, seed=4)
    common = ["--checkpoint", str(ckpt), "--prompt", "x", "--seed", "3", "--steps", "2", "--width", "64",
              "--height", "64", "--sampler", "euler"]
    assert main([*common, "--token-merging-ratio", "0.5", "--out", str(tmp_path / "a.png")]) == 0
    assert read_params(tmp_path / "a.png").token_merging_ratio == 0.5
    # --from-png reproduces the image, ratio included
    assert main(["--checkpoint", str(ckpt), "--from-png", str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "b.png")]) == 0
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert a.tobytes() == b.tobytes() and "Token merging ratio: 0.5" in b.text["parameters"]
    assert main([*common, "--token-merging-ratio", "1.5", "--out", str(tmp_path / "c.png")]) == 2
    assert "token_merging_ratio" in capsys.readouterr().err and not (tmp_path / "c.png").exists()
