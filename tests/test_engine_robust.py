"""Engine robustness: checkpoint paths that are not files, a pipeline built inside torch.inference_mode(),
cancelling during the VAE decode, and the model hash taken at load time (issue 11)."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading

import pytest
import torch

import engine
from engine.modelhash import BackgroundHash
from engine.testing import write_random_checkpoint

SMALL = {"prompt": "nvinkpunk a fox", "steps": 2, "width": 64, "height": 64, "seed": 5}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("robust") / "tiny.safetensors", seed=2)


@pytest.fixture(scope="module")
def pipe(ckpt):
    return engine.load_pipeline(ckpt, device="cpu", dtype="fp32")


# ---------------------------------------------------------------- checkpoint paths
def test_a_folder_as_checkpoint_says_it_is_a_folder(tmp_path):
    folder = tmp_path / "models.safetensors"
    folder.mkdir()
    with pytest.raises(engine.CheckpointError, match=r"is a folder, not a checkpoint file") as info:
        engine.load_pipeline(folder, device="cpu", dtype="fp32")
    assert "no checkpoint file" not in str(info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX thing")
def test_a_fifo_as_checkpoint_says_it_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)
    with pytest.raises(engine.CheckpointError, match="is not a regular file"):  # and does not block on open
        engine.load_pipeline(fifo, device="cpu", dtype="fp32")


def test_missing_checkpoint_still_says_so(tmp_path):
    with pytest.raises(engine.CheckpointError, match="no checkpoint file at"):
        engine.load_pipeline(tmp_path / "gone.ckpt", device="cpu", dtype="fp32")


def test_empty_file_message_names_the_file_once(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(engine.CheckpointError) as info:
        engine.load_pipeline(empty, device="cpu", dtype="fp32")
    assert str(info.value).count("empty.ckpt") == 1, str(info.value)


# ---------------------------------------------------------------- inference mode
def test_pipeline_built_inside_inference_mode(ckpt, pipe):
    """Inference tensors have no version counter: the VAE's upsampling kernel cache must not read it."""
    with torch.inference_mode():
        inner = engine.load_pipeline(ckpt, device="cpu", dtype="fp32")
        result = inner.generate(engine.GenerationRequest(**SMALL))
        again = inner.generate(engine.GenerationRequest(**SMALL))
    expected = pipe.generate(engine.GenerationRequest(**SMALL))
    assert torch.allclose(result.latents, expected.latents, atol=1e-5)
    assert result.images[0].tobytes() == again.images[0].tobytes()
    assert result.images[0].tobytes() == expected.images[0].tobytes()


# ---------------------------------------------------------------- cancel during the decode
def test_cancel_during_vae_decode_stops_before_the_last_block(pipe):
    """A cancel set once the decoder started must stop it between blocks, not after its last layer."""
    decoder = pipe.vae.decoder
    cancel = threading.Event()
    calls = {"conv_out": 0}
    hooks = [
        decoder.mid.register_forward_hook(lambda *_: cancel.set()),
        decoder.conv_out.register_forward_hook(lambda *_: calls.__setitem__("conv_out", calls["conv_out"] + 1)),
    ]
    try:
        with pytest.raises(engine.Cancelled):
            pipe.generate(engine.GenerationRequest(**SMALL), cancel=cancel)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls["conv_out"] == 0, "the decoder ran to its end after the cancel"


def test_decode_interrupt_is_called_between_blocks_and_keeps_the_numbers(pipe):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    count = []
    with torch.inference_mode():
        plain = pipe.vae.decode(z)
        checked = pipe.vae.decode(z, interrupt=lambda: count.append(1))
    assert torch.equal(plain, checked)
    assert len(count) >= len(pipe.vae.decoder.up) + 1


def test_tiled_decode_is_interruptible(pipe):
    z = torch.randn(1, 4, 24, 24)
    seen = []

    def interrupt():
        seen.append(1)
        if len(seen) == 3:
            raise engine.Cancelled("stop")

    with torch.inference_mode(), pytest.raises(engine.Cancelled):
        pipe.vae.decode(z, tiled=True, interrupt=interrupt)
    assert len(seen) == 3


# ---------------------------------------------------------------- model hash at load time
def _sha10(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def test_model_hash_survives_the_checkpoint_being_deleted(ckpt, tmp_path):
    """The hash comes from the file that was loaded, read in the background from a handle opened then."""
    own = tmp_path / "mine.safetensors"
    shutil.copyfile(ckpt, own)
    expected = _sha10(own)
    loaded = engine.load_pipeline(own, device="cpu", dtype="fp32")
    own.rename(tmp_path / "moved.safetensors")
    (tmp_path / "moved.safetensors").unlink()
    assert loaded.wait_model_hash(timeout=30) == expected
    assert loaded.model_hash == expected
    assert loaded.model_name == "mine"


def test_an_unreadable_hash_is_empty_not_an_error(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    with open(path, "rb") as handle:
        pass  # closed: reading it fails in the thread
    assert BackgroundHash(handle, "x.bin").result(timeout=10) == ""
    with open(path, "rb") as f:
        assert BackgroundHash(f).result(timeout=10) == hashlib.sha256(b"abc").hexdigest()[:10]


def test_encode_is_interruptible_and_keeps_the_numbers(pipe):
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    calls = []
    with torch.inference_mode():
        plain = pipe.vae.encode(x)
        checked = pipe.vae.encode(x, interrupt=lambda: calls.append(1))
    assert torch.equal(plain, checked) and len(calls) >= len(pipe.vae.encoder.down)

    def stop():
        raise engine.Cancelled("stop")

    with torch.inference_mode(), pytest.raises(engine.Cancelled):
        pipe.vae.encode(x, interrupt=stop)
