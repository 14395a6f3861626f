"""The prompt language of AUTOMATIC1111's webui (v1.10.1), reproduced so its infotexts give the same images.

Two passes run on a prompt, as in A1111:
- scheduling (`schedules`): `[a:b:N]`, `[a:N]`, `[a::N]` prompt editing and `[a|b]` alternation pick the text
  in force at each step (A1111 `modules/prompt_parser.py: get_learned_conditioning_prompt_schedules`);
- attention (`parse_attention`): `(a)`, `[a]`, `(a:1.3)`, escapes and `BREAK` give per-fragment weights
  (`prompt_parser.parse_prompt_attention`), which `chunks` turns into 75-token chunks of CLIP ids and
  multipliers (`modules/sd_hijack_clip.py: TextConditionalModel.tokenize_line`).
`extract_extra_networks` strips `<lora:name:w>`-style tags (`modules/extra_networks.py: parse_prompt`).
`AND` (composable diffusion) is not implemented: it stays plain text.

Malformed syntax never raises: it is text, as in A1111. Nothing here imports torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

EMPHASIS_MODES = ("original", "no_norm", "ignore", "none", "comfy")
CHUNK = 75  # prompt tokens per chunk; with BOS and EOS a chunk is CLIP's 77 positions
COMMA_BACKTRACK = 20  # A1111's default "Prompt word wrap length limit" (opts.comma_padding_backtrack)
BOS, EOS, COMMA = 49406, 49407, 267  # CLIP ViT-L/14: start, end (= pad for SD1.x) and ",</w>"

_ROUND, _SQUARE = 1.1, 1 / 1.1

# The tokens of A1111's `re_attention`, in its order of preference.
_ATTENTION = re.compile(
    r"""
      \\[()\[\]\\]              # an escaped bracket or backslash: literal
    | \\                        # a lone backslash: dropped
    | [(\[]                     # opening bracket
    | :\s*([+-]?[.\d]+)\s*\)    # explicit weight closing a round bracket
    | [)\]]                     # closing bracket
    | [^\\()\[\]:]+             # plain text
    | :                         # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Fragments of `text` with their attention weights, exactly as A1111's `parse_prompt_attention`.

    `(a)` multiplies by 1.1, `[a]` divides by 1.1, `(a:w)` multiplies by w; nested brackets multiply;
    an unclosed bracket applies to the rest of the prompt; stray closing brackets and colons are text;
    `BREAK` (upper case, a whole word) becomes the marker `("BREAK", -1.0)`; runs of equal weight merge.
    A weight A1111 would fail on (`(a:1.2.3)`, `(a:.)`) is kept as text here instead of raising.
    """
    _check_text(text)
    res: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if weight is not None:
            try:
                weight_value: float | None = float(weight)
            except ValueError:
                weight_value = None
        else:
            weight_value = None
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight_value is not None and round_open:
            multiply_from(round_open.pop(), weight_value)
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), _ROUND)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), _SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    res.append(["BREAK", -1.0])
                res.append([part, 1.0])
    for start in round_open:
        multiply_from(start, _ROUND)
    for start in square_open:
        multiply_from(start, _SQUARE)
    if not res:
        res = [["", 1.0]]

    merged = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(t, float(w)) for t, w in merged]


# ---------------------------------------------------------------------------------------------------------
# Prompt editing and alternation

# A1111's scheduling grammar (prompt_parser.schedule_parser, lark Earley), restated so that ambiguous prompts
# resolve the same way: emphasis brackets are matched (and copied through as text), `|` is only legal inside
# `[..|..]`, so a prompt with a stray `|` fails to parse and is used as it is.
_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
           | "(" prompt ":" prompt ")"
           | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""


# What every `[a:b:N]` contains (":" [WHITESPACE] NUMBER [WHITESPACE] "]"), loosely: a prompt with neither this
# nor a "|" has no edit or alternation, so its schedule is the prompt itself whether or not it parses, and the
# Earley parse (0.1-0.4 s for a long prompt) is skipped.
_MAYBE_EDIT = re.compile(r":\s*[+-]?\.?\d[0-9eE.+-]*\s*\]")


@lru_cache(maxsize=1)
def _parser():
    import lark

    return lark.Lark(_GRAMMAR)


@lru_cache(maxsize=64)
def _parse(prompt: str):
    """The parse tree of `prompt`, or None where A1111's grammar rejects it (cached: trees are only read)."""
    import lark

    try:
        return _parser().parse(prompt)
    except lark.exceptions.LarkError:
        return None


@dataclass(frozen=True)
class _Timing:
    """How `[a:b:N]`'s N maps to a step: A1111 v1.6+ (a decimal point means a fraction of the run) or the old
    rule (N < 1 is a fraction), and the hires-pass offsets."""

    steps: int
    old: bool
    int_offset: int
    flt_offset: float

    def when(self, number: str) -> int:
        v = float(number)
        if self.old:
            v = v * self.steps if v < 1 else v
        elif "." in number:
            v = (v - self.flt_offset) * self.steps
        else:
            v = v - self.int_offset
        if math.isinf(v):  # "1e999": A1111 overflows in int(); the edit then lies past (or before) the run
            return self.steps if v > 0 else -1
        return min(self.steps, int(v))


