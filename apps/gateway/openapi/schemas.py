"""The component schemas of the tenant API's OpenAPI document: request and response bodies.

Request schemas say what the gateway accepts, with the ranges its validators check
(:mod:`apps.gateway.validation`, the batch services; Anthropic's in :mod:`.messages_schemas`);
response schemas say what every answer holds, loose where a provider's own answer is relayed
as it came (fields are added to OpenAI's and Anthropic's objects over time).
"""

from __future__ import annotations


def ref(name: str) -> dict:
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    """``schema`` or ``null``: OpenAI takes ``null`` for any optional field, as "not set"."""
    return {"anyOf": [schema, {"type": "null"}]}


def int_schema(low: int, high: int, description: str = "") -> dict:
    schema: dict = {"type": "integer", "minimum": low, "maximum": high}
    if description:
        schema["description"] = description
    return schema


def number_schema(low: float, high: float) -> dict:
    return {"type": "number", "minimum": low, "maximum": high}


STRING = {"type": "string"}
OBJECT = {"type": "object"}
ARRAY = {"type": "array"}
_TIMESTAMP = {"type": ["integer", "null"], "description": "Unix seconds."}
_MONEY = {"type": "string", "description": "US dollars, as a decimal string.", "pattern": r"^-?\d+(\.\d+)?$"}

ERROR = {
    "type": "object",
    "description": "OpenAI's error shape. `code` is the gateway's (or the provider's) machine-readable reason; "
                   "`param` names the offending request field when there is one.",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {"message": STRING, "type": STRING, "param": {"type": ["string", "null"]},
                       "code": {"type": ["string", "null"]}},
    }},
}

_CONTENT_PART = {
    "type": "object",
    "description": "A content part: `{\"type\": \"text\", \"text\": ...}`, `image_url`, `input_audio`, `file`...",
    "required": ["type"],
    "properties": {"type": STRING, "text": STRING},
}
CHAT_MESSAGE = {
    "type": "object",
    "description": "`content` is required except on assistant messages with `tool_calls` and function messages.",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
        "content": {"anyOf": [STRING, {"type": "array", "items": _CONTENT_PART}, {"type": "null"}]},
        "name": STRING, "tool_calls": ARRAY, "tool_call_id": STRING,
    },
}
# Every field of OpenAI's chat completion request (apps.gateway.validation.CHAT_FIELDS); any
# other is refused with 400 unknown_parameter.
CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "pattern": r"\S", "description": "A model name, an alias or `auto` (routed)."},
        "messages": {"type": "array", "minItems": 1, "items": ref("ChatMessage")},
        "audio": _nullable(OBJECT),
        "frequency_penalty": _nullable(number_schema(-2, 2)),
        "function_call": _nullable({"type": ["string", "object"]}),
        "functions": _nullable(ARRAY),
        "logit_bias": _nullable(OBJECT),
        "logprobs": _nullable({"type": "boolean"}),
        "max_completion_tokens": _nullable(int_schema(1, 10_000_000)),
        "max_tokens": _nullable(int_schema(1, 10_000_000, "At most the model's own output limit (else 400).")),
        "metadata": _nullable({"type": "object", "description": "`tags` (an array or a comma-separated string) "
                                                                "feeds routing rules."}),
        "modalities": _nullable(ARRAY),
        "moderation": _nullable(OBJECT),
        "n": _nullable(int_schema(1, 128)),
        "parallel_tool_calls": _nullable({"type": "boolean"}),
        "prediction": _nullable(OBJECT),
        "presence_penalty": _nullable(number_schema(-2, 2)),
        "prompt_cache_key": _nullable(STRING),
        "prompt_cache_options": _nullable(OBJECT),
        "prompt_cache_retention": _nullable(STRING),
        "reasoning_effort": _nullable(STRING),
        "response_format": _nullable(OBJECT),
        "safety_identifier": _nullable(STRING),
        "seed": _nullable(int_schema(-(2**63), 2**63 - 1)),
        "service_tier": _nullable(STRING),
        "stop": _nullable({"anyOf": [STRING, {"type": "array", "items": STRING}]}),
        "store": _nullable({"type": "boolean"}),
        "stream": _nullable({"type": "boolean", "description": "`true`: the answer is Server-Sent Events."}),
        "stream_options": _nullable({"type": "object", "properties": {"include_usage": {"type": "boolean"}}}),
        "temperature": _nullable(number_schema(0, 2)),
        "tool_choice": _nullable({"type": ["string", "object"]}),
        "tools": _nullable(ARRAY),
        "top_logprobs": _nullable(int_schema(0, 20)),
        "top_p": _nullable(number_schema(0, 1)),
        "user": _nullable({"type": "string", "description": "Also a cache namespace when the tenant keeps one "
                                                            "per end user."}),
        "verbosity": _nullable(STRING),
        "web_search_options": _nullable(OBJECT),
    },
}
CHAT_COMPLETION = {
    "type": "object",
    "description": "The provider's answer as it came (or the cached one).",
    "required": ["id", "object", "choices"],
    "properties": {
        "id": STRING, "object": {"const": "chat.completion"}, "created": {"type": "integer"}, "model": STRING,
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "message": OBJECT, "finish_reason": {"type": ["string", "null"]}}}},
        "usage": {"type": "object", "properties": {
            "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"}}},
    },
}
# Open API 3.1 has an event stream's schema describe one event (as parsed from its lines).
CHAT_EVENT = {
    "type": "object",
    "description": "One SSE event: `data:` is a `chat.completion.chunk` as JSON, `{\"error\": {...}}` if the "
                   "upstream failed mid-stream, then `[DONE]`. A comment `: x-switchyard-cost <usd>` precedes "
                   "`[DONE]`.",
    "required": ["data"],
    "properties": {"event": {"const": "message"}, "data": {"type": "string", "minLength": 1}},
}

