"""Textual-inversion files: the vectors we load equal what diffusers' load_textual_inversion puts into the
token-embedding table, for every file format, single- and multi-vector; foreign and hostile files refused."""

from __future__ import annotations

import hashlib
import pickle
import zipfile

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import save_file
from test_models_parity import reference_models
from transformers import CLIPTokenizer

import engine
from engine.assets import tokenizer_files
from engine.checkpoint import read_state_dict
from engine.embeddings import load_embedding
from engine.testing import write_random_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("ti") / "tiny.safetensors", seed=12)


@pytest.fixture(scope="module")
def pipe(ckpt):
    return engine.load_pipeline(ckpt, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def width(pipe):
    return pipe.text_encoder.text_model.embeddings.token_embedding.weight.shape[1]


def write(path, fmt: str, vectors: torch.Tensor, token: str = "<thing>"):
    if fmt == "a1111_pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": path.stem,
                    "step": 1000, "sd_checkpoint": "abc", "sd_checkpoint_name": "model"}, path)
    elif fmt == "a1111_safetensors":
        save_file({"emb_params": vectors.contiguous()}, str(path))
    elif fmt == "diffusers_bin":
        torch.save({token: vectors[0] if len(vectors) == 1 else vectors}, path)
    else:
        save_file({token: vectors.contiguous()}, str(path))
    return path


FORMATS = {"a1111_pt": ".pt", "a1111_safetensors": ".safetensors", "diffusers_bin": ".bin",
           "diffusers_safetensors": ".safetensors"}


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_vectors_equal_diffusers_load_textual_inversion(fmt, n, pipe, width, ckpt, tmp_path):
    vectors = torch.randn(n, width, generator=torch.Generator().manual_seed(n))
    path = write(tmp_path / f"easyneg{n}{FORMATS[fmt]}", fmt, vectors)
    word = pipe.add_embedding(path)
    assert word == path.stem
    ours = pipe.embeddings[word]
    assert ours.shape == (n, width)
    assert pipe.embedding_hashes[word] == hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    clip, unet, vae = reference_models(read_state_dict(ckpt))
    vocab, merges = tokenizer_files()
    ref = StableDiffusionPipeline(
        vae=vae, text_encoder=clip, tokenizer=CLIPTokenizer(str(vocab), str(merges)), unet=unet,
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    ref.load_textual_inversion(str(path), token=word)
    tokens = [word] + [f"{word}_{i}" for i in range(1, n)]
    ids = ref.tokenizer.convert_tokens_to_ids(tokens)
    table = ref.text_encoder.get_input_embeddings().weight
    assert torch.equal(ours, table[ids].detach())


def test_token_override_and_bad_tokens(pipe, width, tmp_path):
    path = write(tmp_path / "style.safetensors", "a1111_safetensors", torch.ones(2, width))
    assert pipe.add_embedding(path, token="mystyle") == "mystyle"
    assert torch.equal(pipe.embeddings["mystyle"], torch.ones(2, width))
    for bad in ("", "two words"):
        with pytest.raises(ValueError, match="word"):
            pipe.add_embedding(path, token=bad)
    assert "" not in pipe.embeddings and "two words" not in pipe.embeddings


@pytest.mark.parametrize("kind", ["sdxl", "sd2", "unknown"])
def test_foreign_embeddings_are_refused(kind, pipe, tmp_path):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "sdxl":
        save_file({"clip_g": torch.zeros(2, 1280), "clip_l": torch.zeros(2, 768)}, str(path))
        message = "SDXL"
    elif kind == "sd2":
        save_file({"emb_params": torch.zeros(2, 1024)}, str(path))
        message = "2.x"
    else:
        save_file({"a": torch.zeros(2), "b": torch.zeros(3)}, str(path))
        message = "not a textual-inversion embedding"
    before = dict(pipe.embeddings)
    with pytest.raises(engine.CheckpointError, match=message):
        pipe.add_embedding(path)
    assert pipe.embeddings.keys() == before.keys()


class Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_hostile_pickle_embedding(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"string_to_param": {"*": Boom()}}, protocol=2))
        z.writestr("evil/version", "3\n")
    with pytest.raises(engine.CheckpointError, match="evil.pt"):
        load_embedding(path)
    assert not (tmp_path / "PWNED").exists()
