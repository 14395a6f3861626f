"""What a restored image used that this machine lacks: LoRAs, embeddings, the VAE and the model, by name and
hash, and the local file whose hash matches under another name (a LoRA renamed after download, ...).

Hashes are A1111's (engine.hashes: `Lora hashes` addnet sha256[:12], `TI hashes` sha256[:12], `VAE hash` and
`Model hash` sha256[:10]). Local files are hashed only when a name is missing, once per (path, size, mtime)
for the session. No Qt: the window runs `find_missing` in its I/O pool.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.hashes import embedding_hash, lora_hash, model_hash, vae_hash

from .metadata import ImageParams
from .networks import ModelFolders, NetworkFile, lora_tags

_HASHERS: dict[str, Callable[[Path], str]] = {
    "lora": lora_hash, "embedding": embedding_hash, "vae": vae_hash, "checkpoint": model_hash,
}
LABELS = {"lora": "LoRA", "embedding": "Embedding", "vae": "VAE", "checkpoint": "Model"}
_cache: dict[tuple[str, str, int, int], str] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class Missing:
    kind: str  # "lora", "embedding", "vae", "checkpoint"
    name: str  # as the image recorded it
    hash: str  # "" when the image recorded none
    match: Path | None = None  # a local file with the same hash under another name

    def describe(self) -> str:
        what = f"{LABELS[self.kind]} {self.name}" + (f" ({self.hash})" if self.hash else "")
        if self.match is not None:
            return f"{what}: not found by name, but {self.match.name} has the same hash"
        return f"{what}: not found"


def file_hash(kind: str, path: Path) -> str:
    """A1111's hash of a local file for `kind` (cached by path, size and modification time)."""
    st = path.stat()
    key = (kind, str(path), st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    value = _HASHERS[kind](path)
    with _cache_lock:
        _cache[key] = value
    return value


def _by_hash(kind: str, files: Sequence[NetworkFile], wanted: str) -> Path | None:
    for f in files:
        if _hash_ok(kind, f.path, wanted):
            return f.path
    return None


def _hash_ok(kind: str, path: Path, wanted: str) -> bool:
    if not wanted:
        return False
    try:
        return file_hash(kind, path).lower().startswith(wanted.lower())
    except (OSError, ValueError):
        return False


def _known(files: Sequence[NetworkFile], name: str) -> bool:
    lowered = name.lower()
    return any(f.name == name or f.path.name == name or f.name.lower() == lowered for f in files)


def find_missing(meta: ImageParams, folders: ModelFolders, model_path: str | Path | None = None) -> list[Missing]:
    """Every network `meta` records (or its prompt's LoRA tags name) that no folder holds by name, with the
    local file of the same hash when there is one. `model_path`: the loaded checkpoint, which counts as
    present (by name or by hash). Blocking (hashes files): run it in the I/O pool."""
    out: list[Missing] = []
    wanted: list[tuple[str, str, str]] = []
    loras = dict(meta.lora_hashes)
    try:
        for name, _, _ in lora_tags(meta.prompt):
            loras.setdefault(name, "")
    except ValueError:  # a malformed tag: the run will say so
        pass
    wanted += [("lora", name, h) for name, h in loras.items()]
    wanted += [("embedding", name, h) for name, h in meta.ti_hashes.items()]
    if meta.vae_name or meta.vae_hash:
        wanted.append(("vae", meta.vae_name or meta.vae_hash, meta.vae_hash))
    scanned: dict[str, list[NetworkFile]] = {}
    for kind, name, h in wanted:
        files = scanned.setdefault(kind, folders.scan(kind))
        if not _known(files, name) and not _known(files, Path(name).stem):
            out.append(Missing(kind, name, h, _by_hash(kind, files, h) if h else None))
    if meta.model_name or meta.model_hash:
        missing_model = _missing_model(meta, folders, Path(model_path) if model_path else None)
        if missing_model is not None:
            out.append(missing_model)
    return out


def _missing_model(meta: ImageParams, folders: ModelFolders, current: Path | None) -> Missing | None:
    name, h = meta.model_name, meta.model_hash
    if current is not None and (current.stem == name or _hash_ok("checkpoint", current, h)):
        return None
    files = folders.scan("checkpoint")
    if name and _known(files, name):
        return None
    return Missing("checkpoint", name or h, h, _by_hash("checkpoint", files, h) if h else None)


def use_matches(prompt: str, negative: str, missing: Sequence[Missing]) -> tuple[str, str]:
    """The prompts with each missing LoRA's tag and embedding's word renamed to the matching local file."""
    for m in missing:
        if m.match is None:
            continue
        new = m.match.stem
        if m.kind == "lora":
            pattern = re.compile(r"<(lora|lyco):" + re.escape(m.name) + r"(?=[:>])")
            prompt = pattern.sub(lambda x, new=new: f"<{x.group(1)}:{new}", prompt)
        elif m.kind == "embedding":
            word = re.compile(r"(?<![\w-])" + re.escape(m.name) + r"(?![\w-])")
            prompt, negative = word.sub(lambda _, new=new: new, prompt), word.sub(lambda _, new=new: new, negative)
    return prompt, negative