EMBEDDINGS_REQUEST = {
    "type": "object",
    "required": ["model", "input"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "pattern": r"\S"},
        "input": {"anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            {"type": "array", "minItems": 1, "items": {"type": "integer"}},
            {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1, "items": {"type": "integer"}}},
        ]},
        "dimensions": _nullable(int_schema(1, 65536)),
        "encoding_format": _nullable({"enum": ["float", "base64"]}),
        "user": _nullable(STRING),
    },
}
EMBEDDINGS = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {"type": "object", "required": ["embedding"], "properties": {
            "object": {"const": "embedding"}, "index": {"type": "integer"},
            "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}}, STRING]}}}},
        "model": STRING, "usage": OBJECT,
    },
}

MODELS = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
        "type": "object", "required": ["id", "object", "owned_by"],
        "properties": {"id": STRING, "object": {"const": "model"}, "created": {"type": "integer"},
                       "owned_by": STRING,
                       "switchyard": {"type": "object", "description": "Mode, tier, context window and prices "
                                                                      "per 1M tokens (`auto` has the mode only)."}},
    }}},
}
CACHE_STATS = {
    "type": "object",
    "required": ["object", "entries", "valid", "expired", "hits", "misses", "hit_rate", "saved_cost",
                 "semantic_ready"],
    "properties": {
        "object": {"const": "cache.stats"},
        **{name: {"type": "integer", "minimum": 0} for name in (
            "entries", "valid", "expired", "hits", "hits_exact", "hits_semantic", "misses", "bypassed",
            "entry_hit_count")},
        **{name: number_schema(0, 1) for name in ("hit_rate", "hit_rate_exact", "hit_rate_semantic")},
        "saved_cost": _MONEY,
        "semantic_ready": {"type": "boolean", "description": "Whether semantic lookups run yet (the embedding "
                                                             "model loads in the background)."},
    },
}
CACHE_CLEARED = {
    "type": "object", "required": ["object", "deleted"],
    "properties": {"object": {"const": "cache.cleared"}, "deleted": {"type": "integer", "minimum": 0}},
}

_REQUEST_ID = {"type": "string", "minLength": 1, "maxLength": 64,
               "description": "The `x-switchyard-request-id` header of the answer."}
_COMMENT = {"type": ["string", "null"], "maxLength": 4000}

CACHE_FEEDBACK_REQUEST = {
    "type": "object", "required": ["request_id", "correct"],
    "properties": {
        "request_id": _REQUEST_ID,
        "correct": {"type": "boolean", "description": "Whether the cached answer answered the prompt."},
        "comment": _COMMENT,
    },
}

CACHE_FEEDBACK = {
    "type": "object", "required": ["object", "request_id", "correct", "cache", "action"],
    "properties": {
        "object": {"const": "cache.feedback"},
        "request_id": STRING,
        "correct": {"type": "boolean"},
        "cache": {"enum": ["exact", "semantic"], "description": "How the request was answered from the cache."},
        "similarity": {"type": ["number", "null"]},
        "action": {"enum": ["recorded", "entry_removed", "entry_demoted", "entry_gone", "entry_unknown"],
                   "description": "What a wrong hit did to its entry: removed (an exact hit), demoted (a "
                                  "semantic hit: the entry no longer answers prompts this far from its own), "
                                  "gone (evicted already), unknown (shared from an identical request in "
                                  "flight); a right hit is only recorded."},
    },
}

