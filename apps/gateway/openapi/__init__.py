"""The public tenant API as an OpenAPI 3.1 document, kept by hand, served at ``GET /v1/openapi.json``.

    schemas.py   request and response bodies
    paths.py     every tenant endpoint with every status it answers

Kept by hand rather than generated: half the API is answered by the raw ASGI door, which no
generator sees, and the document is the contract the tests hold the code to
(``tests/gateway/test_openapi.py`` runs schemathesis against a live gateway with it).

Not in it: ``GET /v1/stream`` (the playground's EventSource, for a logged-in staff user, not a
tenant key), ``GET /metrics`` (operators), and the WebSocket door ``/ws/v1/chat`` (not
expressible in OpenAPI; docs/streaming.md documents its messages).
"""

from __future__ import annotations

from functools import lru_cache

import orjson

from apps.gateway.openapi.messages_schemas import MESSAGES_SCHEMAS
from apps.gateway.openapi.paths import error_responses, paths
from apps.gateway.openapi.responses_schemas import RESPONSES_SCHEMAS
from apps.gateway.openapi.schemas import SCHEMAS

_DESCRIPTION = """\
Switchyard's tenant API: OpenAI's chat completions, Responses API, embeddings, models, files and
batches, and Anthropic's Messages API, behind one tenant key.

Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}` (Anthropic's
`{"type": "error", "error": {"type", "message"}}` on `/v1/messages*`). A body field the API does
not define is refused with 400 `unknown_parameter`, as OpenAI and Anthropic refuse it. A method
a path does not list answers 405 with an `Allow` header."""


@lru_cache(maxsize=1)
def document() -> dict:
    """The OpenAPI document (built once)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Switchyard", "version": "1", "description": _DESCRIPTION},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths(),
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "A tenant API key (`sk-sy-...`)."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                           "description": "A tenant API key, as Anthropic's SDK sends it (`/v1/messages*` only)."},
            },
            "schemas": {**SCHEMAS, **MESSAGES_SCHEMAS, **RESPONSES_SCHEMAS},
            "responses": error_responses(),
        },
    }


@lru_cache(maxsize=1)
def document_json() -> bytes:
    """The document, serialized once."""
    return orjson.dumps(document())
