"""Model folders: LoRAs, embeddings, VAEs and checkpoints on disk, and the prompt's `<lora:...>` tags resolved
to files. No Qt here (the Networks panel and the worker use it; tests run it bare).

Folders, for the data folder's `models/` and every extra models folder from Settings (so an existing
AUTOMATIC1111 `models/` or ComfyUI `models/` folder works in place):
  * LoRAs: `Lora/`, `LyCORIS/` (A1111), `loras/` (ComfyUI);
  * embeddings: `embeddings/` (ComfyUI; inside the folder) and, for A1111, `../embeddings` beside `models/`;
  * VAEs: `VAE/` (A1111), `vae/` (ComfyUI);
  * checkpoints: `Stable-diffusion/` (A1111), `checkpoints/` (ComfyUI), and files directly in the folder.
Subfolders are searched too (A1111 does). A name is the file stem; when two folders hold the same name the
first folder wins (the data folder before the extra ones). A preview is `name.png` or `name.preview.png` (also
.jpg/.jpeg/.webp) beside the file, as A1111 and Civitai Helper save them.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.prompt import extract_extra_networks

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
KINDS = ("lora", "embedding", "vae", "checkpoint")
_SUBFOLDERS = {
    "lora": ("Lora", "LyCORIS", "loras"),
    "embedding": ("embeddings",),
    "vae": ("VAE", "vae"),
    "checkpoint": ("Stable-diffusion", "checkpoints"),
}
_PREVIEW_SUFFIXES = (".preview.png", ".png", ".preview.jpg", ".jpg", ".jpeg", ".webp")
_MAX_FILES = 20000  # a models folder pointed at a whole drive must not hang the scan


class MissingNetworks(ValueError):
    """The prompt names networks that no folder holds; `names` lists them (the run must not start)."""

    def __init__(self, kind: str, names: Sequence[str]) -> None:
        listed = ", ".join(names)
        super().__init__(f"{kind} not found in the model folders: {listed}")
        self.kind = kind
        self.names = list(names)


@dataclass(frozen=True)
class NetworkFile:
    """One model file found in the folders."""

    kind: str
    name: str  # the file stem: `<lora:name:1>`, the embedding's word
    path: Path
    preview: Path | None = None


def preview_for(path: Path) -> Path | None:
    """The preview image beside a model file, if there is one."""
    stem = path.with_suffix("")
    for suffix in _PREVIEW_SUFFIXES:
        candidate = stem.parent / (stem.name + suffix)
        if candidate.is_file():
            return candidate
    return None


class ModelFolders:
    """The data folder's `models/` plus extra models folders, scanned on demand (no cache: folders change)."""

    def __init__(self, roots: Iterable[str | Path]) -> None:
        seen: list[Path] = []
        for root in roots:
            if not root:
                continue
            path = Path(root).expanduser()
            if path not in seen:
                seen.append(path)
        self.roots = tuple(seen)

    def folders(self, kind: str) -> list[tuple[Path, bool]]:
        """The existing folders for `kind`, as (folder, recursive)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        out: list[tuple[Path, bool]] = []
        for root in self.roots:
            candidates = [(root / sub, True) for sub in _SUBFOLDERS[kind]]
            if kind == "embedding":
                candidates.append((root.parent / "embeddings", True))  # A1111: webui/embeddings beside models/
            if kind == "checkpoint":
                candidates.append((root, False))
            for folder, recursive in candidates:
                if folder.is_dir() and all(not _same_dir(folder, f) for f, _ in out):
                    out.append((folder, recursive))
        return out

    def scan(self, kind: str) -> list[NetworkFile]:
        """The model files of `kind`, sorted by name (case-insensitive), one per name (first folder wins)."""
        found: dict[str, NetworkFile] = {}
        for folder, recursive in self.folders(kind):
            for path in _model_files(folder, recursive):
                if path.stem not in found:
                    found[path.stem] = NetworkFile(kind, path.stem, path, preview_for(path))
        return sorted(found.values(), key=lambda f: (f.name.lower(), f.name))

    def find(self, kind: str, name: str) -> NetworkFile | None:
        """The file called `name` (exact stem, else the one stem equal ignoring case)."""
        files = self.scan(kind)
        exact = [f for f in files if f.name == name]
        if exact:
            return exact[0]
        loose = [f for f in files if f.name.lower() == name.lower()]
        return loose[0] if len(loose) == 1 else None


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _model_files(folder: Path, recursive: bool) -> list[Path]:
    """Model files under `folder`, hidden entries skipped, unreadable subfolders ignored."""
    out: list[Path] = []
    if recursive:
        walker: Iterable[tuple[str, list[str], list[str]]] = os.walk(folder, followlinks=True)
    else:
        try:
            walker = [(str(folder), [], [e.name for e in os.scandir(folder) if e.is_file()])]
        except OSError:
            return out
    for dirpath, dirnames, filenames in walker:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(MODEL_SUFFIXES):
                out.append(Path(dirpath) / name)
                if len(out) >= _MAX_FILES:
                    log.warning("%s: more than %d model files, the rest are ignored", folder, _MAX_FILES)
                    return out
    return out


# --------------------------------------------------------------------------------------------------------
# The prompt's tags


def _weight(text: str, tag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{tag}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{tag}: the weight must be a finite number")
    return value


def lora_tags(prompt: str) -> list[tuple[str, float, float]]:
    """`<lora:name:w>` / `<lora:name:te:unet>` tags -> (name, te_weight, unet_weight), in prompt order.

    As A1111's extensions-builtin/Lora/extra_networks_lora.py: the weight defaults to 1, the UNet's to the
    text encoder's; `te=`/`unet=` named arguments are accepted too. Raises ValueError for a bad weight.
    """
    out = []
    for kind, name, args in extract_extra_networks(prompt)[1]:
        if kind not in ("lora", "lyco"):
            continue
        tag = f"<{kind}:{name}{''.join(':' + a for a in args)}>"
        positional = [a for a in args if "=" not in a]
        named = dict(a.split("=", 1) for a in args if "=" in a)
        te = _weight(named.get("te", positional[0] if positional else "1"), tag)
        unet_text = named.get("unet", positional[1] if len(positional) > 1 else None)
        unet = te if unet_text is None else _weight(unet_text, tag)
        if not name.strip():
            raise ValueError(f"{tag}: the LoRA has no name")
        out.append((name, te, unet))
    return out


def resolve_loras(prompt: str, folders: ModelFolders) -> list[tuple[Path, float, float]]:
    """The prompt's LoRA tags as `GenerationRequest.loras` entries. Raises MissingNetworks naming every tag
    whose file no folder holds (nothing runs with a silently missing LoRA), ValueError for a bad weight."""
    tags = lora_tags(prompt)
    if not tags:
        return []
    files = folders.scan("lora")
    exact = {f.name: f for f in files}
    lower: dict[str, list[NetworkFile]] = {}
    for f in files:
        lower.setdefault(f.name.lower(), []).append(f)
    out, missing = [], []
    for name, te, unet in tags:
        match = exact.get(name)
        if match is None and len(lower.get(name.lower(), [])) == 1:
            match = lower[name.lower()][0]
        if match is None:
            if name not in missing:
                missing.append(name)
        else:
            out.append((match.path, te, unet))
    if missing:
        raise MissingNetworks("LoRA", missing)
    return out


def embeddings_in(texts: Sequence[str], folders: ModelFolders) -> list[NetworkFile]:
    """The embedding files whose word appears in any of `texts` (case-insensitive, as CLIP's tokenizer
    lowercases). A word that merely appears inside another is included too: loading an unused embedding is
    harmless (the engine matches on token ids, and only used ones reach `TI hashes`)."""
    lowered = [t.lower() for t in texts]
    return [f for f in folders.scan("embedding")
            if _valid_word(f.name) and any(f.name.lower() in t for t in lowered)]


def _valid_word(name: str) -> bool:
    return bool(name) and not re.search(r"\s", name)


def prepare_pipeline(pipe: Any, embeddings: Sequence[str | Path], vae: str | Path | None) -> None:
    """On the worker, before a job: add the embedding files the pipeline does not have yet (once per file:
    a word already loaded is kept), and select the VAE (None: the checkpoint's own; set_vae is a no-op when
    unchanged). Raises engine.CheckpointError for a bad file, naming it."""
    have = set(pipe.embeddings)
    for path in embeddings:
        path = Path(path)
        if path.stem not in have:
            pipe.add_embedding(path)
            have.add(path.stem)
    pipe.set_vae(Path(vae) if vae else None)


def record_networks(meta: Any, result: Any) -> None:
    """Copy the networks a generation used (engine GenerationResult) into its ImageParams: A1111's
    `Lora hashes`, `TI hashes`, `VAE` and `VAE hash`."""
    meta.lora_hashes = dict(result.lora_hashes)
    meta.ti_hashes = dict(result.ti_hashes)
    meta.vae_name = result.vae_name or ""
    meta.vae_hash = result.vae_hash or ""


def resolve_params(params: Any, folders: ModelFolders, vae: str = "") -> None:
    """Fill a GenerationParams' networks from its prompts and the chosen VAE, before the run starts: the
    LoRA files of its tags, the embedding files whose words appear, the VAE file ("" = the checkpoint's).
    Raises MissingNetworks for unknown LoRA names, ValueError for a bad weight or a VAE file that is gone."""
    params.loras = tuple(resolve_loras(params.prompt, folders))
    params.embeddings = tuple(str(f.path) for f in embeddings_in([params.prompt, params.negative_prompt], folders))
    if vae and not Path(vae).is_file():
        raise ValueError(f"The VAE chosen in Settings is gone: {vae}. Choose another one, or Automatic.")
    params.vae = vae or ""


# --------------------------------------------------------------------------------------------------------
# Checkpoint conversion


def convert_to_safetensors(path: str | Path) -> Path:
    """Write a weights-only `.safetensors` copy of a pickled checkpoint beside it (`name.safetensors`) and
    return its path. Atomic: written to a temporary file in the same folder, then renamed; the original is
    kept. The pickle is read weights-only (engine.checkpoint.read_state_dict: a hostile file raises
    CheckpointError and runs nothing). Raises ValueError when the target exists or the file is already
    .safetensors. Blocking and memory-hungry: run it off the GUI thread."""
    from safetensors.torch import save_file

    from engine.checkpoint import read_state_dict

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        raise ValueError(f"{path.name} is already a .safetensors file")
    target = path.with_suffix(".safetensors")
    if target.exists():
        raise ValueError(f"{target.name} already exists beside {path.name}: remove or rename it first")
    state = read_state_dict(path)
    # safetensors refuses shared or strided storage: give every tensor its own contiguous copy
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    tmp = target.with_name(f".{target.name}.partial")
    try:
        save_file(tensors, str(tmp), metadata={"converted_from": path.name})
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
