"""Checks of OpenAI-shaped request bodies. Each failure is a :class:`BadRequest` naming the
offending parameter; unknown fields pass through to the provider untouched."""

from __future__ import annotations

import orjson

from apps.gateway.errors import BadRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def body_parse(raw: bytes) -> dict:
    """Decode a JSON object body."""
    if not raw:
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_number(body: dict, name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if not is_number(value) or not low <= value <= high:
        raise BadRequest(f"'{name}' must be a number between {low:g} and {high:g}.", param=name)


def _check_int(body: dict, name: str, low: int, high: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if not is_int(value) or not low <= value <= high:
        raise BadRequest(f"'{name}' must be an integer between {low} and {high}.", param=name)


def model_field(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("'model' is required: a model name or 'auto'.", param="model")
    return model.strip()


def chat_body_validate(body: dict) -> None:
    """Raise :class:`BadRequest` unless ``body`` is a well-formed chat completion request."""
    model_field(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{param} must be an object.", param=param)
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"{param}.role must be one of {', '.join(sorted(ROLES))}.", param=f"{param}.role")
        content = message.get("content")
        if content is None:
            if role not in ("assistant", "function") and not message.get("tool_calls"):
                raise BadRequest(f"{param}.content is required.", param=f"{param}.content")
        elif not isinstance(content, str | list):
            raise BadRequest(f"{param}.content must be a string or an array of parts.",
                             param=f"{param}.content")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object.", param="stream_options")
    _check_int(body, "max_tokens", 1, 10_000_000)
    _check_int(body, "max_completion_tokens", 1, 10_000_000)
    _check_int(body, "n", 1, 128)
    _check_number(body, "temperature", 0, 2)
    _check_number(body, "top_p", 0, 1)
    _check_number(body, "presence_penalty", -2, 2)
    _check_number(body, "frequency_penalty", -2, 2)
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequest("'metadata' must be an object.", param="metadata")


def embeddings_body_validate(body: dict) -> None:
    model_field(body)
    value = body.get("input")
    ok = (isinstance(value, str) and value != "") or (
        isinstance(value, list) and value and all(
            (isinstance(item, str) and item != "") or is_int(item)
            or (isinstance(item, list) and item and all(is_int(t) for t in item))
            for item in value
        )
    )
    if not ok:
        raise BadRequest("'input' must be a non-empty string, array of strings, or array of token arrays.",
                         param="input")
    _check_int(body, "dimensions", 1, 65536)


def tags_from(body: dict, header: str | None) -> frozenset[str]:
    """Routing tags: ``metadata.tags`` (array or comma-separated) and ``x-switchyard-tags``."""
    tags: set[str] = set()
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        raw = metadata.get("tags")
        if isinstance(raw, str):
            tags.update(t.strip() for t in raw.split(",") if t.strip())
        elif isinstance(raw, list):
            tags.update(str(t) for t in raw if isinstance(t, str | int))
    if header:
        tags.update(t.strip() for t in header.split(",") if t.strip())
    return frozenset(tags)
