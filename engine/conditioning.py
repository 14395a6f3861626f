"""Prompt texts -> the cross-attention context SD1.x's UNet reads, built as A1111 v1.10.1 builds it.

`Conditioner.encode` is A1111's `get_learned_conditioning` for one batch of texts
(`modules/sd_hijack_clip.py: TextConditionalModel.forward / process_tokens`): every text is cut into 77-token
chunks (engine.prompt), chunk i of all texts is encoded as one batch (texts with fewer chunks get the empty
chunk), and the chunks' hidden states are concatenated along the token axis -> (B, 77 * k, width).
Emphasis (`modules/sd_emphasis.py`) is applied per chunk batch:
- "original": z * m, then rescaled so the mean over the whole batch is what it was (A1111's default);
- "no_norm": z * m;  "ignore": brackets parsed but weights not applied;  "none": brackets are plain text;
- "comfy": ComfyUI's (z - z_empty) * m + z_empty where m != 1 (`comfy/sd1_clip.py:
  ClipTokenWeightEncoder.encode_token_weights`), z_empty the encoding of the empty prompt. Only the weighting
  is ComfyUI's; the chunking stays A1111's.
Clip skip N takes layer L-N+1's hidden states through the final LayerNorm (engine.clip). Textual-inversion
vectors replace the input embeddings of their placeholder tokens (A1111 `sd_hijack.EmbeddingsWithFixes`).

`Conditioner.schedule` encodes a prompt's schedule (engine.prompt.schedules: prompt editing, alternation) with
each distinct text encoded once, and `PromptSchedule.at(k)` gives the context for denoiser call k by A1111's
rule (`prompt_parser.reconstruct_cond_batch`): the first entry with k <= end_at_step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from engine import prompt as prompt_lang
from engine.prompt import CHUNK, EMPHASIS_MODES, Chunk, empty_chunk


class PromptSchedule:
    """A prompt's conditionings over the run: `entries` = [(end_at_step, text)], `conds` (n_distinct, T, D)
    holds each distinct text once."""

    def __init__(self, entries: Sequence[tuple[int, str]], texts: Sequence[str], conds: torch.Tensor):
        self.entries = list(entries)
        self.texts = list(texts)
        self.conds = conds
        index = {t: i for i, t in enumerate(self.texts)}
        self._rows = [(end, index[text]) for end, text in self.entries]

    def at(self, call_index: int) -> torch.Tensor:
        """(1, T, D): the conditioning of the first entry with call_index <= end_at_step. Past the last
        entry A1111 falls back to the first one (its target_index starts at 0), and so does this."""
        row = next((r for end, r in self._rows if call_index <= end), self._rows[0][1])
        return self.conds[row : row + 1]

    def __len__(self) -> int:
        return len(self.entries)


class Conditioner:
    """Encodes prompt texts with a loaded `engine.clip.TextEncoder` and `engine.tokenizer.Tokenizer`."""

    def __init__(self, text_encoder: torch.nn.Module, tokenizer: Any, device: torch.device | str,
                 dtype: torch.dtype):
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype

    def encode(
        self,
        texts: Sequence[str],
        *,
        emphasis: str = "original",
        clip_skip: int = 1,
        embeddings: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(len(texts), 77 * k, D) in `dtype`: A1111's conditioning of this batch of texts. A text that
        appears several times is encoded once, but counts as often as it appears in "original"'s batch mean,
        as it does in A1111."""
        distinct, conds = self._encode(texts, emphasis, clip_skip, embeddings)
        index = {t: i for i, t in enumerate(distinct)}
        return conds[[index[t] for t in texts]]

    def schedule(
        self,
        prompt: str,
        steps: int,
        *,
        hires_steps: int | None = None,
        old: bool = False,
        emphasis: str = "original",
        clip_skip: int = 1,
        embeddings: Mapping[str, torch.Tensor] | None = None,
    ) -> PromptSchedule:
        """The prompt's schedule for `steps` denoiser calls (A1111 passes 2 * steps for second-order
        samplers), every scheduled text encoded in one batch as A1111 does, each distinct text once."""
        entries = prompt_lang.schedules(prompt, steps, hires_steps, old)
        distinct, conds = self._encode([t for _, t in entries], emphasis, clip_skip, embeddings)
        return PromptSchedule(entries, distinct, conds)

    # -----------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _encode(
        self,
        texts: Sequence[str],
        emphasis: str,
        clip_skip: int,
        embeddings: Mapping[str, torch.Tensor] | None,
    ) -> tuple[list[str], torch.Tensor]:
        """(distinct texts, their conditionings (n, 77 * k, D)); `texts`' multiplicities weight the mean."""
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise ValueError("expected a non-empty list of prompt texts")
        if emphasis not in EMPHASIS_MODES:
            raise ValueError(f"emphasis must be one of {', '.join(EMPHASIS_MODES)}; got {emphasis!r}")
        layers = self.text_encoder.config.layers
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= layers:
            raise ValueError(f"clip skip must be an integer 1..{layers}, got {clip_skip!r}")
        embeddings = self._check_embeddings(embeddings)

        counts = Counter(texts)
        distinct = list(counts)
        lines = [prompt_lang.tokenize_line(t, emphasis, self.tokenizer, embeddings)[0] for t in distinct]
        weight = torch.tensor([counts[t] for t in distinct], dtype=torch.float32, device=self.device)
        blank = empty_chunk(self.tokenizer.bos_id, self.tokenizer.eos_id)
        z_empty = None

        zs = []
        for i in range(max(len(chunks) for chunks in lines)):
            batch = [chunks[i] if i < len(chunks) else blank for chunks in lines]
            z = self._run(batch, clip_skip, embeddings)  # (n, 77, D) float32
            m = torch.tensor([c.multipliers for c in batch], dtype=torch.float32, device=self.device)[..., None]
            if emphasis == "original":
                before = _weighted_mean(z, weight)
                z = z * m
                z = z * (before / _weighted_mean(z, weight))
            elif emphasis == "no_norm":
                z = z * m
            elif emphasis == "comfy" and bool((m != 1).any()):
                if z_empty is None:
                    z_empty = self._run([blank], clip_skip, embeddings)
                z = torch.where(m != 1, (z - z_empty) * m + z_empty, z)
            zs.append(z)
        return distinct, torch.cat(zs, dim=1).to(self.dtype)

    def _run(self, batch: list[Chunk], clip_skip: int, embeddings: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One chunk per row through the text encoder -> (n, 77, D) float32, placeholder tokens replaced by
        their embedding vectors (at offset+1, after BOS, as many as fit before position 77)."""
        ids = torch.tensor([c.ids for c in batch], dtype=torch.long, device=self.device)
        token_embeds = None
        if any(c.fixes for c in batch):
            token_embeds = self.text_encoder.token_embeds(ids).clone()
            for row, chunk in enumerate(batch):
                for offset, name in chunk.fixes:
                    vectors = embeddings[name]
                    n = min(CHUNK + 2 - offset - 1, vectors.shape[0])
                    token_embeds[row, offset + 1 : offset + 1 + n] = vectors[:n].to(token_embeds)
        return self.text_encoder(ids, clip_skip=clip_skip, token_embeds=token_embeds).float()

    def _check_embeddings(self, embeddings: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        width = self.text_encoder.config.width
        out = {}
        for name, vectors in (embeddings or {}).items():
            if not isinstance(vectors, torch.Tensor) or vectors.ndim != 2 or vectors.shape[1] != width:
                shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
                raise ValueError(f"embedding {name!r} must be a (n_vectors, {width}) tensor, got {shape}")
            out[name] = vectors
        return out


def _weighted_mean(z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The mean of z (n, T, D) over a batch in which row r appears weight[r] times (float32: MPS has no
    float64; torch's reductions sum pairwise, so this is as exact as A1111's z.mean())."""
    per_row = z.sum(dim=(1, 2))
    return (per_row * weight).sum() / (weight.sum() * z.shape[1] * z.shape[2])
