"""Real files through inkpunk_studio.networks and missing_networks: embeddings and the VAE prepared on a tiny
pipeline once per file, the used networks recorded in ImageParams, .ckpt -> .safetensors conversion, and a
restored image's missing LoRA/embedding/VAE/model named with the local file of the same hash."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import engine
from engine.checkpoint import read_state_dict
from engine.testing import ldm_state_dict, write_random_checkpoint
from inkpunk_studio.metadata import ImageParams
from inkpunk_studio.missing_networks import Missing, find_missing, use_matches
from inkpunk_studio.networks import ModelFolders, convert_to_safetensors, prepare_pipeline, record_networks


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("netfiles") / "tiny.safetensors", seed=31)


def test_prepare_pipeline_adds_each_embedding_once_and_sets_the_vae(ckpt, tmp_path):
    pipe = engine.load_pipeline(ckpt, device="cpu", dtype="fp32")
    width = pipe.text_encoder.text_model.embeddings.token_embedding.weight.shape[1]
    emb = tmp_path / "inkstyle.safetensors"
    save_file({"emb_params": torch.randn(2, width)}, str(emb))
    vae = tmp_path / "my-vae.safetensors"
    save_file({k: v for k, v in ldm_state_dict(seed=2).items() if k.startswith("first_stage_model.")}, str(vae))

    prepare_pipeline(pipe, [str(emb)], str(vae))
    vectors = pipe.embeddings["inkstyle"]
    prepare_pipeline(pipe, [emb], vae)  # once per file: the loaded vectors stay the same object
    assert pipe.embeddings["inkstyle"] is vectors
    res = pipe.generate(engine.GenerationRequest(prompt="inkstyle fox", steps=1, width=64, height=64, seed=1))
    meta = ImageParams(prompt="inkstyle fox")
    record_networks(meta, res)
    assert meta.ti_hashes == {"inkstyle": engine.embedding_hash(emb)}
    assert (meta.vae_name, meta.vae_hash) == ("my-vae.safetensors", engine.vae_hash(vae))
    assert "VAE hash: " + engine.vae_hash(vae) in meta.to_parameters_text()
    prepare_pipeline(pipe, [], None)
    assert pipe.vae_name is None

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(engine.CheckpointError):
        prepare_pipeline(pipe, [bad], None)


def test_convert_ckpt_to_safetensors(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "model.ckpt", seed=4)
    before = ckpt.read_bytes()
    out = convert_to_safetensors(ckpt)
    assert out == tmp_path / "model.safetensors" and ckpt.read_bytes() == before  # the original stays
    a, b = read_state_dict(ckpt), read_state_dict(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob(".*partial"))
    with pytest.raises(ValueError, match="already exists"):
        convert_to_safetensors(ckpt)
    with pytest.raises(ValueError, match="already"):
        convert_to_safetensors(out)


class Boom:
    def __reduce__(self):
        return (print, ("pwned",))


def test_convert_refuses_a_hostile_pickle(tmp_path):
    path = tmp_path / "evil.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"state_dict": Boom()}))
    with pytest.raises(engine.CheckpointError):
        convert_to_safetensors(path)
    assert not (tmp_path / "evil.safetensors").exists()


def test_missing_networks_by_name_and_hash(tmp_path):
    models = tmp_path / "models"
    (models / "Lora").mkdir(parents=True)
    (models / "embeddings").mkdir()
    (models / "VAE").mkdir()
    renamed = models / "Lora" / "my_local_name.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 2)}, str(renamed))
    save_file({"lora_unet_y.lora_down.weight": torch.zeros(2, 2)}, str(models / "Lora" / "present.safetensors"))
    neg = models / "embeddings" / "EasyNeg2.pt"
    torch.save({"string_to_param": {"*": torch.ones(1, 8)}}, neg)
    vae = models / "VAE" / "vae-ft-mse.safetensors"
    save_file({"x": torch.ones(1)}, str(vae))
    model = write_random_checkpoint(models / "local.safetensors", seed=1)
    folders = ModelFolders([models])

    meta = ImageParams(prompt="a fox <lora:inkpunk:0.7> <lora:present:1> <lora:untagged:1>",
                       negative_prompt="EasyNegative, blurry",
                       lora_hashes={"inkpunk": engine.lora_hash(renamed), "present": "000000000000"},
                       ti_hashes={"EasyNegative": engine.embedding_hash(neg), "gone": "abcdefabcdef"},
                       vae_name="vae-ft-mse.safetensors", vae_hash=engine.vae_hash(vae),
                       model_name="sd15-original", model_hash=engine.model_hash(model))
    missing = find_missing(meta, folders)
    assert missing == [
        Missing("lora", "inkpunk", engine.lora_hash(renamed), renamed),
        Missing("lora", "untagged", "", None),
        Missing("embedding", "EasyNegative", engine.embedding_hash(neg), neg),
        Missing("embedding", "gone", "abcdefabcdef", None),
        Missing("checkpoint", "sd15-original", engine.model_hash(model), model),
    ]
    assert "LoRA inkpunk (" in missing[0].describe() and "my_local_name.safetensors" in missing[0].describe()
    assert missing[3].describe() == "Embedding gone (abcdefabcdef): not found"
    # the loaded checkpoint counts, by name or by hash
    assert not [m for m in find_missing(meta, folders, model_path=model) if m.kind == "checkpoint"]

    prompt, negative = use_matches(meta.prompt, meta.negative_prompt, missing)
    assert prompt == "a fox <lora:my_local_name:0.7> <lora:present:1> <lora:untagged:1>"
    assert negative == "EasyNeg2, blurry"

    vae.unlink()
    assert find_missing(ImageParams(vae_name="vae-ft-mse.safetensors", vae_hash="0123456789"), folders) == [
        Missing("vae", "vae-ft-mse.safetensors", "0123456789", None)]
