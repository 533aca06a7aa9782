"""What the SIMULATED upstream answers, as pure functions of the request (no I/O), shared by its
OpenAI and Anthropic endpoints.

    content           ``chunks`` words drawn from a fixed list by a hash of (model, messages);
                      a sentence ends with ". ", "? " or "! " every few words
    prompt_tokens     words in every message's text * 4 // 3 + 3 per message
    completion_tokens one per word produced (one word per stream chunk)
    embeddings        a Gaussian vector seeded by a hash of the text, scaled to unit length;
                      prompt_tokens = sum over the inputs of (words * 4 // 3 + 1)
    tool inputs       built from the tool's schema: words of the answer, 42, true
"""

from __future__ import annotations

import hashlib
import random

import orjson


def dumps(value) -> bytes:
    """Compact JSON."""
    return orjson.dumps(value)


def loads(raw: bytes):
    """Parsed JSON (``ValueError`` when it is not)."""
    return orjson.loads(raw)


MODELS = ("sim-mini", "sim-standard", "sim-premium", "sim-embed")
WORDS = (
    "switch", "yard", "signal", "train", "track", "route", "cache", "token", "model", "answer", "gateway",
    "tenant", "budget", "stream", "batch", "vector", "prompt", "latency", "cost", "engine", "freight", "rail",
    "station", "platform", "junction", "timetable", "carriage", "depot", "semaphore", "coupling", "ledger",
    "python", "query", "result", "cheap", "fast", "simple", "careful", "exact", "steady",
)
ENDINGS = (". ", "? ", "! ", ". ")
def seed(*parts: str) -> int:
    """A stable 64-bit number from the parts (the same request always draws the same answer)."""
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest(), "big")


def message_text(messages: list) -> str:
    """The text of string contents and of text parts (or blocks); other parts have none to count."""
    texts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p["text"] for p in content
                         if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return "\n".join(texts)


def prompt_tokens(messages: list) -> int:
    """Words in the messages * 4 // 3, plus 3 per message."""
    return len(message_text(messages).split()) * 4 // 3 + 3 * len(messages)


def input_tokens(text: str) -> int:
    """Tokens of one embeddings input: words * 4 // 3 + 1."""
    return len(text.split()) * 4 // 3 + 1


def answer_words(model: str, messages: list, count: int) -> list[str]:
    """The deterministic answer, one element per token/chunk (each carries its own spacing)."""
    rng = random.Random(seed(model, repr(messages)))
    words: list[str] = []
    sentence = 0
    for index in range(count):
        word = rng.choice(WORDS)
        if sentence == 0:
            word = word.capitalize()
        sentence += 1
        last = index == count - 1
        if last:
            word += "."
        elif sentence >= 4 and rng.random() < 0.35:
            word += rng.choice(ENDINGS).rstrip(" ") + " "
            sentence = 0
            words.append(word)
            continue
        words.append(word if last else word + " ")
    return words


def embedding_vector(text: str, dims: int) -> list[float]:
    """A unit vector seeded by the text: the same text always gives the same vector."""
    rng = random.Random(seed("embedding", text))
    values = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


def tool_input(schema, words: list[str]) -> dict:
    """Arguments for a tool from its JSON schema: words for strings, 42, true."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    values: dict = {}
    for index, (name, spec) in enumerate((properties or {}).items()):
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind in ("integer", "number"):
            values[name] = 42
        elif kind == "boolean":
            values[name] = True
        else:
            values[name] = words[index % len(words)].strip(" .?!").lower() if words else name
    return values
