"""Deterministic, tokenizer-like token counting and filler output, with no vocabulary files.

The rule is fixed and documented so the gateway (budget reservation) and the emulated
engine (usage reports) agree on every count without downloading a tokenizer:

1. Split text into pieces with a regex shaped like the GPT-4 (cl100k) pre-tokenizer:
   contractions, letter runs with one optional leading non-letter (usually a space),
   digit runs of 1 to 3, punctuation runs with an optional leading space, and
   whitespace runs.
2. Each piece counts ``ceil(bytes / 4)`` tokens, where bytes is the length of the
   piece in UTF-8: OpenAI's rule of thumb is that one token is about 4 characters of
   English text ("What are tokens and how to count them?", OpenAI Help Center). For
   ASCII text bytes are characters; counting bytes elsewhere follows byte-level BPE,
   so a run of CJK characters (3 bytes each) is not counted as a quarter token each.

Counts approximate a real BPE tokenizer; they are not its output. Short words that a
real vocabulary holds whole (" hello") count 2, so English prose counts high.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

__all__ = [
    "CHARS_PER_TOKEN",
    "NON_TEXT_PART_TOKENS",
    "count_chat_tokens",
    "count_text_tokens",
    "filler_text",
    "text_pieces",
    "text_seed",
]

CHARS_PER_TOKEN = 4
"""Bytes (characters, for ASCII) per token of one piece, rounded up."""
_ROUND_UP = CHARS_PER_TOKEN - 1

NON_TEXT_PART_TOKENS = 85
"""Tokens of one non-text content part (image, audio, file): the base cost OpenAI
documents for one low-detail image."""

# cl100k uses \p{L} and \p{N}, which stdlib `re` lacks: a letter is a word character
# that is not a digit or underscore ([^\W\d_]), a number is \d, and "neither" is [\W_].
_PIECE = re.compile(
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)"""  # contractions
    r"""|(?:[^\r\n\w]|_)?[^\W\d_]+"""  # letters, with one optional leading non-letter
    r"""|\d{1,3}"""  # digits in groups of at most 3
    r"""| ?(?:[^\s\w]|_)+[\r\n]*"""  # punctuation, optional leading space
    r"""|\s*[\r\n]+"""  # line breaks with the whitespace before them
    r"""|\s+(?!\S)"""  # whitespace not followed by a word (leaves one space for it)
    r"""|\s+"""
)

# cookbook "num_tokens_from_messages": every message is wrapped in 3 tokens
# (<|start|>{role/name}\n{content}<|end|>\n), a name costs 1 more, the reply is
# primed with 3 (<|start|>assistant<|message|>).
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_TOKENS_REPLY_PRIMING = 3


def text_pieces(text: str) -> list[str]:
    """``text`` cut as the rule cuts it; each piece counts ``ceil(utf8_bytes / 4)``."""
    return _PIECE.findall(text)


