"""What a request needs of a model, read from its chat form, and which provider refusals say a
prompt is too long for the model's context window."""

from __future__ import annotations

import orjson
import pytest

from apps.core import tokens
from apps.gateway.pipeline.fit import request_needs
from apps.providers.transport import UpstreamClientError

USER = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(("body", "needs"), [
    ({"messages": USER}, {}),
    ({"messages": USER, "tools": [], "response_format": {"type": "json_object"}, "reasoning_effort": None}, {}),
    ({"messages": USER, "tools": [{"type": "function"}]}, {"tools": "tools"}),
    ({"messages": USER, "functions": [{"name": "f"}]}, {"tools": "functions"}),
    ({"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:..."}}]}]},
     {"vision": "messages[1].content[1]"}),
    ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     {"json_schema": "response_format"}),
    ({"messages": USER, "reasoning_effort": "minimal"}, {"reasoning": "reasoning_effort"}),
    # An Anthropic request's own parameters, kept aside by its translation to the chat form.
    ({"messages": USER, "native_parameters": {"thinking": {"type": "enabled", "budget_tokens": 1024}}},
     {"reasoning": "thinking"}),
    ({"messages": USER, "native_parameters": {"thinking": {"type": "disabled"}}}, {}),
    ({"messages": USER, "native_parameters": {"output_format": {"type": "json_schema", "schema": {}}}},
     {"json_schema": "output_format"}),
    ({"messages": USER, "native_parameters": {"output_config": {"format": {"type": "json_schema"}}}},
     {"json_schema": "output_config.format"}),
    ({"messages": USER, "native_parameters": {"output_config": "odd", "thinking": "odd"}}, {}),
])
def test_it_reads_what_a_request_needs(body, needs):
    assert request_needs(body) == needs


def test_the_cheap_bound_is_never_below_the_count():
    for text in ("", "hello", "hello " * 500, "naïve café 東京 " * 40, "x" * 70_000, "🙂" * 300):
        messages = [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
        assert tokens.messages_tokens_most(tokens.messages_text(messages), 2) >= tokens.messages_tokens(messages)


def _refusal(status: int, body: dict, code: str | None = None) -> UpstreamClientError:
    return UpstreamClientError(status, orjson.dumps(body), "application/json", code=code)


@pytest.mark.parametrize(("refusal", "overflow"), [
    (_refusal(400, {"error": {"message": "This model's maximum context length is 128000 tokens.",
                              "code": "context_length_exceeded"}}), True),
    (_refusal(400, {"type": "error", "error": {
        "type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}}), True),
    (_refusal(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": (
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).")}}), True),
    (_refusal(400, {"message": "Input is too long for requested model."}, code="ValidationException"), True),
    (_refusal(400, {"error": {"message": "Invalid value for 'temperature'.", "code": "invalid_value"}}), False),
    (_refusal(400, {"error": {"message": "The prompt was filtered.", "code": "content_filter"}}), False),
    (_refusal(413, {"error": {"message": "prompt is too long", "type": "request_too_large"}}), False),
    (_refusal(422, {"error": {"message": "context length", "code": "context_length_exceeded"}}), False),
])
def test_it_knows_a_providers_context_length_refusal(refusal, overflow):
    assert refusal.context_overflow is overflow