FEEDBACK_REQUEST = {
    "type": "object", "required": ["request_id", "score"],
    "properties": {
        "request_id": _REQUEST_ID,
        "score": {"anyOf": [number_schema(0, 1), {"type": "boolean"}],
                  "description": "How good the answer was: 0 (bad) to 1 (good); true is 1, false 0."},
        "comment": _COMMENT,
    },
}

FEEDBACK = {
    "type": "object", "required": ["object", "request_id", "score", "model"],
    "properties": {"object": {"const": "feedback"}, "request_id": STRING, "score": number_schema(0, 1),
                   "model": {"type": "string", "description": "The model that answered."},
                   "learned_routing": {"type": "boolean",
                                       "description": "Whether a learned rule routed the request: its router "
                                                      "learns from this score."}},
}

COMPLETE_REQUEST = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "maxLength": 1_000_000},
        "model": {"type": "string", "pattern": r"\S", "maxLength": 200, "default": "auto"},
        "use_cache": {"type": "boolean", "default": True},
        "stream": {"type": "boolean", "default": False},
        "max_tokens": int_schema(1, 10_000_000),
        "system": {"type": "string", "maxLength": 100_000},
    },
}
_COMPLETE_FIELDS = {
    "content": STRING, "model_used": {"type": ["string", "null"]}, "cached": {"type": "boolean"},
    "latency_ms": {"type": "number"}, "cost": _MONEY, "request_id": STRING,
    "tokens": {"type": "object", "required": ["input", "output"],
               "properties": {"input": {"type": "integer"}, "output": {"type": "integer"}}},
}
COMPLETION_SUMMARY = {"type": "object", "required": list(_COMPLETE_FIELDS), "properties": _COMPLETE_FIELDS}
COMPLETE_EVENT = {
    "type": "object",
    "description": "`data:` is `{\"content\"}` per delta, then one `{\"done\": true, ...}` with the fields of the "
                   "JSON answer, or `{\"error\": {...}}`.",
    "required": ["data"],
    "properties": {"event": {"const": "message"}, "data": {"type": "string", "minLength": 1}},
}

_USAGE_FIGURES = {
    **{name: {"type": "integer", "minimum": 0} for name in (
        "requests", "errors", "input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens")},
    "cost": _MONEY, "saved_cost": _MONEY, "routing_saved_cost": _MONEY,
}
USAGE = {
    "type": "object",
    "required": ["object", "start", "end", "totals", "group_by", "data"],
    "properties": {
        "object": {"const": "usage"}, "start": {"type": "string", "format": "date-time"},
        "end": {"type": "string", "format": "date-time"},
        "group_by": {"enum": ["model", "key", "day", "outcome"]},
        "totals": {"type": "object", "required": list(_USAGE_FIGURES), "properties": {
            **_USAGE_FIGURES,
            **{name: {"type": "integer", "minimum": 0} for name in (
                "cache_hits_exact", "cache_hits_semantic", "cache_misses")},
            "cache_hit_rate": number_schema(0, 1),
            **{name: {"type": ["number", "null"]} for name in (
                "latency_ms_p50", "latency_ms_p95", "ttft_ms_p50", "ttft_ms_p95")}}},
        "data": {"type": "array", "items": {
            "type": "object", "required": ["group", *_USAGE_FIGURES],
            "properties": {"group": {"type": ["string", "integer", "null"],
                                     "description": "The model, the key's id, the day or the cache outcome."},
                           **_USAGE_FIGURES}}},
    },
}

FILE = {
    "type": "object",
    "required": ["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
    "properties": {
        "id": STRING, "object": {"const": "file"}, "bytes": {"type": "integer", "minimum": 0},
        "created_at": {"type": "integer"}, "filename": STRING, "purpose": STRING, "status": STRING,
        "status_details": {"type": ["string", "null"]}, "expires_at": _TIMESTAMP,
    },
}
FILE_UPLOAD = {
    "type": "object",
    "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                 "description": "JSONL: one request a line, each with `custom_id`, `method`, `url` and `body`."},
        "purpose": {"enum": ["batch"]},
    },
}
FILE_DELETED = {
    "type": "object", "required": ["id", "object", "deleted"],
    "properties": {"id": STRING, "object": {"const": "file"}, "deleted": {"const": True}},
}


def page(item: str) -> dict:
    """OpenAI's cursor page of ``item`` objects, newest first."""
    return {
        "type": "object",
        "required": ["object", "data", "first_id", "last_id", "has_more"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": ref(item)},
                       "first_id": {"type": ["string", "null"]}, "last_id": {"type": ["string", "null"]},
                       "has_more": {"type": "boolean"}},
    }


_METADATA = {"type": "object", "maxProperties": 16,
             "additionalProperties": {"type": "string", "maxLength": 512},
             "propertyNames": {"maxLength": 64}}
