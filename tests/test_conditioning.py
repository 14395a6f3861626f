"""engine.conditioning (and engine.clip's clip skip / input embeddings) against transformers' CLIPTextModel
holding the same random weights, with A1111's chunking, emphasis and scheduling maths recomputed here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from engine import prompt as P
from engine.clip import TextEncoder
from engine.conditioning import Conditioner
from engine.config import TextEncoderConfig
from engine.testing import random_state_dict
from engine.tokenizer import default_tokenizer

TOL = 1e-5
CFG = TextEncoderConfig.tiny()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def models():
    ours = TextEncoder(CFG)
    state = random_state_dict(ours, np.random.default_rng(3), torch.float32)
    ours.load_state_dict(state, strict=True)
    ref = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CFG.vocab_size,
            hidden_size=CFG.width,
            intermediate_size=CFG.mlp_width,
            num_hidden_layers=CFG.layers,
            num_attention_heads=CFG.heads,
            max_position_embeddings=CFG.max_positions,
            hidden_act="quick_gelu",
            layer_norm_eps=CFG.layer_norm_eps,
        )
    )
    if not hasattr(ref, "text_model"):  # transformers >= 5 dropped the `text_model` level
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    return ours.eval(), ref.eval()


@pytest.fixture(scope="module")
def cond(models):
    return Conditioner(models[0], default_tokenizer(), "cpu", torch.float32)


def _text_model(ref):
    return getattr(ref, "text_model", ref)


@torch.no_grad()
def reference(ref, ids, clip_skip=1, fixes=()):
    """A1111's encode_with_transformers on transformers' model: hidden_states[-N] + final LayerNorm, with
    textual-inversion vectors written over the token embeddings' output (as EmbeddingsWithFixes does)."""
    ids = torch.as_tensor(ids)
    tm = _text_model(ref)

    def put_vectors(_module, _inputs, out):
        out = out.clone()
        for row, offset, vectors in fixes:
            out[row, offset + 1 : offset + 1 + len(vectors)] = vectors
        return out

    hook = tm.embeddings.token_embedding.register_forward_hook(put_vectors)
    try:
        hidden = ref(input_ids=ids, output_hidden_states=True).hidden_states[-clip_skip]
    finally:
        hook.remove()
    return tm.final_layer_norm(hidden)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_clip_skip_matches_transformers(models, clip_skip):
    ours, ref = models
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, CFG.vocab_size, (3, 77), generator=g)
    ids[:, 0] = 49406
    with torch.no_grad():
        got = ours(ids, clip_skip=clip_skip)
    assert rel_err(got, reference(ref, ids, clip_skip)) <= TOL
    if clip_skip == 1:
        assert rel_err(got, ref(input_ids=ids).last_hidden_state) <= TOL
    with pytest.raises(ValueError, match="clip skip"):
        ours(ids, clip_skip=CFG.layers + 1)


def _chunk_ids(text, emphasis="original", **kw):
    out = P.chunks(text, emphasis, default_tokenizer(), **kw)
    return [c[0] for c in out], torch.tensor([c[1] for c in out])


@pytest.mark.parametrize("emphasis", P.EMPHASIS_MODES)
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_emphasis_modes(models, cond, emphasis, clip_skip):
    _, ref = models
    texts = ["a (cat:1.5) [dog], ((red))", "a house"]
    got = cond.encode(texts, emphasis=emphasis, clip_skip=clip_skip)
    assert got.shape == (2, 77, CFG.width) and got.dtype == torch.float32

    rows = [_chunk_ids(t, emphasis) for t in texts]
    ids = [r[0][0] for r in rows]
    m = torch.stack([r[1][0] for r in rows])[..., None].double()
    z = reference(ref, ids, clip_skip).double()
    if emphasis == "original":  # A1111 EmphasisOriginal: one mean over the whole (B, 77, D) batch
        expected = z * m * (z.mean() / (z * m).mean())
    elif emphasis == "no_norm":
        expected = z * m
    elif emphasis == "comfy":
        z_empty = reference(ref, [P.empty_chunk().ids], clip_skip).double()
        expected = torch.where(m != 1, (z - z_empty) * m + z_empty, z)
    else:  # ignore / none: no weighting ("none" already tokenized the brackets as text)
        expected = z
    assert rel_err(got, expected) <= TOL
    if emphasis in ("original", "no_norm", "comfy"):
        assert rel_err(got, z) > 1e-3  # the weights did something


def test_multi_chunk_alignment(models, cond):
    _, ref = models
    long = "cat " * 80 + "(dog:1.3)"
    got = cond.encode([long, "a house"], clip_skip=2)
    assert got.shape == (2, 154, CFG.width)
    (c0, c1), m_long = _chunk_ids(long)
    [h0], m_short = _chunk_ids("a house")
    blank = P.empty_chunk().ids
    for i, (ids, m) in enumerate([([c0, h0], [m_long[0], m_short[0]]), ([c1, blank], [m_long[1], [1.0] * 77])]):
        z = reference(ref, ids, 2).double()
        m = torch.tensor([list(x) for x in m]).double()[..., None]
        expected = z * m * (z.mean() / (z * m).mean())  # the mean restored per chunk batch
        assert rel_err(got[:, 77 * i : 77 * (i + 1)], expected) <= TOL
    # A lone short prompt stays one chunk; the empty prompt is BOS + 76 EOS.
    assert cond.encode(["a house"]).shape == (1, 77, CFG.width)
    assert rel_err(cond.encode([""])[0], reference(ref, [blank])[0]) <= TOL