def count_text_tokens(text: str) -> int:
    """Tokens of ``text`` under the module's rule; 0 for the empty string.

    The sum over the regex pieces of ``text`` of ``ceil(utf8_bytes / 4)``;
    deterministic, and at least 1 for any non-empty text.
    """
    if not text:
        return 0
    pieces = text_pieces(text)
    if text.isascii():  # fast path: bytes == characters
        return sum([(len(piece) + _ROUND_UP) // CHARS_PER_TOKEN for piece in pieces])
    return sum(
        (len(piece.encode("utf-8", "surrogatepass")) + _ROUND_UP) // CHARS_PER_TOKEN
        for piece in pieces
    )


def _count_value(value: object) -> int:
    # Strings count as text; containers (tool calls, nested arguments) count their
    # strings; numbers, booleans and None count nothing.
    if isinstance(value, str):
        return count_text_tokens(value)
    if isinstance(value, Mapping):
        return sum(_count_value(item) for item in value.values())
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return sum(_count_value(item) for item in value)
    return 0


def _count_content(content: object) -> int:
    if not isinstance(content, Sequence) or isinstance(content, str):
        return _count_value(content)
    # A list of content parts: text parts count their text, other parts a fixed amount.
    total = 0
    for part in content:
        if isinstance(part, Mapping) and part.get("type") not in (None, "text"):
            total += NON_TEXT_PART_TOKENS
        elif isinstance(part, Mapping):
            total += _count_value(part.get("text", ""))
        else:
            total += _count_value(part)
    return total


def count_chat_tokens(messages: Sequence[Mapping[str, object]]) -> int:
    """Prompt tokens of a chat request, after OpenAI's cookbook ``num_tokens_from_messages``.

    3 tokens per message, plus the tokens of every value in it (role, content, name,
    tool calls), plus 1 when a ``name`` is present, plus 3 priming the reply. ``content``
    may be a list of parts: ``{"type": "text", "text": ...}`` counts its text, any other
    part type counts `NON_TEXT_PART_TOKENS`.
    """
    total = _TOKENS_REPLY_PRIMING
    for message in messages:
        total += _TOKENS_PER_MESSAGE
        for key, value in message.items():
            if type(value) is str:  # most values: counted without the type dispatch
                known = _ROLE_TOKENS.get(value) if key == "role" else None
                total += count_text_tokens(value) if known is None else known
            elif key == "content":
                total += _count_content(value)
            else:
                total += _count_value(value)
            if key == "name":
                total += _TOKENS_PER_NAME
    return total


# The roles, counted once: every message has one.
_ROLE_TOKENS = {
    role: count_text_tokens(role)
    for role in ("system", "developer", "user", "assistant", "tool", "function")
}


# Words of 1 to 3 ASCII letters: with a leading space each is one 4-character piece,
# i.e. exactly one token, and the space keeps neighbouring pieces apart.
_WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "in", "is", "it", "for", "on", "as", "at", "by", "be",
    "an", "or", "we", "you", "are", "was", "can", "not", "all", "but", "one", "has",
    "had", "her", "his", "its", "our", "out", "new", "now", "old", "see", "two", "way",
    "who", "day", "get", "use", "man", "may", "any", "how", "say", "she", "him", "too",
    "few", "own", "set", "put", "end", "why", "let", "big", "top", "far", "run", "yes",
    "off", "try", "ask", "men", "air", "low", "per", "age", "job", "act", "car", "law",
    "art", "war", "eye", "sun", "sea", "red", "key", "bed", "sky", "dog", "cat", "box",
    "cup", "map", "oil", "tea", "pen", "arm", "leg", "ice", "egg", "fun", "gas", "hot",
    "cut", "add", "met", "sat", "win", "fit", "mix", "bit", "hit", "lot", "so", "if",
    "up", "no", "do", "go", "me", "my", "he", "us", "am", "a", "I", "did", "got", "led",
    "saw", "pie", "net", "tax", "fee", "aim", "bag", "bus", "fix", "gap", "raw", "sum",
)  # fmt: skip
_NUM_WORDS = len(_WORDS)
_MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15


def _mix64(x: int) -> int:
    # splitmix64 finaliser: a cheap, well-spread 64-bit integer hash.
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def filler_text(seed: int, start: int, count: int) -> list[str]:
    """Output pieces ``start`` .. ``start + count - 1`` of the filler stream of ``seed``.

    Piece ``i`` depends only on ``(seed, i)``, so a stream can be produced in chunks.
    Each piece is one token under `count_text_tokens`, and so is any concatenation of
    consecutive pieces: ``"".join(filler_text(s, k, n))`` counts exactly ``n`` tokens.
    Piece 0 is a bare word; every later piece is a space and a word.
    """
    if start < 0 or count < 0:
        raise ValueError("start and count must be >= 0")
    base = (seed * _GOLDEN64) & _MASK64
    pieces = [
        " " + _WORDS[_mix64((base + i * _GOLDEN64) & _MASK64) % _NUM_WORDS]
        for i in range(start, start + count)
    ]
    if start == 0 and pieces:
        pieces[0] = pieces[0][1:]
    return pieces


def text_seed(text: str) -> int:
    """A stable 64-bit seed of ``text`` (BLAKE2b), equal across processes and runs,
    unlike the built-in ``hash``."""
    data = text.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
