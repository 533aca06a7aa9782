"""The component schemas of OpenAI's Responses API as the gateway serves it (``/v1/responses``
and its stored responses), with the checks its translator makes
(:mod:`apps.gateway.dialects.responses.translate`)."""

from __future__ import annotations

from apps.gateway.openapi.schemas import OBJECT, STRING, int_schema, number_schema

_NULLABLE_STRING = {"type": ["string", "null"]}
_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"enum": ["input_text", "output_text"]}, "text": STRING}}
_MESSAGE_ITEM = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "type": {"const": "message"},
        "role": {"enum": ["user", "system", "developer", "assistant"]},
        "content": {"anyOf": [STRING, {"type": "array", "items": _TEXT_PART}]},
    },
}
_FUNCTION_CALL_ITEM = {
    "type": "object",
    "required": ["type", "call_id", "name", "arguments"],
    "properties": {"type": {"const": "function_call"}, "call_id": STRING, "name": STRING, "arguments": STRING},
}
_FUNCTION_OUTPUT_ITEM = {
    "type": "object",
    "required": ["type", "call_id", "output"],
    "properties": {"type": {"const": "function_call_output"}, "call_id": STRING,
                   "output": {"anyOf": [STRING, {"type": "array", "items": _TEXT_PART}]}},
}
_FUNCTION_TOOL = {
    "type": "object",
    "required": ["type", "name"],
    "properties": {"type": {"const": "function"}, "name": STRING, "description": STRING,
                   "parameters": OBJECT, "strict": {"type": "boolean"}},
}
_TEXT_FORMAT = {
    "type": "object",
    "required": ["type"],
    "description": "`json_schema` takes `name` and `schema` (and `strict`, `description`).",
    "properties": {"type": {"enum": ["text", "json_object", "json_schema"]}, "name": STRING, "schema": OBJECT,
                   "strict": {"type": "boolean"}, "description": STRING},
}
_NOT_YET = {"description": "Not served yet: a true value (or any object) answers 400 `unsupported_parameter`."}
RESPONSES_REQUEST = {
    "type": "object",
    "required": ["model", "input"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "pattern": r"\S", "description": "A model name, an alias or `auto` (routed)."},
        "input": {"anyOf": [STRING, {"type": "array", "items": {
            "anyOf": [_MESSAGE_ITEM, _FUNCTION_CALL_ITEM, _FUNCTION_OUTPUT_ITEM]}}]},
        "instructions": STRING,
        "previous_response_id": {"type": "string", "description": "A stored response of the calling tenant: its "
                                                                  "conversation goes before `input`."},
        "store": {"type": "boolean", "description": "Keep the response (default true)."},
        "stream": {"type": "boolean"},
        "stream_options": OBJECT,
        "max_output_tokens": int_schema(1, 10_000_000),
        "temperature": number_schema(0, 2),
        "top_p": number_schema(0, 1),
        "top_logprobs": int_schema(0, 20),
        "max_tool_calls": int_schema(1, 10_000),
        "text": {"type": "object", "properties": {"format": _TEXT_FORMAT, "verbosity": STRING}},
        "tools": {"type": "array", "items": _FUNCTION_TOOL},
        "tool_choice": {"anyOf": [{"enum": ["auto", "none", "required"]}, {
            "type": "object", "required": ["type", "name"],
            "properties": {"type": {"const": "function"}, "name": STRING}}]},
        "parallel_tool_calls": {"type": "boolean"},
        "reasoning": {"type": "object", "properties": {
            "effort": {"enum": ["none", "minimal", "low", "medium", "high", "xhigh"]}}},
        "metadata": {"type": "object", "description": "Kept on the response; `tags` route as on the chat door."},
        "user": STRING, "safety_identifier": STRING, "prompt_cache_key": STRING, "service_tier": STRING,
        "truncation": {"enum": ["auto", "disabled"]},
        "include": {"type": "array", "items": STRING},
        "background": {"type": "boolean", "description": "Run off the request: answered `queued` at once, then "
                                                         "retrieved, streamed again or cancelled. Not with "
                                                         "`store: false`."},
        "prompt_cache_options": {"type": "object", "description": "Accepted; not sent on."},
        "prompt_cache_retention": {"type": "string", "description": "Accepted; not sent on."},
        "background_options": {"type": "object", "description": "Accepted; not used."},
        **{name: _NOT_YET for name in ("conversation", "prompt", "moderation", "context_management",
                                       "access_programs", "image")},
    },
}
_USAGE = {
    "type": "object",
    "required": ["input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details", "total_tokens"],
    "properties": {
        "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"},
        "input_tokens_details": {"type": "object", "required": ["cached_tokens"],
                                 "properties": {"cached_tokens": {"type": "integer"}}},
        "output_tokens_details": {"type": "object", "required": ["reasoning_tokens"],
                                  "properties": {"reasoning_tokens": {"type": "integer"}}},
    },
}
_OUTPUT_ITEM = {
    "type": "object",
    "required": ["id", "type"],
    "description": "A `message` (its `content` of `output_text` parts) or a `function_call` (`call_id`, `name`, "
                   "`arguments`).",
    "properties": {"id": STRING, "type": {"enum": ["message", "function_call"]}, "status": STRING},
}
RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created_at", "status", "model", "output", "usage"],
    "properties": {
        "id": {"type": "string", "pattern": "^resp_"}, "object": {"const": "response"},
        "created_at": {"type": "integer"},
        "status": {"enum": ["completed", "incomplete", "queued", "in_progress", "failed", "cancelled"]},
        "model": STRING, "background": {"type": "boolean"},
        "output": {"type": "array", "items": _OUTPUT_ITEM}, "usage": {"anyOf": [_USAGE, {"type": "null"}]},
        "previous_response_id": _NULLABLE_STRING, "instructions": _NULLABLE_STRING, "store": {"type": "boolean"},
    },
}
RESPONSE_EVENT = {
    "type": "object",
    "description": "One of OpenAI's typed Responses events; `data:` is its JSON, with `type` and "
                   "`sequence_number`. A comment `: x-switchyard-cost <usd>` precedes the last event.",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": [
            "response.created", "response.in_progress", "response.output_item.added",
            "response.content_part.added", "response.output_text.delta", "response.output_text.done",
            "response.content_part.done", "response.function_call_arguments.delta",
            "response.function_call_arguments.done", "response.output_item.done", "response.completed",
            "response.incomplete", "response.failed", "response.cancelled", "error"]},
        "data": {"type": "string", "minLength": 1},
    },
}
RESPONSE_DELETED = {
    "type": "object",
    "required": ["id", "object", "deleted"],
    "properties": {"id": STRING, "object": {"const": "response"}, "deleted": {"const": True}},
}
INPUT_ITEMS = {
    "type": "object",
    "required": ["object", "data", "first_id", "last_id", "has_more"],
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {"type": "object", "required": ["id", "type"],
                                            "properties": {"id": STRING, "type": STRING}}},
        "first_id": _NULLABLE_STRING, "last_id": _NULLABLE_STRING, "has_more": {"type": "boolean"},
    },
}

RESPONSES_SCHEMAS = {
    "ResponsesRequest": RESPONSES_REQUEST, "Response": RESPONSE, "ResponseEvent": RESPONSE_EVENT,
    "ResponseDeleted": RESPONSE_DELETED, "ResponseInputItems": INPUT_ITEMS,
}
