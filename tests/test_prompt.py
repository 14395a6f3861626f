"""engine.prompt against A1111 v1.10.1's prompt language: the doctest vectors of modules/prompt_parser.py,
the chunking rules of sd_hijack_clip.tokenize_line, extra-network tags and the UI token count."""

from __future__ import annotations

import pytest

from engine import prompt as P
from engine.tokenizer import default_tokenizer

CAT, DOG, COMMA = 2368, 1929, 267


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


# --- parse_attention ------------------------------------------------------------------------------------

# The six examples of A1111's parse_prompt_attention docstring, verbatim.
ATTENTION_DOCTESTS = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), ATTENTION_DOCTESTS)
def test_parse_attention_a1111_doctests(text, expected):
    assert P.parse_attention(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("((a))", [("a", 1.2100000000000002)]),
        ("[a]", [("a", 0.9090909090909091)]),
        ("((a:1.2):1.5)", [("a", 1.7999999999999998)]),
        ("(a: 1.5 )", [("a", 1.5)]),
        ("[a:1.2]", [("a:1.2", 0.9090909090909091)]),  # explicit weights only in round brackets
        ("(a:b)", [("a:b", 1.1)]),
        ("a) b] c:", [("a) b] c:", 1.0)]),  # stray closers and colons are text
        ("[a", [("a", 0.9090909090909091)]),
        ("\\\\ x \\ y", [("\\ x  y", 1.0)]),  # escaped backslash kept, lone backslash dropped
        ("", [("", 1.0)]),
        ("(a:1.2.3) b", [("a:1.2.3) b", 1.1)]),  # A1111 raises on float('1.2.3'); text here
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
        ("a break b BREAKS", [("a break b BREAKS", 1.0)]),  # upper case, whole word only
        ("(a BREAK b:1.5)", [("a", 1.5), ("BREAK", -1.5), ("b", 1.5)]),  # weighted: no longer a BREAK
    ],
)
def test_parse_attention_edge_cases(text, expected):
    assert P.parse_attention(text) == expected


# --- schedules ------------------------------------------------------------------------------------------

