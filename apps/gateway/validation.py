"""Checks of OpenAI-shaped request bodies, refused as OpenAI refuses them.

Each failure is a :class:`BadRequest` naming the offending parameter (``param``) with one of
OpenAI's codes:

    invalid_json                 not JSON, not UTF-8, or not an object
    nesting_too_deep             arrays and objects nested more than MAX_NESTING levels
                                 (apps/core/json_checks.py)
    unknown_parameter            a top-level field OpenAI's API does not define
    missing_required_parameter   no ``model``, ``messages`` or ``input``
    invalid_type                 a field of the wrong JSON type
    invalid_value / empty_array  a value the field cannot take
    integer_below_min_value, integer_above_max_value, decimal_below_min_value,
    decimal_above_max_value      a number out of the field's range

Unknown fields are refused rather than passed on, as OpenAI does, so a typo (``max_token``)
is an error instead of a silently ignored setting; the allow-lists below hold every field the
API takes, and the fields Switchyard reads itself are among them (``metadata.tags`` for
routing, ``user`` for per-user cache namespaces).
"""

from __future__ import annotations

import orjson

from apps.core import tokens
from apps.core.errors import BadRequest, ContextTooLong
from apps.core.json_checks import nesting_check, nesting_too_deep

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# Every top-level field of OpenAI's chat completion request, with the JSON types it may have
# (None: checked below with its range, or any JSON value). ``null`` is accepted for each, as
# "not set".
CHAT_FIELDS: dict[str, tuple[type, ...] | None] = {
    "messages": None, "model": None,
    "audio": (dict,), "frequency_penalty": None, "function_call": (str, dict), "functions": (list,),
    "logit_bias": (dict,), "logprobs": (bool,), "max_completion_tokens": None, "max_tokens": None,
    "metadata": (dict,), "modalities": (list,), "moderation": (dict,), "n": None, "parallel_tool_calls": (bool,),
    "prediction": (dict,), "presence_penalty": None, "prompt_cache_key": (str,), "prompt_cache_options": (dict,),
    "prompt_cache_retention": (str,), "reasoning_effort": (str,), "response_format": (dict,),
    "safety_identifier": (str,), "seed": None, "service_tier": (str,), "stop": (str, list), "store": (bool,),
    "stream": (bool,), "stream_options": (dict,), "temperature": None, "tool_choice": (str, dict), "tools": (list,),
    "top_logprobs": None, "top_p": None, "user": (str,), "verbosity": (str,), "web_search_options": (dict,),
}
EMBEDDINGS_FIELDS: dict[str, tuple[type, ...] | None] = {
    "input": None, "model": None, "dimensions": None, "encoding_format": (str,), "user": (str,),
}
# OpenAI's limits on one embeddings request: inputs in it, and tokens in all of them together.
# Each input must also fit the model's context window (8,192 tokens for OpenAI's models).
EMBEDDINGS_MAX_INPUTS = 2048
EMBEDDINGS_MAX_TOKENS = 300_000
# The largest value a 64-bit provider-side integer field takes; anything above is refused here.
_INT_MAX = 2**63 - 1

_TYPE_NAMES = {str: "a string", bool: "a boolean", dict: "an object", list: "an array"}


