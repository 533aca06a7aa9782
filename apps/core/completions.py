"""Reading OpenAI chat completions, wherever they are kept (a live answer, a cache entry, a
batch job's output line)."""

from __future__ import annotations


def completion_text(completion: dict) -> str:
    """The text of a chat.completion's choices, joined (empty for a malformed one)."""
    try:
        return "".join((c.get("message") or {}).get("content") or "" for c in completion.get("choices") or [])
    except AttributeError:
        return ""