# A1111 get_learned_conditioning_prompt_schedules' docstring: (prompt, base_steps, hires_steps, expected).
SCHEDULE_DOCTESTS = [
    ("test", 10, None, [(10, "test")]),
    ("a [b:3]", 10, None, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, None, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, None, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, None, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, None, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, None, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, None, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, None, [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", 10, None, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 10, None, [(t, "a" if t % 2 else "(b:1.1)") for t in range(1, 11)]),
    ("[fe|]male", 10, None, [(t, "female" if t % 2 else "male") for t in range(1, 11)]),
    ("[fe|||]male", 10, None, [(t, "female" if t % 4 == 1 else "male") for t in range(1, 11)]),
    ("a [b:.5] c", 10, 10, [(10, "a b c")]),
    ("a [b:1.5] c", 10, 10, [(5, "a  c"), (10, "a b c")]),
]


@pytest.mark.parametrize(("text", "steps", "hires", "expected"), SCHEDULE_DOCTESTS)
def test_schedules_a1111_doctests(text, steps, hires, expected):
    assert P.schedules(text, steps, hires) == expected


def test_stale_doctest_follows_a1111s_real_behaviour():
    # Documented as [[5, 'a  c'], [10, 'a {b|d{ c']], but A1111's grammar rejects the stray '|', so the
    # prompt is used unchanged (the research notes' STALE_DOCTESTS).
    assert P.schedules("a [{b|d{:.5] c", 10) == [(10, "a [{b|d{:.5] c")]


def test_schedules_fractions_steps_and_old_rule():
    assert P.schedules("[a:b:0.5]", 20) == [(10, "a"), (20, "b")]
    assert P.schedules("[a:b:1.0]", 20) == [(20, "a")]  # a fraction: the whole run
    assert P.schedules("[a:b:1]", 20) == [(1, "a"), (20, "b")]  # an absolute step
    assert P.schedules("[a:b:0]", 20) == [(20, "b")]
    assert P.schedules("[a:b:25]", 20) == [(20, "a")]
    assert P.schedules("[a::5]", 10) == [(5, "a"), (10, "")]
    # Old timelines: < 1 is a fraction, else a step ("1.0" is step 1, not the whole run).
    assert P.schedules("[a:b:1.0]", 20, old=True) == [(1, "a"), (20, "b")]
    assert P.schedules("[a:b:0.25]", 20, old=True) == [(5, "a"), (20, "b")]
    assert P.schedules("[a:b:0.25]", 20, 10, old=True) == [(5, "a"), (20, "b")]  # old ignores hires


def test_schedules_hires_pass():
    # Integers past the first pass count hires steps; fractions < 1 are over before the hires pass starts.
    assert P.schedules("[a:b:25]", 20, 10) == [(5, "a"), (10, "b")]
    assert P.schedules("[a:b:5]", 20, 10) == [(10, "b")]
    assert P.schedules("[a:b:0.5]", 20, 10) == [(10, "b")]
    assert P.schedules("[a:b:1.25]", 20, 8) == [(2, "a"), (8, "b")]


def test_schedules_never_raise_on_malformed_text():
    for text in ["a | b", "[a:b:c]", "((((", "]]][[[", "[a:b:1e999]", "[a:b:-3]", "[:]", "\\", "[a|"]:
        result = P.schedules(text, 10)
        assert result[-1][0] == 10 and all(isinstance(t, str) for _, t in result)
    assert P.schedules("a | b", 10) == [(10, "a | b")]
    assert P.schedules("[a:b:1e999]", 10) == [(10, "a")]  # A1111 overflows in int(); the edit never comes


def test_schedules_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        P.schedules("a", 0)
    with pytest.raises(ValueError, match="hires_steps"):
        P.schedules("a", 10, 0)
    with pytest.raises(TypeError):
        P.schedules(None, 10)


# --- extra networks -------------------------------------------------------------------------------------


def test_extract_extra_networks():
    text, nets = P.extract_extra_networks("a cat, <lora:ink punk:0.8>, <hypernet:h:1:extra> dog <lora:x>")
    assert text == "a cat, ,  dog "  # the tags vanish; commas and spaces stay
    assert nets == [("lora", "ink punk", ["0.8"]), ("hypernet", "h", ["1", "extra"]), ("lora", "x", [])]
    assert P.extract_extra_networks("<not a tag> <:x> <lora:>") == ("<not a tag> <:x> <lora:>", [])
    assert P.extract_extra_networks("<lora:a:te=0.5:unet=1>")[1] == [("lora", "a", ["te=0.5", "unet=1"])]


# --- chunks ---------------------------------------------------------------------------------------------


def _body(chunk):
    ids, mults = chunk
    assert len(ids) == len(mults) == 77 and ids[0] == 49406 and ids[76] == 49407
    return ids[1:76], mults[1:76]


def test_empty_prompt_is_bos_and_76_eos(tok):
    assert P.chunks("", tokenizer=tok) == [([49406] + [49407] * 76, [1.0] * 77)]
    assert P.token_count("", tokenizer=tok) == (0, 75)


def test_short_prompt_weights(tok):
    [(ids, mults)] = P.chunks("a (cat:1.5) [dog]", tokenizer=tok)
    assert ids[:5] == [49406, 320, CAT, DOG, 49407] and set(ids[4:]) == {49407}
    assert mults[:5] == [1.0, 1.0, 1.5, 1 / 1.1, 1.0] and set(mults[4:]) == {1.0}


def test_comma_at_the_end_of_a_full_chunk(tok):
    # 74 cats + ", dog dog": the comma is token 75, so the chunk closes there and both dogs move on.
    out, count = P.tokenize_line("cat " * 74 + ", dog dog", tokenizer=tok)
    assert [c.ids[1:76] for c in out] == [[CAT] * 74 + [COMMA], [DOG, DOG] + [49407] * 73]
    assert count == 77


def test_comma_backtrack_moves_the_words_after_the_comma(tok):
    # 60 cats + "," + 20 dogs: the chunk would fill 14 tokens after the comma (<= 20), so it closes after
    # the comma (61 tokens) and all 20 dogs start the next chunk.
    out, count = P.tokenize_line("cat " * 60 + ", " + "dog " * 20, tokenizer=tok)
    assert out[0].ids[1:76] == [CAT] * 60 + [COMMA] + [49407] * 14
    assert out[1].ids[1:76] == [DOG] * 20 + [49407] * 55
    assert count == 95
    # Further than 20 tokens back: no backtrack, a plain cut at 75.
    out, _ = P.tokenize_line("cat " * 50 + ", " + "dog " * 30, tokenizer=tok)
    assert out[0].ids[1:76] == [CAT] * 50 + [COMMA] + [DOG] * 24
    # Backtrack switched off.
    out, _ = P.tokenize_line("cat " * 60 + ", " + "dog " * 20, tokenizer=tok, comma_backtrack=0)
    assert out[0].ids[1:76] == [CAT] * 60 + [COMMA] + [DOG] * 14


def test_break_closes_chunks(tok):
    out = P.chunks("a cat BREAK (dog:1.2)", tokenizer=tok)
    assert len(out) == 2
    assert _body(out[0])[0][:2] == [320, CAT] and _body(out[1]) [0][0] == DOG and out[1][1][1] == 1.2
    assert P.token_count("a cat BREAK dog", tokenizer=tok) == (76, 150)
    # An empty chunk before BREAK is still a whole chunk; BREAK at the end adds none.
    assert len(P.chunks("BREAK cat", tokenizer=tok)) == 2
    assert len(P.chunks("cat BREAK", tokenizer=tok)) == 1
    # Emphasis "none": brackets and BREAK are literal text, weights all 1.
    [(ids, mults)] = P.chunks("(cat) BREAK", "none", tokenizer=tok)
    assert 49406 in ids and set(mults) == {1.0} and ids[1] != CAT


def test_long_prompt_chunks_and_count(tok):
    out, count = P.tokenize_line("cat " * 200, tokenizer=tok)
    assert len(out) == 3 and count == 200
    assert P.token_count("cat " * 200, tokenizer=tok) == (200, 225)
    assert P.token_count("cat " * 75, tokenizer=tok) == (75, 75)
    # The UI counts the longest scheduled text and ignores extra-network tags.
    assert P.token_count("[cat:cat cat cat:5] <lora:x:1>", tokenizer=tok) == (3, 75)


def test_embedding_placeholders(tok):
    out, count = P.tokenize_line("a (nvinkpunk) cat", tokenizer=tok, embeddings={"nvinkpunk": 3})
    [chunk] = out
    assert chunk.ids[:7] == [49406, 320, 0, 0, 0, CAT, 49407]
    assert chunk.multipliers[2:5] == [1.1] * 3 and chunk.fixes == [(1, "nvinkpunk")]
    assert count == 5
    # An embedding never straddles two chunks: 73 cats leave room for 2 vectors, not 3.
    out, _ = P.tokenize_line("cat " * 73 + "nvinkpunk", tokenizer=tok, embeddings={"nvinkpunk": 3})
    assert out[0].ids[74:] == [49407] * 3 and out[1].fixes == [(0, "nvinkpunk")] and out[1].ids[1:4] == [0] * 3
    # Longest name first when names share a first token.
    a, b = tok.tokenize(["nvinkpunk"])[0], tok.tokenize(["nvinkpunk style"])[0]
    assert len(b) > len(a) and b[: len(a)] == a
    [chunk], _ = P.tokenize_line("nvinkpunk style x", tokenizer=tok, embeddings={"nvinkpunk": 1, "nvinkpunk style": 2})
    assert chunk.fixes == [(0, "nvinkpunk style")] and chunk.ids[1:4] == [0, 0, tok.tokenize(["x"])[0][0]]


def test_comma_backtrack_leaves_the_fix_behind_as_a1111(tok):
    # A1111 moves the placeholder tokens but not their fix; the vectors then land on the old chunk's padding.
    text = "cat " * 60 + ", " + "cat " * 10 + "emb" + " cat" * 10
    out, _ = P.tokenize_line(text, tokenizer=tok, embeddings={"emb": 3})
    assert out[0].fixes == [(71, "emb")] and out[1].fixes == []
    assert out[1].ids[11:14] == [0, 0, 0]


def test_bad_arguments(tok):
    with pytest.raises(ValueError, match="emphasis"):
        P.chunks("a", "loud", tokenizer=tok)
    with pytest.raises(ValueError, match="vectors"):
        P.chunks("a", tokenizer=tok, embeddings={"x": 76})
    with pytest.raises(ValueError, match="no tokens"):
        P.chunks("a", tokenizer=tok, embeddings={"": 1})
    with pytest.raises(TypeError):
        P.parse_attention(3)


def test_prompt_module_needs_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, engine.prompt as p\n"
        "p.schedules('[a:b:0.5]', 10); p.token_count('a (cat) BREAK dog')\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
