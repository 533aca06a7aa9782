"""Token counts for when an upstream omits usage, and for routing by prompt length.

``bpe-openai`` implements OpenAI's BPE encodings (tiktoken-compatible ids) with the tables
built in, so counting needs no download (tiktoken fetches its tables from the network on first
use). Rows whose counts come from here are marked ``tokens_estimated``.
"""

from __future__ import annotations

from functools import lru_cache

# Per-message framing tokens in OpenAI's chat format, and the tokens priming the reply.
_PER_MESSAGE = 3
_REPLY_PRIMING = 3
# The encoder refuses a text of a million characters or one giving over 200,000 tokens; a piece
# this long gives at most 4 tokens a character (a byte each), well below both.
_PIECE_CHARS = 32_000


@lru_cache(maxsize=1)
def _encoding():
    import bpe_openai  # about a second to import: paid once, off the event loop (warm_up)

    return bpe_openai.get_encoding("o200k_base")


def warm_up() -> None:
    """Import and build the encoding now (about a second), off any event loop."""
    _encoding().encode("warm up")


def text_tokens(text: str, *, stop_after: int | None = None) -> int:
    """Tokens in ``text`` under o200k_base. A long text is counted in pieces, each cut just
    before a space that starts a word, where o200k's pre-tokenizer cuts too, so the count is the
    whole text's (a text with no such space is cut where it must be, off by a token a cut at
    most). With ``stop_after``, counting stops once the count passes it: the answer is then some
    number above ``stop_after``."""
    if not text:
        return 0
    encode = _encoding().encode_ordinary  # special-token text counts as text
    if len(text) <= _PIECE_CHARS:
        return len(encode(text))
    count = start = 0
    while start < len(text):
        end = start + _PIECE_CHARS
        if end < len(text):
            cut = text.rfind(" ", start + 1, end)
            while cut > start and text[cut + 1].isspace():
                cut = text.rfind(" ", start + 1, cut)
            end = cut if cut > start else end
        count += len(encode(text[start:end]))
        if stop_after is not None and count > stop_after:
            return count
        start = end
    return count


def text_tokens_most(text: str) -> int:
    """At least the tokens in ``text``, at once: a token is at least one UTF-8 byte."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def messages_text(messages: list) -> str:
    """The text of a chat conversation (string contents and text parts), newline-joined."""
    parts: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
            )
    return "\n".join(parts)


def messages_tokens(messages: list) -> int:
    """An estimate of the prompt tokens of a chat conversation."""
    return text_tokens(messages_text(messages)) + _PER_MESSAGE * len(messages) + _REPLY_PRIMING


def messages_tokens_most(text: str, messages: int) -> int:
    """At least :func:`messages_tokens` of a conversation of ``messages`` messages whose
    :func:`messages_text` is ``text``, at once (without the tokenizer)."""
    return text_tokens_most(text) + _PER_MESSAGE * messages + _REPLY_PRIMING


def prompt_tokens_rough(text: str) -> int:
    """A cheap estimate (4 characters a token) for routing decisions on the hot path."""
    return len(text) // 4 + 1
