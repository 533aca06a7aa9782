"""The component schemas of Anthropic's Messages API as the gateway serves it (``/v1/messages``
and ``/v1/messages/count_tokens``), with the checks its translator makes
(:mod:`apps.gateway.dialects.anthropic.translate`)."""

from __future__ import annotations

from apps.gateway.openapi.schemas import STRING, int_schema, number_schema

ANTHROPIC_ERROR = {
    "type": "object",
    "description": "Anthropic's error shape; the gateway's own code is in the `x-switchyard-error-code` header.",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {"type": "object", "required": ["type", "message"],
                  "properties": {"type": STRING, "message": STRING}},
        "request_id": STRING,
    },
}
_TEXT_BLOCK = {"type": "object", "required": ["type", "text"],
               "properties": {"type": {"const": "text"}, "text": STRING}}
_ANTHROPIC_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"enum": ["user", "assistant"]},
        "content": {"anyOf": [STRING, {"type": "array", "items": {
            "type": "object", "required": ["type"], "properties": {"type": STRING},
            "description": "text, image, tool_use, tool_result (translated for any provider); other block "
                           "types reach native Anthropic providers only."}}]},
    },
}
# The fields both Anthropic requests share, with the checks the translator makes.
_ANTHROPIC_COMMON = {
    "model": {"type": "string", "pattern": r"\S", "description": "A model name, an alias or `auto` (routed)."},
    "messages": {"type": "array", "minItems": 1, "items": _ANTHROPIC_MESSAGE},
    "system": {"anyOf": [STRING, {"type": "array", "items": _TEXT_BLOCK}]},
    "tools": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": STRING}}},
    "tool_choice": {"type": "object", "required": ["type"],
                    "properties": {"type": {"enum": ["auto", "any", "tool", "none"]}, "name": STRING,
                                   "disable_parallel_tool_use": {"type": "boolean"}}},
}
_NATIVE_ONLY = {"description": "Taken by native Anthropic providers only: a model without one answers 400."}
MESSAGES_REQUEST = {
    "type": "object",
    "required": ["model", "max_tokens", "messages"],
    "additionalProperties": False,
    "properties": {
        **_ANTHROPIC_COMMON,
        "max_tokens": int_schema(1, 10_000_000),
        "metadata": {"type": "object", "properties": {"user_id": STRING, "tags": {
            "description": "Routing tags, removed before a native provider sees the body."}}},
        "stop_sequences": {"type": "array", "items": STRING},
        "stream": {"type": "boolean"},
        "temperature": number_schema(0, 1),
        "top_p": number_schema(0, 1),
        "top_k": int_schema(0, 2**31 - 1),
        "service_tier": STRING,
        **{name: _NATIVE_ONLY for name in (
            "thinking", "container", "mcp_servers", "context_management", "cache_control", "inference_geo",
            "output_config", "output_format", "speed", "diagnostics", "billing_policy", "compaction",
            "fallback_credit_token", "fallbacks", "thread")},
    },
}
COUNT_TOKENS_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": False,
    "properties": {
        **_ANTHROPIC_COMMON,
        **{name: _NATIVE_ONLY for name in (
            "thinking", "cache_control", "output_config", "output_format", "speed", "mcp_servers",
            "context_management", "compaction", "billing_policy")},
    },
}
ANTHROPIC_MESSAGE = {
    "type": "object",
    "required": ["id", "type", "role", "content", "model", "stop_reason", "usage"],
    "properties": {
        "id": STRING, "type": {"const": "message"}, "role": {"const": "assistant"}, "model": STRING,
        "content": {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {
            "type": STRING}}},
        "stop_reason": {"type": ["string", "null"]}, "stop_sequence": {"type": ["string", "null"]},
        "usage": {"type": "object", "required": ["input_tokens", "output_tokens"], "properties": {
            "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
            "cache_creation_input_tokens": {"type": ["integer", "null"]},
            "cache_read_input_tokens": {"type": ["integer", "null"]}}},
    },
}
ANTHROPIC_EVENT = {
    "type": "object",
    "description": "One of Anthropic's stream events; `data:` is its JSON.",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["message_start", "content_block_start", "ping", "content_block_delta",
                           "content_block_stop", "message_delta", "message_stop", "error"]},
        "data": {"type": "string", "minLength": 1},
    },
}
TOKEN_COUNT = {"type": "object", "required": ["input_tokens"],
               "properties": {"input_tokens": {"type": "integer", "minimum": 0}}}

MESSAGES_SCHEMAS = {
    "AnthropicError": ANTHROPIC_ERROR, "MessagesRequest": MESSAGES_REQUEST, "CountTokensRequest": COUNT_TOKENS_REQUEST,
    "Message": ANTHROPIC_MESSAGE, "MessageEvent": ANTHROPIC_EVENT, "TokenCount": TOKEN_COUNT,
}
