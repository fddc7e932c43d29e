"""Token counting rule, chat overhead, filler output and seeds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.perf import (
    NON_TEXT_PART_TOKENS,
    count_chat_tokens,
    count_text_tokens,
    filler_text,
    text_seed,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        # "Hello" 5 chars -> 2, "," -> 1, " world" 6 -> 2, "!" -> 1
        ("Hello, world!", 6),
        # "I" 1, "'m" 1, " " 1 (a space before digits stands alone), "123" 1, "45" 1,
        # " years" 6 chars -> 2
        ("I'm 12345 years", 7),
        # one whitespace run at the end: "   " -> 1
        ("   ", 1),
        # "internationalization" is one 20-character letter run -> 5
        ("internationalization", 5),
        # "a" 1, "\n\n" 1, "b" 1
        ("a\n\nb", 3),
        # "hello" 2, "  " 1 (spaces but the last), " world" 2
        ("hello   world", 5),
        # "snake" 2, "_case" 2 (underscore counts as punctuation, leading the letters)
        ("snake_case", 4),
        # " (" 1, "x" 1, ")" 1 -- the leading space goes with the punctuation
        (" (x)", 3),
        # pieces count UTF-8 bytes: "naïve" 6 bytes -> 2, " café" 6 bytes -> 2
        ("naïve café", 4),
        # one letter run of 4 CJK characters, 12 bytes -> 3
        ("你好世界", 3),
    ],
)
def test_known_counts(text: str, expected: int) -> None:
    assert count_text_tokens(text) == expected


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=200))
def test_every_byte_is_counted_once(text: str) -> None:
    # Pieces cover the text without overlap, so the count lies between the text's
    # bytes / 4 (one big piece) and its bytes (one-byte pieces).
    num_bytes = len(text.encode("utf-8"))
    assert -(-num_bytes // 4) <= count_text_tokens(text) <= num_bytes
    assert (count_text_tokens(text) == 0) == (text == "")


def test_counts_scale_like_four_characters_per_token() -> None:
    # 1000 copies of " abc" (4 chars, one piece each) -> exactly 1000 tokens
    assert count_text_tokens(" abc" * 1000) == 1000


def test_chat_overhead_follows_the_cookbook() -> None:
    # 3 (message) + "user" 1 + "Hello" 2 + 3 (reply priming)
    assert count_chat_tokens([{"role": "user", "content": "Hello"}]) == 9
    # 3 + "user" 1 + "bob" 1 + 1 (name) + "hi" 1 + 3
    assert count_chat_tokens([{"role": "user", "name": "bob", "content": "hi"}]) == 10
    # (3 + "system" 2 + "Be brief." 4: "Be" 1, " brief" 2, "." 1) + (3 + "user" 1 + "Hi" 1) + 3
    two = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert count_chat_tokens(two) == 17
    assert count_chat_tokens([]) == 3


def test_chat_content_parts() -> None:
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Hello"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ],
    }
    # 3 + "user" 1 + "Hello" 2 + one image 85 + 3
    assert count_chat_tokens([message]) == 3 + 1 + 2 + NON_TEXT_PART_TOKENS + 3 == 94


def test_chat_counts_tool_calls_and_ignores_none() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        ],
    }
    # 3 + "assistant" 9 chars -> 3, then the tool call's strings: "c1" 2 ("c", "1"),
    # "function" 2, "f" 1, "{}" 1; content None counts 0; + 3
    assert count_chat_tokens([message]) == 3 + 3 + 2 + 2 + 1 + 1 + 3


def test_filler_pieces_are_single_tokens() -> None:
    pieces = filler_text(seed=7, start=0, count=50)
    assert len(pieces) == 50
    assert not pieces[0].startswith(" ")
    assert all(p.startswith(" ") for p in pieces[1:])
    assert all(count_text_tokens(p) == 1 for p in pieces)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**64 - 1),
    start=st.integers(min_value=0, max_value=10**9),
    count=st.integers(min_value=0, max_value=200),
)
def test_filler_of_n_pieces_counts_n_tokens(seed: int, start: int, count: int) -> None:
    assert count_text_tokens("".join(filler_text(seed, start, count))) == count


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**64 - 1),
    split=st.integers(min_value=0, max_value=100),
    rest=st.integers(min_value=0, max_value=100),
)
def test_filler_is_deterministic_and_chunkable(seed: int, split: int, rest: int) -> None:
    whole = filler_text(seed, 0, split + rest)
    assert whole == filler_text(seed, 0, split) + filler_text(seed, split, rest)
    assert whole == filler_text(seed, 0, split + rest)


def test_filler_depends_on_seed() -> None:
    assert filler_text(1, 0, 20) != filler_text(2, 0, 20)
    with pytest.raises(ValueError):
        filler_text(1, -1, 3)


def test_text_seed_is_stable_64_bit() -> None:
    # BLAKE2b-64 of b"hello", big-endian: fixed forever, unlike hash().
    assert text_seed("hello") == 12085107955937391741
    assert text_seed("hello") != text_seed("hello!")
    assert 0 <= text_seed("") < 2**64
    assert 0 <= text_seed("\ud800 lone surrogate") < 2**64
