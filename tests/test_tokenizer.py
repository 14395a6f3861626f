"""engine.tokenizer against transformers' CLIPTokenizer on the same bundled files; long-prompt chunking."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTokenizer

from engine.assets import tokenizer_files
from engine.tokenizer import Tokenizer

PROMPTS = [
    "nvinkpunk a portrait of a cyberpunk samurai, neon, highly detailed",
    "",
    "Café crème, naïve résumé — 東京 🌸\ttabs\nnewlines",
    "((masterpiece)), best quality, [ugly:0.5], 1girl",
    " ".join(["word"] * 90),  # over 75 tokens: truncated by __call__
]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def reference():
    vocab, merges = tokenizer_files()
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=77)


def test_ids_match_transformers(tok, reference):
    ids = tok(PROMPTS)
    expected = reference(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert ids.dtype == torch.long and ids.shape == (len(PROMPTS), 77)
    assert torch.equal(ids, expected.input_ids)


def test_padding_and_truncation(tok):
    ids = tok(["a cat", " ".join(["cat"] * 100)])
    assert ids[0, :4].tolist() == [49406, 320, 2368, 49407]
    assert (ids[0, 3:] == 49407).all()  # padded with the end token
    assert ids[1, 0] == 49406 and ids[1, 76] == 49407 and (ids[1, 1:76] == 2368).all()


def test_long_prompt_chunks(tok):
    long = " ".join(["cat"] * 200)
    chunks = tok.chunks([long, "a dog", ""])
    assert chunks.shape == (3, 3, 77)
    assert (chunks[:, :, 0] == 49406).all()
    # 200 tokens = 75 + 75 + 50, each window wrapped in BOS/EOS and padded.
    assert (chunks[0, 0, 1:76] == 2368).all() and chunks[0, 0, 76] == 49407
    assert (chunks[0, 2, 1:51] == 2368).all() and (chunks[0, 2, 51:] == 49407).all()
    # Shorter prompts: their own window, then empty-prompt chunks.
    assert torch.equal(chunks[1, 0], tok(["a dog"])[0])
    assert torch.equal(chunks[1, 1], tok([""])[0]) and torch.equal(chunks[2, 2], tok([""])[0])
    assert tok.chunks(["a dog"]).shape == (1, 1, 77)
    assert tok.chunks([" ".join(["cat"] * 75)]).shape == (1, 1, 77)
    assert tok.chunks([" ".join(["cat"] * 76)]).shape == (1, 2, 77)
    assert tok.chunks([" ".join(["x"] * 5000)]).shape == (1, 67, 77)  # never a crash


def test_count_tokens(tok):
    assert tok.count_tokens("") == 0
    assert tok.count_tokens("a cat") == 2
    assert tok.count_tokens(" ".join(["cat"] * 200)) == 200


def test_bad_input(tok):
    with pytest.raises(TypeError):
        tok("a single string, not a list")
    with pytest.raises(TypeError):
        tok([None])
    with pytest.raises(ValueError):
        tok([])


def test_tokenize_gives_bare_ids(tok, reference):
    texts = ["a cat, dog", "", "Café"]
    assert tok.tokenize(texts) == [reference(t, add_special_tokens=False).input_ids for t in texts]
    assert tok.comma_id == 267 == reference.get_vocab()[",</w>"]


def test_tokenizer_imports_without_torch():
    import subprocess
    import sys

    code = "import sys\nfrom engine.tokenizer import default_tokenizer\ndefault_tokenizer().tokenize(['a'])\n" \
        "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
