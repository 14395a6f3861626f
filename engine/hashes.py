"""File hashes as AUTOMATIC1111 writes them into infotexts (modules/hashes.py, modules/sd_models.py).

  * `Model hash` (Civitai "AutoV2"): sha256 of the whole checkpoint file, first 10 hex digits;
  * `VAE hash`: sha256 of the VAE file, first 10 hex digits;
  * `TI hashes`: sha256 of the embedding file, first 12 hex digits;
  * `Lora hashes`: the "addnet" hash, sha256 of a .safetensors file *without* its 8-byte header length and
    JSON header (so editing metadata keeps the hash), first 12 hex digits (hashes.addnet_hash_safetensors);
    for other files A1111 uses the plain sha256, likewise cut to 12.
No torch here: hashing needs only hashlib.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_BLOCK = 1 << 20  # A1111 reads 1 MiB blocks; the block size does not change the digest


def _sha256(path: Path, skip: int = 0) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(skip)
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256(path: str | Path) -> str:
    """The full sha256 hex digest of a file."""
    return _sha256(Path(path))


def model_hash(path: str | Path) -> str:
    """A1111's `Model hash`: sha256[:10]."""
    return sha256(path)[:10]


def vae_hash(path: str | Path) -> str:
    """A1111's `VAE hash`: sha256[:10]."""
    return sha256(path)[:10]


def embedding_hash(path: str | Path) -> str:
    """A1111's `TI hashes` entry: sha256[:12]."""
    return sha256(path)[:12]


def addnet_hash(path: str | Path) -> str:
    """The full addnet digest: sha256 of a .safetensors file's data after the header.

    A1111 modules/hashes.py addnet_hash_safetensors: read the 8-byte little-endian header length n, seek to
    n + 8, hash the rest.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) != 8:
        raise ValueError(f"{path.name}: too short for a safetensors file")
    return _sha256(path, skip=int.from_bytes(head, "little") + 8)


def lora_hash(path: str | Path) -> str:
    """A1111's `Lora hashes` entry (extensions-builtin/Lora/network.py NetworkOnDisk): the metadata's
    `sshs_model_hash` when a .safetensors file carries one, else its addnet hash; sha256 for other files;
    first 12 hex digits."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        stored = _safetensors_metadata(path).get("sshs_model_hash")
        return (stored if isinstance(stored, str) and stored else addnet_hash(path))[:12]
    return sha256(path)[:12]


def _safetensors_metadata(path: Path) -> dict:
    """The `__metadata__` of a safetensors header ({} when absent or unreadable)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100 << 20:
                return {}
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}
