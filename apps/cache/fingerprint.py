"""What a chat request is, for the cache: its exact hash, its context, and whether it may be
cached at all.

    exact hash    sha256 of the canonical JSON of the whole conversation, the requested model
                  (alias, ``auto`` or name: the route is part of the question) and every
                  parameter that changes the answer
    context hash  the same without the last user message: a semantic hit must share it, so a
                  multi-turn conversation only matches the same earlier turns and the same
                  system prompt
    prompt text   the last user message, which is what gets embedded
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import orjson

# Parameters that change what a model answers (anything else, like ``stream`` or ``user``,
# does not make a different question).
ANSWER_PARAMETERS = (
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop", "seed", "response_format",
    "tools", "tool_choice", "functions", "function_call", "presence_penalty", "frequency_penalty",
    "logit_bias", "logprobs", "top_logprobs", "reasoning_effort", "modalities", "prediction",
)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    request_hash: str
    context_hash: str
    prompt_text: str


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _digest(value) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _last_user(messages: list) -> int:
    return max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)


def prompt_text(body: dict) -> str:
    """The text a prompt is embedded by (the last user message's): the semantic cache's and the
    learned router's, so that one embedding serves both."""
    messages = body.get("messages") or []
    return _text(messages[_last_user(messages)].get("content")).strip() if messages else ""


def fingerprint(body: dict) -> Fingerprint:
    """The cache identity of a validated chat completion body."""
    messages = body["messages"]
    last_user = _last_user(messages)
    parameters = {name: body[name] for name in ANSWER_PARAMETERS if body.get(name) is not None}
    context = {
        "model": body["model"],
        "before": messages[:last_user],
        "after": messages[last_user + 1:],
        "parameters": parameters,
    }
    context_hash = _digest(context)
    request_hash = _digest({"context": context_hash, "last": messages[last_user]})
    return Fingerprint(request_hash=request_hash, context_hash=context_hash,
                       prompt_text=_text(messages[last_user].get("content")).strip())


def cacheable(body: dict, *, max_temperature: float, tool_calls: bool) -> str | None:
    """None when the request may be cached, else the reason it may not."""
    if (body.get("n") or 1) > 1:
        return "n>1"
    temperature = body.get("temperature")
    if temperature is not None and temperature > max_temperature:
        return "temperature"
    if not tool_calls and (body.get("tools") or body.get("functions")):
        return "tools"
    return None


# RFC 9111 1.2.2: a delta-seconds value too large to represent is taken as 2^31 seconds (68 years,
# longer than any entry lives), so a huge max-age means "any age" instead of overflowing a date.
MAX_AGE_LIMIT = 2**31
_DELTA_SECONDS = re.compile(r'"?([0-9]+)"?')


@dataclass(frozen=True, slots=True)
class CacheControl:
    lookup: bool = True
    store: bool = True
    max_age: int | None = None


def cache_control_parse(header: str | None) -> CacheControl:
    """``no-cache``: skip the lookup, still store. ``no-store``: neither. ``max-age=N``: only
    entries younger than N seconds; N is capped at :data:`MAX_AGE_LIMIT`, and a value that is not
    a count of seconds (negative, a word, empty) reads as 0: nothing cached is fresh enough, as
    RFC 9111 takes invalid freshness information as stale."""
    if not header:
        return CacheControl()
    lookup = store = True
    max_age = None
    for directive in header.lower().split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip()
        if name == "no-cache":
            lookup = False
        elif name == "no-store":
            lookup = store = False
        elif name == "max-age":
            max_age = _delta_seconds(value)
    return CacheControl(lookup=lookup, store=store, max_age=max_age)


def _delta_seconds(value: str) -> int:
    match = _DELTA_SECONDS.fullmatch(value.strip())
    if match is None:
        return 0
    digits = match.group(1).lstrip("0") or "0"
    # Past ten digits the value is over the cap whatever it says (past 4,300 int() refuses it).
    return MAX_AGE_LIMIT if len(digits) > 10 else min(int(digits), MAX_AGE_LIMIT)
