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


@lru_cache(maxsize=1)
def _encoding():
    import bpe_openai

    return bpe_openai.get_encoding("o200k_base")


def warm_up() -> None:
    """Import and build the encoding now (about a second), off any event loop."""
    _encoding().encode("warm up")


def text_tokens(text: str) -> int:
    """Tokens in ``text`` under o200k_base."""
    if not text:
        return 0
    return len(_encoding().encode_ordinary(text))  # special-token text counts as text, never raises


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


def prompt_tokens_rough(text: str) -> int:
    """A cheap estimate (4 characters a token) for routing decisions on the hot path."""
    return len(text) // 4 + 1
