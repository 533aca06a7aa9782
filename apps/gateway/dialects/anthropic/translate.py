"""Anthropic Messages bodies to and from the pipeline's internal (OpenAI chat) form.

    request   ``messages_body_translate``: validate an Anthropic request and give the chat body
              that routing, limits and the cache work on, plus the list of features an
              OpenAI-compatible upstream cannot take (such a request may go only to a native
              Anthropic provider)
    answer    ``message_from_completion``: a chat.completion as an Anthropic message
              ``completion_from_message``: an Anthropic message as a chat.completion (what the
              cache stores, whatever door or provider the answer came through)

What translates: ``system`` (string or text blocks), text, image (base64 or URL), tool_use
and tool_result blocks, ``max_tokens``, ``temperature``, ``top_p``, ``top_k``,
``stop_sequences``, ``stream``, ``metadata.user_id`` (as ``user``), ``tools`` and
``tool_choice`` (``disable_parallel_tool_use`` as ``parallel_tool_calls: false``).
``cache_control`` marks are hints and are dropped. Everything else (thinking, documents,
server tools, other top-level parameters) passes only to a native Anthropic provider.
"""

from __future__ import annotations

import orjson

from apps.core.errors import BadRequest
from apps.gateway.validation import is_int, is_number, nesting_check

ROLES = frozenset({"user", "assistant"})
# Every top-level field of Anthropic's Messages request (its beta fields included: they reach
# a native provider with the client's ``anthropic-beta`` header). Anything else is refused, as
# Anthropic refuses it, rather than sent on to fail there or be ignored.
MESSAGES_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature", "top_p",
    "top_k", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers", "context_management",
    "cache_control", "inference_geo", "output_config", "output_format", "speed", "diagnostics", "billing_policy",
    "compaction", "fallback_credit_token", "fallbacks", "thread",
})
# Those of ``/v1/messages/count_tokens``: no max_tokens, sampling, stream or metadata.
COUNT_TOKENS_FIELDS = frozenset({
    "model", "messages", "system", "tools", "tool_choice", "thinking", "cache_control", "output_config",
    "output_format", "speed", "mcp_servers", "context_management", "compaction", "billing_policy",
})
# Top-level parameters translated to the chat form (or harmless to drop).
_TRANSLATED = frozenset({
    "model", "messages", "system", "max_tokens", "temperature", "top_p", "top_k", "stop_sequences", "stream",
    "metadata", "tools", "tool_choice", "service_tier",
})
FINISH_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                  "content_filter": "refusal"}
STOP_TO_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "refusal": "content_filter", "pause_turn": "stop"}


def _refuse(name: str, message: str, code: str) -> BadRequest:
    return BadRequest(f"{name}: {message}", param=name, code=code)


def _number(body: dict, name: str, low: float, high: float, *, kind: str = "decimal") -> None:
    """``body[name]``, when set, is a number (an integer for ``kind="integer"``) in the range; the
    codes are those of :mod:`apps.gateway.validation`."""
    value = body.get(name)
    if value is None:
        return
    if kind == "integer":
        # An integer too large for 64 bits is parsed as a float (1e30): out of range, not mistyped.
        typed = is_int(value) or (isinstance(value, float) and value.is_integer() and not low <= value <= high)
    else:
        typed = is_number(value)
    if not typed:
        raise _refuse(name, f"must be {'an integer' if kind == 'integer' else 'a number'}.", "invalid_type")
    if value < low:
        raise _refuse(name, f"must be greater than or equal to {low}.", f"{kind}_below_min_value")
    if value > high:
        raise _refuse(name, f"must be less than or equal to {high}.", f"{kind}_above_max_value")


def _text_of(blocks, where: str) -> str:
    """The text of a string or of an array of text blocks."""
    if isinstance(blocks, str):
        return blocks
    if isinstance(blocks, list):
        parts = []
        for index, block in enumerate(blocks):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise BadRequest(f"{where}.{index}: only text blocks are accepted here.", param=where)
            parts.append(block["text"])
        return "\n".join(parts)
    raise BadRequest(f"{where}: must be a string or an array of text blocks.", param=where)


