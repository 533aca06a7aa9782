"""The operations of the tenant API's OpenAPI document, each with every status it answers.

Two doors answer them (``apps.gateway.doors.http`` for the hot paths, Django for the rest), but every
error leaves in one shape: OpenAI's, or Anthropic's on ``/v1/messages*``. A method a path does
not list answers 405 with an ``Allow`` header (401 first where the key is checked before the
method).
"""

from __future__ import annotations

from apps.gateway.openapi.schemas import ref

# What each status means on the OpenAI-shaped doors, and on the Anthropic one.
_OPENAI_STATUSES = {
    400: "The body or a parameter is not valid; `param` names it.",
    401: "Missing, invalid, revoked or expired API key.",
    403: "This key may not use that model.",
    404: "No such model (or object, for the files and jobs API).",
    409: "The object is not in a state that allows this.",
    413: "The body is over the size limit (`GATEWAY_MAX_BODY_BYTES`, or `BATCH_FILE_MAX_BYTES` for files).",
    429: "A rate limit or budget of the key or tenant (with `Retry-After`), or every upstream rate-limiting.",
    502: "Every upstream failed.",
    503: "The rate-limit counters cannot be reached (`limits_unavailable`), or the circuit breaker of every "
         "model of the request is open (`upstream_unavailable`, with `Retry-After`); the request was not sent.",
    504: "Every upstream timed out.",
}
_ANTHROPIC_STATUSES = {
    400: "invalid_request_error: a bad body, or what only a native provider takes sent to a model without one.",
    401: "authentication_error: missing, invalid, revoked or expired key.",
    403: "permission_error: a model the key may not use.",
    404: "not_found_error: an unknown model.",
    413: "request_too_large: a body over `GATEWAY_MAX_BODY_BYTES`.",
    429: "rate_limit_error: a rate limit or budget (with `Retry-After`), or every upstream rate-limiting.",
    504: "timeout_error: every upstream timed out.",
    529: "overloaded_error: every upstream failed, every model's circuit is open, or the rate-limit counters "
         "cannot be reached.",
}
_PROVIDER_REFUSAL = "The provider refused the request itself (a 4xx other than 408, 409 and 429): its status and " \
                    "body, as it sent them."


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int | str) -> dict:
    return {str(status): {"$ref": f"#/components/responses/E{status}"} for status in statuses}


def _anthropic_errors(*statuses: int | str) -> dict:
    return {str(status): {"$ref": f"#/components/responses/A{status}"} for status in statuses}


def error_responses() -> dict:
    """The shared error responses: ``E<status>`` in OpenAI's shape, ``A<status>`` in Anthropic's."""
    responses = {f"E{status}": {"description": text, "content": _json(ref("Error"))}
                 for status, text in _OPENAI_STATUSES.items()}
    responses.update({f"A{status}": {"description": text, "content": _json(ref("AnthropicError"))}
                      for status, text in _ANTHROPIC_STATUSES.items()})
    responses["E4XX"] = {"description": _PROVIDER_REFUSAL, "content": _json(ref("Error"))}
    responses["A4XX"] = {"description": _PROVIDER_REFUSAL + " An OpenAI-compatible provider's is rewritten in "
                                                            "Anthropic's shape.",
                         "content": _json(ref("AnthropicError"))}
    return responses


_SWITCHYARD_HEADERS = {
    "x-switchyard-request-id": {"description": "The request's id, as in usage rows.", "schema": {"type": "string"}},
    "x-switchyard-model": {"description": "The model that answered.", "schema": {"type": "string"}},
    "x-switchyard-cache": {"description": "What the cache did.",
                           "schema": {"enum": ["hit-exact", "hit-semantic", "miss", "bypass"]}},
    "x-switchyard-cost": {"description": "USD; `deferred` on a stream (see its last comment).",
                          "schema": {"type": "string"}},
}


def _ok(description: str, schema: str, *, stream: str | None = None, headers: bool = False) -> dict:
    content = _json(ref(schema))
    if stream is not None:
        content["text/event-stream"] = {"schema": ref(stream)}
    response: dict = {"description": description, "content": content}
    if headers:
        response["headers"] = _SWITCHYARD_HEADERS
    return {"200": response}