def test_repeated_texts_encoded_once_but_weighted_in_the_mean(models, cond):
    _, ref = models
    calls = []
    hook = cond.text_encoder.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    try:
        got = cond.encode(["(a:1.4) cat", "b", "b"])
    finally:
        hook.remove()
    assert calls == [2]  # one chunk batch, the two distinct texts
    ids, ms = zip(*(_chunk_ids(t) for t in ["(a:1.4) cat", "b", "b"]))
    z = reference(ref, [i[0] for i in ids]).double()
    m = torch.stack([x[0] for x in ms]).double()[..., None]
    expected = z * m * (z.mean() / (z * m).mean())  # A1111's batch really holds "b" twice
    assert rel_err(got, expected) <= TOL and torch.equal(got[1], got[2])


def test_textual_inversion_vectors(models, cond):
    _, ref = models
    g = torch.Generator().manual_seed(5)
    vectors = torch.randn(3, CFG.width, generator=g) * 0.5
    text = "a (inkpunkemb:1.2) cat"
    got = cond.encode([text], embeddings={"inkpunkemb": vectors})
    [ids], m = _chunk_ids(text, embeddings={"inkpunkemb": 3})
    assert ids[:6] == [49406, 320, 0, 0, 0, 2368]
    z = reference(ref, [ids], fixes=[(0, 1, vectors)]).double()  # offset 1: after "a"; vectors at 2..4
    m = m.double()[..., None]
    expected = z * m * (z.mean() / (z * m).mean())
    assert rel_err(got, expected) <= TOL
    # Without the vectors the placeholders would be token 0: clearly different.
    assert rel_err(got, cond.encode(["a (!!!:1.2) cat"])) > 1e-3
    # Vectors past position 76 are cut, as A1111's min(77 - offset - 1, n).
    long = cond.encode(["cat " * 74 + "inkpunkemb"], embeddings={"inkpunkemb": vectors})
    assert long.shape == (1, 154, CFG.width)


def test_schedule_switches_at_a1111s_call_index(models, cond):
    calls = []
    hook = cond.text_encoder.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    try:
        sched = cond.schedule("a [cat:dog:2] [red|blue]", 5, clip_skip=2)
    finally:
        hook.remove()
    assert sched.entries == [(1, "a cat red"), (2, "a cat blue"), (3, "a dog red"), (4, "a dog blue"),
                             (5, "a dog red")]
    assert calls == [4]  # one batch, each distinct text once ("a dog red" twice in the schedule)
    expected = cond.encode([t for _, t in sched.entries], clip_skip=2)  # A1111's batch: all five texts
    # Denoiser call k uses the first entry with k <= end_at_step: calls 0 and 1 -> entry 0, 2 -> 1, ...
    for call, entry in [(0, 0), (1, 0), (2, 1), (3, 2), (4, 3), (5, 4)]:
        assert torch.equal(sched.at(call), expected[entry : entry + 1]), call
    assert torch.equal(sched.at(6), expected[0:1])  # past the end A1111 falls back to the first entry
    assert sched.at(0).shape == (1, 77, CFG.width) and len(sched) == 5


def test_schedule_hires_and_long_variants(cond):
    sched = cond.schedule("[cat " * 1 + "x:" + "dog " * 80 + ":25]", 20, hires_steps=10)
    assert [e for e, _ in sched.entries] == [5, 10]
    assert sched.conds.shape == (2, 154, CFG.width)  # the short variant padded with an empty chunk


def test_bad_arguments(cond):
    with pytest.raises(ValueError, match="emphasis"):
        cond.encode(["a"], emphasis="Original")
    with pytest.raises(ValueError, match="clip skip"):
        cond.encode(["a"], clip_skip=0)
    with pytest.raises(ValueError, match="clip skip"):
        cond.encode(["a"], clip_skip=CFG.layers + 1)
    with pytest.raises(ValueError, match="tensor"):
        cond.encode(["a"], embeddings={"x": torch.zeros(2, CFG.width + 1)})
    with pytest.raises(ValueError, match="non-empty list"):
        cond.encode([])
    with pytest.raises(ValueError, match="non-empty list"):
        cond.encode("a cat")


def test_low_precision_model(models, cond):
    # A bf16 text encoder (as the app runs on CPUs that have it): weights in bf16, emphasis maths in fp32.
    low = TextEncoder(CFG)
    low.load_state_dict(models[0].state_dict())
    low = low.to(torch.bfloat16).eval()
    vectors = torch.randn(2, CFG.width, generator=torch.Generator().manual_seed(2))
    kw = {"embeddings": {"inkpunkemb": vectors}, "clip_skip": 2}
    got = Conditioner(low, default_tokenizer(), "cpu", torch.bfloat16).encode(["a (inkpunkemb:1.3) cat"], **kw)
    assert got.dtype == torch.bfloat16
    assert rel_err(got, cond.encode(["a (inkpunkemb:1.3) cat"], **kw)) <= 3e-2