class _Translation:
    def __init__(self) -> None:
        self.unsupported: list[str] = []

    def refuse(self, what: str) -> None:
        if what not in self.unsupported:
            self.unsupported.append(what)

    def tool_result(self, block: dict, where: str) -> dict:
        content = block.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            texts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                else:
                    self.refuse(f"non-text content in a tool_result block ({where})")
            text = "\n".join(texts)
        else:
            raise BadRequest(f"{where}.content: must be a string or an array of blocks.", param=where)
        if block.get("is_error"):
            text = "[tool error] " + text
        tool_use_id = block.get("tool_use_id")
        if not isinstance(tool_use_id, str) or not tool_use_id:
            raise BadRequest(f"{where}.tool_use_id: required.", param=where)
        return {"role": "tool", "tool_call_id": tool_use_id, "content": text}

    def message(self, message, index: int) -> list[dict]:
        """One Anthropic message as one or more chat messages."""
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise BadRequest(f"{where}: must be an object.", param=where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # an object or array is not hashable
            raise BadRequest(f"{where}.role: must be 'user' or 'assistant'.", param=f"{where}.role",
                             code="invalid_value")
        content = message.get("content")
        if isinstance(content, str):
            return [{"role": role, "content": content}]
        if not isinstance(content, list):
            raise BadRequest(f"{where}.content: must be a string or an array of content blocks.",
                             param=f"{where}.content")
        parts: list = []
        tool_calls: list[dict] = []
        tool_messages: list[dict] = []
        for number, block in enumerate(content):
            here = f"{where}.content.{number}"
            kind = block.get("type") if isinstance(block, dict) else None
            if not isinstance(kind, str):
                raise BadRequest(f"{here}: must be a content block with a 'type'.", param=here)
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    raise BadRequest(f"{here}.text: must be a string.", param=here)
                parts.append({"type": "text", "text": block["text"]})
            elif kind == "image" and role == "user":
                source = block.get("source") if isinstance(block.get("source"), dict) else {}
                if source.get("type") == "base64" and isinstance(source.get("data"), str):
                    url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
                elif source.get("type") == "url" and isinstance(source.get("url"), str):
                    url = source["url"]
                else:
                    raise BadRequest(f"{here}.source: a base64 or url image source is required.", param=here)
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif kind == "tool_use" and role == "assistant":
                name, ident = block.get("name"), block.get("id")
                if not isinstance(name, str) or not isinstance(ident, str):
                    raise BadRequest(f"{here}: a tool_use block needs 'id' and 'name'.", param=here)
                tool_calls.append({"id": ident, "type": "function", "function": {
                    "name": name, "arguments": orjson.dumps(block.get("input") or {}).decode()}})
            elif kind == "tool_result" and role == "user":
                tool_messages.append(self.tool_result(block, here))
            else:
                # Kept as they are: the cache's fingerprint still sees them, and a native
                # provider gets the original body anyway.
                self.refuse(f"'{kind}' content blocks")
                parts.append(block)
        out: list[dict] = list(tool_messages)
        if role == "assistant":
            texts = [p["text"] for p in parts if p.get("type") == "text"]
            assistant: dict = {"role": "assistant", "content": "".join(texts) if texts else None}
            if len(texts) != len(parts):
                assistant["content"] = parts
            if tool_calls:
                assistant["tool_calls"] = tool_calls
            out.append(assistant)
        elif parts:
            only_text = len(parts) == 1 and parts[0].get("type") == "text"
            out.append({"role": "user", "content": parts[0]["text"] if only_text else parts})
        elif not tool_messages:
            out.append({"role": "user", "content": ""})
        return out

    def tools(self, tools) -> list[dict]:
        if not isinstance(tools, list):
            raise BadRequest("tools: must be an array.", param="tools")
        out = []
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise BadRequest(f"tools.{index}: must be an object with a 'name'.", param="tools")
            if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
                self.refuse(f"server tool '{tool.get('type') or tool['name']}'")
                continue
            function = {"name": tool["name"], "parameters": tool["input_schema"]}
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            out.append({"type": "function", "function": function})
        return out

    def tool_choice(self, choice, chat: dict) -> None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise BadRequest("tool_choice: must be {'type': 'auto' | 'any' | 'tool' | 'none'}.", param="tool_choice")
        kind = choice["type"]
        if kind == "tool":
            if not isinstance(choice.get("name"), str):
                raise BadRequest("tool_choice.name: required when type is 'tool'.", param="tool_choice")
            chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
        if choice.get("disable_parallel_tool_use"):
            chat["parallel_tool_calls"] = False


def messages_body_translate(body: dict, *, count_only: bool = False) -> tuple[dict, list[str]]:
    """Validate an Anthropic Messages request; return its chat form and what only a native
    Anthropic provider can take. Raises :class:`BadRequest` for a malformed body."""
    nesting_check(body)
    allowed = COUNT_TOKENS_FIELDS if count_only else MESSAGES_FIELDS
    for name in body:
        if name not in allowed:
            name = name[:200]  # echoed in the answer: a megabyte-long key is cut short
            raise BadRequest(f"{name}: Extra inputs are not permitted", param=name, code="unknown_parameter")
    model = body.get("model")
    if model is None:
        raise _refuse("model", "Field required (a model name, an alias or 'auto').", "missing_required_parameter")
    if not isinstance(model, str):
        raise _refuse("model", "must be a string.", "invalid_type")
    if not model.strip():
        raise _refuse("model", "a model name, an alias or 'auto' is required.", "invalid_value")
    max_tokens = body.get("max_tokens")
    if not count_only:
        if max_tokens is None:
            raise _refuse("max_tokens", "Field required.", "missing_required_parameter")
        _number(body, "max_tokens", 1, 10_000_000, kind="integer")
    messages = body.get("messages")
    if messages is None:
        raise _refuse("messages", "Field required.", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _refuse("messages", "must be an array.", "invalid_type")
    if not messages:
        raise _refuse("messages", "must be a non-empty array.", "empty_array")
    for name, low, high in (("temperature", 0, 1), ("top_p", 0, 1)):
        _number(body, name, low, high)
    _number(body, "top_k", 0, 2**31 - 1, kind="integer")
    stop = body.get("stop_sequences")
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise _refuse("stop_sequences", "must be an array of strings.", "invalid_type")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _refuse("stream", "must be a boolean.", "invalid_type")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _refuse("metadata", "must be an object.", "invalid_type")

    translation = _Translation()
    chat_messages: list[dict] = []
    system = body.get("system")
    if system is not None:
        text = _text_of(system, "system")
        if text:
            chat_messages.append({"role": "system", "content": text})
    for index, message in enumerate(messages):
        chat_messages.extend(translation.message(message, index))
    chat: dict = {"model": model.strip(), "messages": chat_messages}
    if max_tokens is not None:
        chat["max_tokens"] = max_tokens
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if stop:
        chat["stop"] = stop
    if stream:
        chat["stream"] = True
    if metadata:
        if isinstance(metadata.get("user_id"), str):
            chat["user"] = metadata["user_id"]
        if metadata.get("tags") is not None:
            chat["metadata"] = {"tags": metadata["tags"]}  # routing tags, as on /v1/chat/completions
    if body.get("tools"):
        tools = translation.tools(body["tools"])
        if tools:
            chat["tools"] = tools
    if body.get("tool_choice") is not None:
        translation.tool_choice(body["tool_choice"], chat)
    native = {name: value for name, value in body.items() if name not in _TRANSLATED}
    if native:
        for name in native:
            translation.refuse(f"the '{name}' parameter")
        chat["native_parameters"] = native  # part of the cache fingerprint, never sent in the chat form
    return chat, translation.unsupported


def native_payload(body: dict, upstream_id: str) -> bytes:
    """The client's own body for a native Anthropic provider, with the upstream model id (and
    without Switchyard's routing tags, which Anthropic would refuse)."""
    payload = dict(body)
    payload["model"] = upstream_id
    metadata = payload.get("metadata")
    if isinstance(metadata, dict) and "tags" in metadata:
        metadata = {name: value for name, value in metadata.items() if name != "tags"}
        if metadata:
            payload["metadata"] = metadata
        else:
            del payload["metadata"]
    return orjson.dumps(payload)


def anthropic_usage(usage: dict | None) -> dict:
    """Chat usage as Anthropic's: ``input_tokens`` there excludes prompt-cache reads."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("prompt_tokens") or 0
    details = usage.get("prompt_tokens_details")
    cached = (details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    written = usage.get("cache_creation_input_tokens") or 0
    return {"input_tokens": max(prompt - cached - written, 0), "cache_creation_input_tokens": written,
            "cache_read_input_tokens": cached, "output_tokens": usage.get("completion_tokens") or 0}


def message_from_completion(completion: dict, *, message_id: str, model: str | None = None) -> dict:
    """A chat.completion as an Anthropic message."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {"_raw_arguments": function.get("arguments")}
        content.append({"type": "tool_use", "id": call.get("id") or "", "name": function.get("name") or "",
                        "input": arguments})
    if not content:
        content.append({"type": "text", "text": ""})
    finish = choice.get("finish_reason")
    stop = FINISH_TO_STOP.get(finish, "end_turn")
    if message.get("tool_calls") and stop == "end_turn":
        stop = "tool_use"
    return {
        "id": message_id, "type": "message", "role": "assistant", "model": model or completion.get("model") or "",
        "content": content, "stop_reason": stop, "stop_sequence": None,
        "usage": anthropic_usage(completion.get("usage")),
    }


def completion_from_message(message: dict, *, completion_id: str) -> dict:
    """An Anthropic message as a chat.completion (what the cache keeps)."""
    texts: list[str] = []
    tool_calls: list[dict] = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            tool_calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"), "arguments": orjson.dumps(block.get("input") or {}).decode()}})
    chat_message: dict = {"role": "assistant", "content": "".join(texts)}
    if tool_calls:
        chat_message["tool_calls"] = tool_calls
    usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
    read = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + read + written
    output = usage.get("output_tokens") or 0
    return {
        "id": completion_id, "object": "chat.completion", "created": 0, "model": message.get("model") or "",
        "choices": [{"index": 0, "message": chat_message, "logprobs": None,
                     "finish_reason": STOP_TO_FINISH.get(message.get("stop_reason"), "stop")}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output,
                  "prompt_tokens_details": {"cached_tokens": read}},
    }


def replayable(message: dict) -> bool:
    """Whether an Anthropic message holds only text and tool_use blocks (what the cache can replay)."""
    return all(isinstance(b, dict) and b.get("type") in ("text", "tool_use") for b in message.get("content") or [])