def _body(schema: str, examples: dict | None = None, media_type: str = "application/json") -> dict:
    content: dict = {"schema": ref(schema)}
    if examples:
        content["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {"required": True, "content": {media_type: content}}


def _path_param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "Objects per page.")
_AFTER = _query("after", {"type": "string"}, "The id of the last object of the previous page.")
_RANGE = [
    _query("start", {"type": "string"}, "Inclusive: a date (UTC midnight) or an ISO 8601 time; default 30 days "
                                        "before `end`."),
    _query("end", {"type": "string"}, "Exclusive; default now. At most 400 days after `start`."),
]
_ANTHROPIC_SECURITY = [{"bearer": []}, {"apiKey": []}]
_PROMPT = [{"role": "user", "content": "What is Python?"}]


def _op(operation_id: str, summary: str, responses: dict, **extra) -> dict:
    return {"operationId": operation_id, "summary": summary, "responses": responses, **extra}


def paths() -> dict:
    """Every tenant endpoint."""
    upstream_errors = _errors(400, 401, 403, 404, 413, 429, 502, 503, 504) | _errors("4XX")
    messages_errors = _anthropic_errors(400, 401, 403, 404, 413, 429, 504, 529, "4XX")
    return {
        "/v1/chat/completions": {"post": _op(
            "createChatCompletion", "A chat completion, as JSON or (with `stream: true`) Server-Sent Events.",
            _ok("The answer.", "ChatCompletion", stream="ChatCompletionEvent", headers=True) | upstream_errors,
            requestBody=_body("ChatCompletionRequest", {
                "routed": {"model": "auto", "messages": _PROMPT},
                "streamed": {"model": "auto", "messages": _PROMPT, "stream": True,
                             "stream_options": {"include_usage": True}}}),
        )},
        "/v1/embeddings": {"post": _op(
            "createEmbeddings", "Embeddings from the provider of the requested embedding model.",
            _ok("The embeddings.", "Embeddings", headers=True) | upstream_errors,
            requestBody=_body("EmbeddingsRequest", {"text": {"model": "sim-embed", "input": "What is Python?"}}),
        )},
        "/v1/models": {"get": _op(
            "listModels", "The models this key may use, with prices per 1M tokens, and `auto`.",
            _ok("The models.", "Models") | _errors(401),
        )},
        "/v1/cache/stats": {"get": _op(
            "cacheStats", "The calling tenant's semantic cache figures.",
            _ok("The figures.", "CacheStats") | _errors(401),
        )},
        "/v1/cache/clear": {"post": _op(
            "cacheClear", "Delete every cache entry of the calling tenant.",
            _ok("How many entries were deleted.", "CacheCleared") | _errors(401),
        )},
        "/v1/cache/feedback": {"post": _op(
            "cacheFeedback", "Say whether a cache hit answered its prompt. A wrong exact hit removes its entry; a "
                             "wrong semantic hit stops the entry answering prompts as far from its own.",
            _ok("What was done.", "CacheFeedback") | _errors(400, 401, 404),
            requestBody=_body("CacheFeedbackRequest", {"wrong": {"request_id": "req_0123456789abcdef",
                                                                 "correct": False}}),
        )},
        "/v1/feedback": {"post": _op(
            "feedback", "Score an answer (0 bad to 1 good), kept against the request's usage row.",
            _ok("The score as kept.", "Feedback") | _errors(400, 401, 404),
            requestBody=_body("FeedbackRequest", {"score": {"request_id": "req_0123456789abcdef", "score": 0.8}}),
        )},
        "/v1/messages": {"post": _op(
            "createMessage", "Anthropic's Messages API: JSON, or Anthropic's stream events with `stream: true`.",
            _ok("The message.", "Message", stream="MessageEvent", headers=True) | messages_errors,
            security=_ANTHROPIC_SECURITY,
            parameters=[{"name": "anthropic-version", "in": "header", "required": False,
                         "schema": {"type": "string"}, "description": "Forwarded to native Anthropic providers."}],
            requestBody=_body("MessagesRequest", {
                "routed": {"model": "auto", "max_tokens": 64, "messages": _PROMPT},
                "streamed": {"model": "auto", "max_tokens": 64, "messages": _PROMPT, "stream": True}}),
        )},
        "/v1/messages/count_tokens": {"post": _op(
            "countMessageTokens", "The prompt's input tokens: asked of a native provider, else counted with o200k. "
                                  "Nothing is billed.",
            _ok("The count.", "TokenCount") | messages_errors,
            security=_ANTHROPIC_SECURITY,
            requestBody=_body("CountTokensRequest", {"prompt": {"model": "auto", "messages": _PROMPT}}),
        )},
        "/v1/responses": {"post": _op(
            "createResponse", "OpenAI's Responses API: JSON, or its typed stream events with `stream: true`. "
                              "Stored for the calling tenant unless `store` is false.",
            _ok("The response.", "Response", stream="ResponseEvent", headers=True) | upstream_errors,
            requestBody=_body("ResponsesRequest", {
                "routed": {"model": "auto", "input": "What is Python?"},
                "streamed": {"model": "auto", "instructions": "Be brief.", "input": _PROMPT, "stream": True}}),
        )},
        "/v1/responses/{response_id}": {
            "parameters": [_path_param("response_id", "A stored response of the calling tenant (another tenant's "
                                                      "answers 404).")],
            "get": _op("getResponse", "A stored response, as it was answered (a background one: as it stands); "
                                      "with `stream=true`, a background response's events after "
                                      "`starting_after`, followed until it ends.",
                       _ok("The response, or its events.", "Response", stream="ResponseEvent")
                       | _errors(400, 401, 404),
                       parameters=[_query("stream", {"type": "boolean", "default": False},
                                          "Replay a background response's events (then follow it)."),
                                   _query("starting_after", {"type": "integer", "minimum": 0},
                                          "With `stream`: the sequence number after which events are sent.")]),
            "delete": _op("deleteResponse", "Delete a stored response.",
                          _ok("Deleted.", "ResponseDeleted") | _errors(401, 404)),
        },
        "/v1/responses/{response_id}/cancel": {
            "parameters": [_path_param("response_id", "A stored response of the calling tenant.")],
            "post": _op("cancelResponse", "Cancel a queued or in-progress background response: it stops and is "
                                          "answered `cancelled`. Any other response answers 400.",
                        _ok("The response, cancelled.", "Response") | _errors(400, 401, 404)),
        },
        "/v1/responses/{response_id}/input_items": {
            "parameters": [_path_param("response_id", "A stored response of the calling tenant.")],
            "get": _op("listResponseInputItems", "The input items of a stored response (not those of the "
                                                 "conversation it continued).",
                       _ok("A page of items.", "ResponseInputItems") | _errors(400, 401, 404),
                       parameters=[_query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                                          "Items per page."),
                                   _query("order", {"enum": ["asc", "desc"], "default": "desc"}, "By position."),
                                   _AFTER, _query("before", {"type": "string"}, "An item id: the items before it."),
                                   _query("include", {"type": "array", "items": {"type": "string"}},
                                          "Accepted; nothing more is included.")]),
        },
        "/v1/complete": {"post": _op(
            "complete", "The simple form of a completion: one prompt in, the text and its figures out.",
            _ok("The answer, or with `stream: true` its events.", "CompletionSummary", stream="CompleteEvent",
                headers=True) | upstream_errors,
            requestBody=_body("CompleteRequest", {"prompt": {"prompt": "What is Python?"}}),
        )},
        "/v1/usage": {"get": _op(
            "usage", "The calling tenant's usage from the rollups (they lag the log by up to two rollup periods).",
            _ok("Totals and groups.", "Usage") | _errors(400, 401),
            parameters=[*_RANGE, _query("group_by", {"enum": ["model", "key", "day", "outcome"], "default": "day"},
                                        "How `data` is grouped.")],
        )},
        "/v1/usage/export": {"get": _op(
            "usageExport", "The calling tenant's request log as CSV, one line per request, streamed.",
            {"200": {"description": "CSV with a header line.", "content": {"text/csv": {"schema": {"type": "string"}}}}}
            | _errors(400, 401),
            parameters=_RANGE,
        )},
        "/v1/files": {
            "post": _op("createFile", "Upload a JSONL file of batch requests (spooled to disk, never held in memory).",
                        _ok("The file.", "File") | _errors(400, 401, 413),
                        requestBody=_body("FileUpload", media_type="multipart/form-data")),
            "get": _op("listFiles", "The calling tenant's files, newest first.",
                       _ok("A page of files.", "FileList") | _errors(400, 401),
                       parameters=[_query("purpose", {"type": "string"}, "Only files of this purpose."),
                                   _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000,
                                                    "default": 10_000}, "Files per page."), _AFTER]),
        },
        "/v1/files/{file_id}": {
            "parameters": [_path_param("file_id", "A file of the calling tenant (another tenant's answers 404).")],
            "get": _op("getFile", "A file.", _ok("The file.", "File") | _errors(401, 404)),
            "delete": _op("deleteFile", "Delete a file (409 while a running batch reads it).",
                          _ok("Deleted.", "FileDeleted") | _errors(401, 404, 409)),
        },
        "/v1/files/{file_id}/content": {
            "parameters": [_path_param("file_id", "A file of the calling tenant.")],
            "get": _op("getFileContent", "A file's bytes, streamed.",
                       {"200": {"description": "The bytes.", "content": {"application/octet-stream": {
                           "schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}}}
                       | _errors(401, 404)),
        },
        "/v1/batches": {
            "post": _op("createBatch", "A batch over an uploaded file; it starts validating on a worker at once.",
                        _ok("The batch.", "Batch") | _errors(400, 401, 404, 413),
                        requestBody=_body("BatchRequest")),
            "get": _op("listBatches", "The calling tenant's batches, newest first.",
                       _ok("A page of batches.", "BatchList") | _errors(400, 401), parameters=[_LIMIT, _AFTER]),
        },
        "/v1/batches/{batch_id}": {
            "parameters": [_path_param("batch_id", "A batch of the calling tenant.")],
            "get": _op("getBatch", "A batch: status, counts, output and error files.",
                       _ok("The batch.", "Batch") | _errors(401, 404)),
        },
        "/v1/batches/{batch_id}/cancel": {
            "parameters": [_path_param("batch_id", "A batch of the calling tenant.")],
            "post": _op("cancelBatch", "Ask a batch to stop; what was answered is kept.",
                        _ok("The batch, cancelling.", "Batch") | _errors(401, 404, 409)),
        },
        "/v1/jobs/map-reduce": {"post": _op(
            "createMapReduceJob", "Many prompts in parallel, then one answer over their answers.",
            _ok("The job.", "MapReduceJob") | _errors(400, 401, 413), requestBody=_body("MapReduceRequest"),
        )},
        "/v1/jobs": {"get": _op(
            "listMapReduceJobs", "The calling tenant's map-reduce jobs, newest first.",
            _ok("A page of jobs.", "MapReduceJobList") | _errors(400, 401), parameters=[_LIMIT, _AFTER],
        )},
        "/v1/jobs/{job_id}": {
            "parameters": [_path_param("job_id", "A map-reduce job of the calling tenant.")],
            "get": _op("getMapReduceJob", "A job; once completed, its result and each item's answer.",
                       _ok("The job.", "MapReduceJob") | _errors(401, 404)),
        },
        "/v1/jobs/{job_id}/cancel": {
            "parameters": [_path_param("job_id", "A map-reduce job of the calling tenant.")],
            "post": _op("cancelMapReduceJob", "Ask a job to stop.",
                        _ok("The job, cancelling.", "MapReduceJob") | _errors(401, 404, 409)),
        },
        "/v1/openapi.json": {"get": _op(
            "openapi", "This document.", {"200": {"description": "OpenAPI 3.1.", "content": _json({"type": "object"})}},
            security=[],
        )},
    }
