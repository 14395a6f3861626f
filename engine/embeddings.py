"""Textual-inversion embeddings: files that hold one or more input-embedding vectors for a new word.

Formats (as A1111 modules/textual_inversion/textual_inversion.py EmbeddingDatabase.load_from_file and
diffusers' TextualInversionLoaderMixin read them):
  * A1111 `.pt`/`.bin`: {"string_to_param": {"*": (n, 768)}, "string_to_token": ..., "name": ..., ...};
  * A1111 `.safetensors`: {"emb_params": (n, 768)};
  * diffusers `learned_embeds.bin` / `.safetensors`: {"<token>": (768,) or (n, 768)}.
SDXL embeddings ({"clip_g", "clip_l"}) are refused. Pickles are read weights-only, like checkpoints.
The word that invokes an embedding is its file stem (A1111), unless the caller names another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.checkpoint import PICKLE_SUFFIXES, _read_pickle, _read_safetensors
from engine.errors import CheckpointError
from engine.hashes import embedding_hash

EMBEDDING_SUFFIXES = {".pt", ".bin", ".safetensors"}


@dataclass
class Embedding:
    name: str  # the file stem: the word that invokes it
    vectors: torch.Tensor  # (n, width) float32 on the CPU
    hash: str  # A1111's `TI hashes` entry: sha256[:12]
    path: Path

    @property
    def width(self) -> int:
        return self.vectors.shape[1]


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise CheckpointError(f"{path.name}: not an embedding file (expected .pt, .bin or .safetensors)")


def _vectors(path: Path, data: Any) -> torch.Tensor:
    """The (n, width) tensor of an embedding file's contents, by format."""
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"{path.name}: not a textual-inversion embedding (holds {type(data).__name__})")
    if "clip_g" in data or "clip_l" in data:
        raise CheckpointError(f"{path.name}: an SDXL embedding (clip_g/clip_l): only SD 1.x embeddings are supported")
    if "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        if not isinstance(params, dict) or not params:
            raise CheckpointError(f"{path.name}: string_to_param holds no tensor")
        value = next(iter(params.values()))
    elif "emb_params" in data:  # A1111 .safetensors
        value = data["emb_params"]
    elif len(data) == 1:  # diffusers: {token: tensor}
        value = next(iter(data.values()))
    else:
        raise CheckpointError(
            f"{path.name}: not a textual-inversion embedding: keys {', '.join(map(str, list(data)[:4]))}"
        )
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim not in (1, 2):
        raise CheckpointError(f"{path.name}: the embedding is not a 1-D or 2-D float tensor")
    value = value.detach().float()
    if value.ndim == 1:
        value = value[None]
    if value.shape[0] == 0:
        raise CheckpointError(f"{path.name}: the embedding has no vectors")
    return value.clone()


def load_embedding(path: str | Path) -> Embedding:
    """Read a textual-inversion file. Raises CheckpointError (unreadable, hostile, or foreign files)."""
    path = Path(path)
    vectors = _vectors(path, _read(path))
    return Embedding(name=path.stem, vectors=vectors, hash=embedding_hash(path), path=path)


def check_width(embedding: Embedding, width: int) -> None:
    """Refuse an embedding made for another text encoder (SD2's is 1024 wide, SD1's 768)."""
    if embedding.width != width:
        model = {1024: " (Stable Diffusion 2.x)", 1280: " (SDXL)"}.get(embedding.width, "")
        raise CheckpointError(
            f"{embedding.path.name}: {embedding.width}-wide vectors{model}, but this model's text encoder is "
            f"{width} wide: the embedding was made for another model"
        )