_WINDOW = {"type": "string", "pattern": r"^\d+[mhd]$", "default": "24h",
           "description": "`<n>m`, `<n>h` or `<n>d`, from 1 minute to 7 days (OpenAI takes only `24h`)."}
BATCH_REQUEST = {
    "type": "object",
    "required": ["input_file_id", "endpoint"],
    "properties": {
        "input_file_id": {"type": "string", "minLength": 1},
        "endpoint": {"enum": ["/v1/chat/completions", "/v1/embeddings"]},
        "completion_window": _WINDOW,
        "metadata": {"anyOf": [_METADATA, {"type": "null"}]},
    },
}
_STATUSES = ["validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"]
_BATCH_FIELDS = {
    "id": STRING, "object": {"const": "batch"}, "endpoint": STRING,
    "errors": {"type": ["object", "null"], "description": "`{\"object\": \"list\", \"data\": [{code, message, param, "
                                                          "line}]}` when validation failed."},
    "input_file_id": STRING, "completion_window": STRING, "status": {"enum": _STATUSES},
    "output_file_id": {"type": ["string", "null"]}, "error_file_id": {"type": ["string", "null"]},
    "request_counts": {"type": "object", "required": ["total", "completed", "failed"], "properties": {
        name: {"type": "integer", "minimum": 0} for name in ("total", "completed", "failed")}},
    "metadata": {"type": ["object", "null"]},
    **{name: _TIMESTAMP for name in ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at",
                                     "failed_at", "expired_at", "cancelling_at", "cancelled_at")},
}
BATCH = {"type": "object", "required": list(_BATCH_FIELDS), "properties": _BATCH_FIELDS}
MAP_REDUCE_REQUEST = {
    "type": "object",
    "required": ["items", "map_prompt", "reduce_prompt"],
    "properties": {
        "items": {"type": "array", "minItems": 1, "maxItems": 10_000,
                  "description": "Strings, or any JSON (filled in as JSON). At most BATCH_MAP_REDUCE_MAX_ITEMS."},
        "map_prompt": {"type": "string", "pattern": r"\S", "description": "`{item}` is replaced by each item."},
        "reduce_prompt": {"type": "string", "pattern": r"\S", "description": "`{results}` is replaced by the answers."},
        "model": {"type": "string", "pattern": r"\S", "default": "auto"},
        "max_tokens": {"type": ["integer", "null"], "minimum": 1},
        "completion_window": _WINDOW,
        "metadata": {"anyOf": [_METADATA, {"type": "null"}]},
    },
}
MAP_REDUCE_JOB = {
    "type": "object",
    "required": [*_BATCH_FIELDS, "model", "result"],
    "properties": {
        **_BATCH_FIELDS,
        "object": {"const": "map_reduce_job"},
        "model": {"type": ["string", "null"]},
        "result": {"type": ["object", "null"], "description": "Once completed: `output`, `levels`, `reduce_calls`."},
        "items": {"type": "array", "description": "Once completed, on `GET /v1/jobs/{job_id}`: each item's "
                                                  "`output` or `error`.",
                  "items": {"type": "object", "required": ["index", "output", "error"], "properties": {
                      "index": {"type": "integer"}, "custom_id": {"type": ["string", "null"]},
                      "output": {"type": ["string", "null"]}, "error": {"type": ["object", "null"]}}}},
    },
}

SCHEMAS = {
    "Error": ERROR,
    "ChatMessage": CHAT_MESSAGE, "ChatCompletionRequest": CHAT_REQUEST, "ChatCompletion": CHAT_COMPLETION,
    "ChatCompletionEvent": CHAT_EVENT,
    "EmbeddingsRequest": EMBEDDINGS_REQUEST, "Embeddings": EMBEDDINGS, "Models": MODELS,
    "CacheStats": CACHE_STATS, "CacheCleared": CACHE_CLEARED,
    "CacheFeedbackRequest": CACHE_FEEDBACK_REQUEST, "CacheFeedback": CACHE_FEEDBACK,
    "FeedbackRequest": FEEDBACK_REQUEST, "Feedback": FEEDBACK,
    "CompleteRequest": COMPLETE_REQUEST, "CompletionSummary": COMPLETION_SUMMARY, "CompleteEvent": COMPLETE_EVENT,
    "Usage": USAGE,
    "File": FILE, "FileUpload": FILE_UPLOAD, "FileDeleted": FILE_DELETED, "FileList": page("File"),
    "BatchRequest": BATCH_REQUEST, "Batch": BATCH, "BatchList": page("Batch"),
    "MapReduceRequest": MAP_REDUCE_REQUEST, "MapReduceJob": MAP_REDUCE_JOB, "MapReduceJobList": page("MapReduceJob"),
}