def _render(node: Any, step: int, timing: _Timing) -> str:
    """The text of a parse (sub)tree at `step` (1-based): scheduled nodes pick before/after, alternations
    pick option (step - 1) mod n, everything else is copied through."""
    from lark import Token

    if node is None:
        return ""
    if isinstance(node, Token):
        return str(node)
    if node.data == "scheduled":
        before, after, _, number, _ = node.children
        return _render(before, step, timing) if step <= timing.when(number) else _render(after, step, timing)
    if node.data == "alternate":
        return _render(node.children[(step - 1) % len(node.children)], step, timing)
    return "".join(_render(child, step, timing) for child in node.children)


def schedules(prompt: str, steps: int, hires_steps: int | None = None, old: bool = False) -> list[tuple[int, str]]:
    """[(end_at_step, text), ...] for one prompt, as A1111's `get_learned_conditioning_prompt_schedules`.

    `[a:b:N]`: with a decimal point N is a fraction of the run (`0.5`, `.5`), without one an absolute step;
    `old=True` is A1111's "Old prompt editing timelines" (N < 1 is a fraction, else a step). With
    `hires_steps` the schedule is the hires pass's: integers count on from `steps`, fractions 1..2 cover it.
    `[a|b]` alternates every step. A prompt the grammar rejects comes back unchanged: [(steps, prompt)].
    """
    _check_text(prompt)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if hires_steps is not None and (
        isinstance(hires_steps, bool) or not isinstance(hires_steps, int) or hires_steps < 1
    ):
        raise ValueError(f"hires_steps must be a positive integer or None, got {hires_steps!r}")
    if hires_steps is None or old:
        timing = _Timing(steps, old, 0, 0.0)
    else:
        timing = _Timing(hires_steps, False, steps, 1.0)

    if "|" not in prompt and not _MAYBE_EDIT.search(prompt):
        return [(timing.steps, prompt)]
    tree = _parse(prompt)
    if tree is None:
        return [(timing.steps, prompt)]

    boundaries = {timing.steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled":
            when = timing.when(node.children[3])
            if when >= 1:
                boundaries.add(when)
        elif node.data == "alternate":
            boundaries.update(range(1, timing.steps + 1))
    return [(t, _render(tree, t, timing)) for t in sorted(boundaries)]


# ---------------------------------------------------------------------------------------------------------
# Extra networks


def extract_extra_networks(text: str) -> tuple[str, list[tuple[str, str, list[str]]]]:
    """Strip `<kind:name:arg:...>` tags (`<lora:x:0.8>`, `<hypernet:y:1>`) as A1111's `extra_networks.
    parse_prompt`: the tag is replaced by nothing (commas and spaces around it stay), and each tag gives
    (kind, name, [args]) in prompt order."""
    _check_text(text)
    found: list[tuple[str, str, list[str]]] = []

    def take(m: re.Match[str]) -> str:
        name, *args = m.group(2).split(":")
        found.append((m.group(1), name, args))
        return ""

    return _EXTRA_NETWORK.sub(take, text), found


# ---------------------------------------------------------------------------------------------------------
# Chunks of token ids


class TokenizerLike(Protocol):
    bos_id: int
    eos_id: int
    comma_id: int

    def tokenize(self, texts: list[str]) -> list[list[int]]: ...


@dataclass
class Chunk:
    """77 token ids and multipliers (BOS + 75 + EOS), plus where textual-inversion vectors go:
    `fixes` = [(offset, name)], the vectors replacing positions offset+1 .. (after BOS)."""

    ids: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, str]] = field(default_factory=list)


def empty_chunk(bos: int = BOS, eos: int = EOS) -> Chunk:
    """The empty prompt's chunk: BOS + 76 EOS, all weights 1 (A1111 `empty_chunk`)."""
    return Chunk([bos] + [eos] * (CHUNK + 1), [1.0] * (CHUNK + 2))


def _embedding_lengths(embeddings: Mapping[str, Any] | None) -> dict[str, int]:
    out = {}
    for name, value in (embeddings or {}).items():
        n = value if isinstance(value, int) else int(value.shape[0])
        if not 1 <= n <= CHUNK:
            raise ValueError(f"embedding {name!r} has {n} vectors; a chunk holds 1..{CHUNK}")
        out[name] = n
    return out


def _embedding_lookup(lengths: dict[str, int], tokenizer: TokenizerLike) -> dict[int, list[tuple[list[int], str]]]:
    """first token id -> [(the name's ids, name)], longest first (A1111 `EmbeddingDatabase.ids_lookup`)."""
    lookup: dict[int, list[tuple[list[int], str]]] = {}
    if not lengths:
        return lookup
    for name, ids in zip(lengths, tokenizer.tokenize(list(lengths))):
        if not ids:
            raise ValueError(f"embedding name {name!r} has no tokens")
        lookup.setdefault(ids[0], []).append((ids, name))
    for entries in lookup.values():
        entries.sort(key=lambda e: len(e[0]), reverse=True)
    return lookup


