"""The OpenAPI document held against a live gateway: schemathesis generates requests for every
operation of ``GET /v1/openapi.json`` (its examples, the boundaries and wrong types of every
field, methods the path does not take, then random valid and invalid bodies and parameters) and
checks that no answer is a 5xx, that each answer's status, content type and body are the ones
the document gives, that a method a path does not take gets 405 with ``Allow``, and that an
operation answering 2xx with the key refuses the same request without one or with a wrong one.

Nothing is excluded: streams are generated too (``stream: true`` in a body), and their events
are checked against the document's event schemas. The gateway answers from the simulated
upstream, as the ``world`` fixture's first tenant; the seed is fixed, so a run repeats. The
document is loaded from the code (schemathesis builds one test per operation at collection,
before any server runs); the first test checks that the served copy is the same.
"""

from __future__ import annotations

import re

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from apps.gateway.dialects.anthropic.translate import COUNT_TOKENS_FIELDS, MESSAGES_FIELDS
from apps.gateway.dialects.responses.translate import RESPONSES_FIELDS
from apps.gateway.openapi import document
from apps.gateway.validation import CHAT_FIELDS, EMBEDDINGS_FIELDS

# Enough to reach every field's boundaries and a few random bodies per operation while keeping
# the whole run near a minute and a half on two cores.
MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          unsupported_method, ignored_auth]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110)
_FRAMING = frozenset({"content-length", "transfer-encoding", "host", "connection"})

schema = schemathesis.openapi.from_dict(document(), config=schemathesis.Config.from_dict({
    "seed": 20261123,
    "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
}))


def test_it_serves_the_document_without_a_key(world):
    response = httpx.get(world.gateway.v1 + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    served = response.json()
    assert served == document()
    schemathesis.openapi.from_dict(served).validate()  # against OpenAPI 3.1's own schema


def test_it_documents_exactly_the_fields_the_validators_take():
    schemas = document()["components"]["schemas"]
    for name, fields in (("ChatCompletionRequest", CHAT_FIELDS), ("EmbeddingsRequest", EMBEDDINGS_FIELDS),
                         ("MessagesRequest", MESSAGES_FIELDS), ("CountTokensRequest", COUNT_TOKENS_FIELDS),
                         ("ResponsesRequest", RESPONSES_FIELDS)):
        assert set(schemas[name]["properties"]) == set(fields), name
        assert schemas[name]["additionalProperties"] is False, name


def test_it_documents_every_tenant_route():
    from django.urls import get_resolver

    from apps.gateway.doors.http import HOT_PATHS

    documented = {path.replace("{", "<").replace("}", ">") for path in document()["paths"]}
    django_routes = {"/" + str(p.pattern) for p in get_resolver().url_patterns if str(p.pattern).startswith("v1/")}
    django_routes |= {"/v1/" + str(p.pattern) for p in get_resolver("apps.batches.api.urls").url_patterns}
    django_routes = {route.replace("<str:", "<") for route in django_routes} - {"/v1/"}
    # /v1/stream is the playground's (a staff session, not a tenant key); /metrics is operators'.
    expected = (HOT_PATHS - {"/metrics"}) | django_routes - {"/v1/stream"}
    assert documented == expected


@schema.parametrize()
# The world (tenants, keys, catalog) is set up once per operation and shared by its examples.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_it_answers_every_operation_as_its_openapi_document_says(case, world):
    # The bearer key authenticates every operation (the Messages door takes it as well as
    # x-api-key); the document's security schemes say both.
    if case.headers:
        # Generated headers may be ones that frame the message itself (an empty Content-Length):
        # the HTTP server refuses such a request before the gateway sees it, which tells nothing
        # of the API. The client sets framing headers; the rest are sent as generated.
        case.headers = {name: value for name, value in case.headers.items()
                        if _TOKEN.fullmatch(name) and name.lower() not in _FRAMING}
    case.call_and_validate(base_url=world.gateway.base, headers={"Authorization": f"Bearer {world.key_a}"},
                           checks=CHECKS, timeout=30)