def json_type(value) -> str:
    """The JSON type of a parsed value, as error messages name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return _TYPE_NAMES.get(type(value), "a value")


def invalid_type(param: str, expected: str, value) -> BadRequest:
    """The refusal of a field of the wrong JSON type, worded as OpenAI words it."""
    return BadRequest(f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
                      param=param, code="invalid_type")


def missing(param: str) -> BadRequest:
    """The refusal of a request without a field it needs."""
    return BadRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def body_parse(raw: bytes) -> dict:
    """Decode a JSON object body."""
    if not raw:
        raise BadRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        if "depth limit" in reason:
            raise nesting_too_deep() from None
        if "UTF-8" in reason:
            raise BadRequest("The request body is not valid UTF-8.", code="invalid_json") from None
        raise BadRequest(f"The request body is not valid JSON: {reason}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest(f"The request body must be a JSON object, not {json_type(body)}.", code="invalid_json")
    return body


def fields_check(body: dict, fields: dict[str, tuple[type, ...] | None]) -> None:
    """Refuse unknown top-level fields, and known ones of the wrong JSON type."""
    for name, value in body.items():
        if name not in fields:
            name = name[:200]  # echoed in the answer: a megabyte-long key is cut short
            raise BadRequest(f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")
        types = fields[name]
        if types is not None and value is not None and not isinstance(value, types):
            raise invalid_type(name, " or ".join(_TYPE_NAMES[t] for t in types), value)


def is_int(value) -> bool:
    """A JSON integer (``true`` is not one, though Python's bool is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A JSON number, integer or not (booleans excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _range_error(name: str, kind: str, value, low, high) -> BadRequest:
    if value < low:
        return BadRequest(f"Invalid '{name}': {kind} below minimum value. Expected a value >= {low}, "
                          f"but got {value} instead.", param=name, code=f"{kind}_below_min_value")
    return BadRequest(f"Invalid '{name}': {kind} above maximum value. Expected a value <= {high}, "
                      f"but got {value} instead.", param=name, code=f"{kind}_above_max_value")


def number_check(body: dict, name: str, low: float, high: float) -> None:
    """``body[name]``, when set, is a number from ``low`` to ``high``."""
    value = body.get(name)
    if value is None:
        return
    if not is_number(value):
        raise invalid_type(name, "a number", value)
    if not low <= value <= high:
        raise _range_error(name, "decimal", value, low, high)


def int_check(body: dict, name: str, low: int, high: int) -> None:
    """``body[name]``, when set, is an integer from ``low`` to ``high``."""
    value = body.get(name)
    if value is None:
        return
    if not is_int(value):
        # JSON has one number type: an integer too large for 64 bits reaches here as a float
        # (1e30), and is out of range rather than of the wrong type.
        if isinstance(value, float) and value.is_integer() and not low <= value <= high:
            raise _range_error(name, "integer", value, low, high)
        raise invalid_type(name, "an integer", value)
    if not low <= value <= high:
        raise _range_error(name, "integer", value, low, high)


def model_field(body: dict) -> str:
    """The requested model's name, stripped."""
    model = body.get("model")
    if model is None:
        raise missing("model")
    if not isinstance(model, str):
        raise invalid_type("model", "a string", model)
    if not model.strip():
        raise BadRequest("'model' must be a model name or 'auto'.", param="model", code="invalid_value")
    return model.strip()


def _content_check(content, param: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise invalid_type(param, "a string or an array of content parts", content)
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if not isinstance(part, dict):
            raise invalid_type(where, "an object", part)
        kind = part.get("type")
        if not isinstance(kind, str):
            raise (missing(f"{where}.type") if kind is None else invalid_type(f"{where}.type", "a string", kind))
        if kind == "text" and not isinstance(part.get("text"), str):
            raise invalid_type(f"{where}.text", "a string", part.get("text"))


def _messages_check(messages) -> None:
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array of objects", messages)
    if not messages:
        raise BadRequest("Invalid 'messages': empty array. Expected an array with minimum length 1.",
                         param="messages", code="empty_array")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid_type(param, "an object", message)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # an object or array is not hashable
            raise BadRequest(f"Invalid value for '{param}.role': expected one of {', '.join(sorted(ROLES))}.",
                             param=f"{param}.role", code="invalid_value")
        content = message.get("content")
        if content is None:
            if role not in ("assistant", "function") and not message.get("tool_calls"):
                raise missing(f"{param}.content")
        else:
            _content_check(content, f"{param}.content")


def chat_body_validate(body: dict) -> None:
    """Raise :class:`BadRequest` unless ``body`` is a well-formed chat completion request."""
    nesting_check(body)
    fields_check(body, CHAT_FIELDS)
    model_field(body)
    _messages_check(body.get("messages"))
    stop = body.get("stop")
    if isinstance(stop, list) and not all(isinstance(item, str) for item in stop):
        raise invalid_type("stop", "a string or an array of strings", stop)
    int_check(body, "max_tokens", 1, 10_000_000)
    int_check(body, "max_completion_tokens", 1, 10_000_000)
    int_check(body, "n", 1, 128)
    int_check(body, "seed", -_INT_MAX - 1, _INT_MAX)
    int_check(body, "top_logprobs", 0, 20)
    number_check(body, "temperature", 0, 2)
    number_check(body, "top_p", 0, 1)
    number_check(body, "presence_penalty", -2, 2)
    number_check(body, "frequency_penalty", -2, 2)


def _input_ok(value) -> bool:
    if isinstance(value, str):
        return value != ""
    return isinstance(value, list) and bool(value) and all(
        (isinstance(item, str) and item != "") or is_int(item)
        or (isinstance(item, list) and item and all(is_int(t) for t in item))
        for item in value
    )


def embeddings_body_validate(body: dict) -> None:
    """Raise :class:`BadRequest` unless ``body`` is a well-formed embeddings request."""
    nesting_check(body)
    fields_check(body, EMBEDDINGS_FIELDS)
    model_field(body)
    value = body.get("input")
    if value is None:
        raise missing("input")
    if not _input_ok(value):
        raise BadRequest("'input' must be a non-empty string, array of strings, or array of token arrays.",
                         param="input", code="invalid_type" if not isinstance(value, str | list) else "invalid_value")
    count = len(_inputs(value))
    if count > EMBEDDINGS_MAX_INPUTS:
        raise BadRequest(f"Invalid 'input': array too long. Expected an array with maximum length "
                         f"{EMBEDDINGS_MAX_INPUTS}, but got an array with length {count} instead.",
                         param="input", code="array_above_max_length")
    int_check(body, "dimensions", 1, 65536)


def _inputs(value) -> list:
    """The inputs of a valid ``input`` (a string, one token array, or an array of either)."""
    if isinstance(value, str) or all(is_int(item) for item in value):
        return [value]
    return value


def embeddings_tokens_check(body: dict, *, context_window: int) -> None:
    """Refuse a valid embeddings body with an input over ``context_window`` tokens, or over
    :data:`EMBEDDINGS_MAX_TOKENS` in all. Counted only when the byte lengths (a token is at
    least one byte) do not settle it, and only as far as needed to pass a limit."""
    inputs = _inputs(body["input"])
    most = [len(item) if isinstance(item, list) else 1 if is_int(item) else tokens.text_tokens_most(item)
            for item in inputs]
    if sum(most) <= EMBEDDINGS_MAX_TOKENS and max(most) <= context_window:
        return
    total = 0
    for index, (item, bound) in enumerate(zip(inputs, most, strict=True)):
        counted = bound
        if isinstance(item, str) and bound > 0:
            counted = tokens.text_tokens(item, stop_after=min(context_window, EMBEDDINGS_MAX_TOKENS - total))
        if counted > context_window:
            where = "input" if inputs[0] is body["input"] else f"input[{index}]"
            raise ContextTooLong(f"'{where}' has more than {context_window} tokens, the model's context window: "
                                 "shorten it.", param="input")
        total += counted
        if total > EMBEDDINGS_MAX_TOKENS:
            raise BadRequest(f"The inputs have more than {EMBEDDINGS_MAX_TOKENS} tokens in all, the most one "
                             "request may carry: split them over several requests.", param="input",
                             code="max_tokens_per_request")


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