def tokenize_line(
    text: str,
    emphasis: str = "original",
    tokenizer: TokenizerLike | None = None,
    embeddings: Mapping[str, Any] | None = None,
    *,
    comma_backtrack: int = COMMA_BACKTRACK,
) -> tuple[list[Chunk], int]:
    """(chunks, token count) for one prompt text, as A1111's `tokenize_line`.

    Fragments are tokenized separately and poured into 75-token chunks; `BREAK` closes a chunk; when a chunk
    fills up within `comma_backtrack` tokens after a comma, the tokens after the comma move to the next chunk;
    an embedding name (matched on token ids; `embeddings` maps name -> vectors or their count) becomes that many
    placeholder ids 0, never split across chunks. As in A1111, placeholders moved by the comma backtrack leave
    their fix in the chunk they were moved out of. The empty prompt is one chunk of BOS + 76 EOS.
    The token count is A1111's UI count: 75 per full chunk plus the tokens of the last one.
    """
    _check_text(text)
    _check_emphasis(emphasis)
    tok = tokenizer if tokenizer is not None else _default_tokenizer()
    parsed = [(text, 1.0)] if emphasis == "none" else parse_attention(text)
    lengths = _embedding_lengths(embeddings)
    lookup = _embedding_lookup(lengths, tok)
    bos, eos, comma = tok.bos_id, tok.eos_id, tok.comma_id

    chunks: list[Chunk] = []
    cur = Chunk()
    count = 0
    last_comma = -1

    def close(is_last: bool = False) -> None:
        nonlocal cur, count, last_comma
        count += len(cur.ids) if is_last else CHUNK
        pad = CHUNK - len(cur.ids)
        cur.ids = [bos, *cur.ids, *[eos] * pad, eos]
        cur.multipliers = [1.0, *cur.multipliers, *[1.0] * pad, 1.0]
        chunks.append(cur)
        cur = Chunk()
        last_comma = -1

    for ids, (fragment, weight) in zip(tok.tokenize([t for t, _ in parsed]), parsed):
        if fragment == "BREAK" and weight == -1:
            close()
            continue
        pos = 0
        while pos < len(ids):
            token = ids[pos]
            if token == comma:
                last_comma = len(cur.ids)
            elif (
                comma_backtrack
                and len(cur.ids) == CHUNK
                and last_comma != -1
                and len(cur.ids) - last_comma <= comma_backtrack
            ):
                cut = last_comma + 1
                moved_ids, moved_w = cur.ids[cut:], cur.multipliers[cut:]
                del cur.ids[cut:], cur.multipliers[cut:]
                close()
                cur.ids, cur.multipliers = moved_ids, moved_w
            if len(cur.ids) == CHUNK:
                close()

            match = next(
                (
                    (name, len(name_ids))
                    for name_ids, name in lookup.get(token, ())
                    if ids[pos : pos + len(name_ids)] == name_ids
                ),
                None,
            )
            if match is None:
                cur.ids.append(token)
                cur.multipliers.append(weight)
                pos += 1
                continue
            name, n_tokens = match
            n_vectors = lengths[name]
            if len(cur.ids) + n_vectors > CHUNK:
                close()
            cur.fixes.append((len(cur.ids), name))
            cur.ids += [0] * n_vectors
            cur.multipliers += [weight] * n_vectors
            pos += n_tokens

    if cur.ids or not chunks:
        close(is_last=True)
    return chunks, count


def chunks(
    text: str,
    emphasis: str = "original",
    tokenizer: TokenizerLike | None = None,
    embeddings: Mapping[str, Any] | None = None,
) -> list[tuple[list[int], list[float]]]:
    """[(77 ids, 77 multipliers), ...] for one prompt text (see `tokenize_line`). The multipliers are the
    parsed weights even where the emphasis mode does not apply them ("ignore"); with "none" they are all 1."""
    return [(c.ids, c.multipliers) for c in tokenize_line(text, emphasis, tokenizer, embeddings)[0]]


def token_count(
    text: str,
    emphasis: str = "original",
    *,
    steps: int = 20,
    tokenizer: TokenizerLike | None = None,
    embeddings: Mapping[str, Any] | None = None,
) -> tuple[int, int]:
    """(tokens, limit) for the UI's "12/75" counter, counted as A1111's `update_token_counter`: extra-network
    tags removed, the longest text of the prompt's schedule, BREAK closing a chunk (so it costs the rest of
    it); limit = 75 * the number of chunks that count needs."""
    text, _ = extract_extra_networks(text)
    texts = dict.fromkeys(t for _, t in schedules(text, steps))
    count = max(tokenize_line(t, emphasis, tokenizer, embeddings)[1] for t in texts)
    return count, math.ceil(max(count, 1) / CHUNK) * CHUNK


def _default_tokenizer() -> TokenizerLike:
    from engine.tokenizer import default_tokenizer

    return default_tokenizer()


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a string, got {type(text).__name__}")


def _check_emphasis(emphasis: str) -> None:
    if emphasis not in EMPHASIS_MODES:
        raise ValueError(f"emphasis must be one of {', '.join(EMPHASIS_MODES)}; got {emphasis!r}")
