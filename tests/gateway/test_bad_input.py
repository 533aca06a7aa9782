"""Bad input on the four body-taking hot doors (chat completions, embeddings, messages, responses) against a
live gateway: each is refused with a clear 4xx naming the parameter and OpenAI's code (in
Anthropic's shape on /v1/messages, the code in ``x-switchyard-error-code``), never a 5xx."""

from __future__ import annotations

import json

import anthropic.types.message_count_tokens_params as anthropic_count_params
import anthropic.types.message_create_params as anthropic_params
import httpx
import openai.types.chat.completion_create_params as chat_params
import openai.types.embedding_create_params as embedding_params
import openai.types.responses.response_create_params as response_params
import pytest
from django.conf import settings

from apps.core.errors import BadRequest
from apps.core.json_checks import MAX_NESTING
from apps.gateway.dialects.anthropic.translate import COUNT_TOKENS_FIELDS, MESSAGES_FIELDS, messages_body_translate
from apps.gateway.dialects.responses.translate import RESPONSES_FIELDS
from apps.gateway.validation import CHAT_FIELDS, EMBEDDINGS_FIELDS, chat_body_validate

PROMPT = [{"role": "user", "content": "Hi"}]
DOORS = {
    "chat": ("/v1/chat/completions", {"model": "sim-mini", "messages": PROMPT}),
    "embeddings": ("/v1/embeddings", {"model": "sim-embed", "input": "Hi"}),
    "messages": ("/v1/messages", {"model": "sim-mini", "max_tokens": 16, "messages": PROMPT}),
    "responses": ("/v1/responses", {"model": "sim-mini", "input": "Hi"}),
}
# A field of each door's body that holds any JSON, to nest inside.
NESTABLE = {"chat": "metadata", "embeddings": "input", "messages": "metadata", "responses": "metadata"}


def send(world, door: str, body: dict | bytes) -> httpx.Response:
    path, _ = DOORS[door]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if door == "messages":
        headers |= {"x-api-key": world.key_a, "anthropic-version": "2023-06-01"}
    else:
        headers["authorization"] = f"Bearer {world.key_a}"
    return httpx.post(world.gateway.base + path, content=raw, headers=headers, timeout=30)


def with_fields(door: str, **fields) -> dict:
    return {**DOORS[door][1], **fields}


def assert_refused(response: httpx.Response, door: str, *, status: int = 400, code: str,
                   param: str | None = None) -> str:
    """The refusal's status, shape, code and parameter; returns its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if door == "messages":
        assert body["type"] == "error"
        assert body["error"]["type"] == ("request_too_large" if status == 413 else "invalid_request_error")
        assert response.headers["x-switchyard-error-code"] == code
        message = body["error"]["message"]
        if param is not None:
            assert message.startswith(f"{param}:"), message
        return message
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param
    return error["message"]


def test_it_refuses_a_body_over_the_size_limit_with_413(world):
    for door in DOORS:
        body = with_fields(door, user="x" * (settings.GATEWAY_MAX_BODY_BYTES + 1))
        if door == "messages":
            body["metadata"] = {"user_id": body.pop("user")}
        assert_refused(send(world, door, body), door, status=413, code="payload_too_large")


def test_it_refuses_json_nested_a_hundred_thousand_levels_deep(world):
    for door in DOORS:
        message = assert_refused(send(world, door, b"[" * 100_000), door, code="nesting_too_deep")
        assert f"more than {MAX_NESTING} levels" in message


def test_it_refuses_valid_json_nested_deeper_than_the_limit(world):
    # 300 levels parse, but no JSON writer downstream takes them (orjson stops at 255).
    deep = json.loads("[" * 300 + "]" * 300)
    for door in DOORS:
        response = send(world, door, with_fields(door, **{NESTABLE[door]: deep}))
        assert_refused(response, door, code="nesting_too_deep")


def test_it_answers_a_body_nested_up_to_the_limit(world):
    # The body is level 1, metadata level 2, its lists levels 3 to MAX_NESTING.
    nested = json.loads("[" * (MAX_NESTING - 2) + '"x"' + "]" * (MAX_NESTING - 2))
    for door in ("chat", "messages", "responses"):
        response = send(world, door, with_fields(door, metadata={"note": nested}))
        assert response.status_code == 200, response.text
        deeper = send(world, door, with_fields(door, metadata={"note": [nested]}))
        assert_refused(deeper, door, code="nesting_too_deep")


def test_it_refuses_a_body_that_is_not_utf8(world):
    for door in DOORS:
        raw = json.dumps(with_fields(door, user="USER")).encode().replace(b"USER", b"caf\xe9 \xff\xfe")
        message = assert_refused(send(world, door, raw), door, code="invalid_json")
        assert "UTF-8" in message


def test_it_refuses_huge_integers(world):
    for door in DOORS:
        name = {"embeddings": "dimensions", "responses": "max_output_tokens"}.get(door, "max_tokens")
        for value in (10**30, 2**63):
            response = send(world, door, with_fields(door, **{name: value}))
            assert_refused(response, door, code="integer_above_max_value", param=name)


NEGATIVE = [
    ("chat", "max_tokens", -1, "integer_below_min_value"),
    ("chat", "max_completion_tokens", 0, "integer_below_min_value"),
    ("chat", "temperature", -0.5, "decimal_below_min_value"),
    ("chat", "n", -1, "integer_below_min_value"),
    ("chat", "top_logprobs", -1, "integer_below_min_value"),
    ("chat", "presence_penalty", -2.5, "decimal_below_min_value"),
    ("embeddings", "dimensions", -1, "integer_below_min_value"),
    ("messages", "max_tokens", -1, "integer_below_min_value"),
    ("messages", "temperature", -1, "decimal_below_min_value"),
    ("messages", "top_k", -1, "integer_below_min_value"),
    ("responses", "max_output_tokens", 0, "integer_below_min_value"),
    ("responses", "temperature", -1, "decimal_below_min_value"),
    ("responses", "top_p", -0.1, "decimal_below_min_value"),
]


def test_it_refuses_negative_numbers(world):
    for door, name, value, code in NEGATIVE:
        assert_refused(send(world, door, with_fields(door, **{name: value})), door, code=code, param=name)


WRONG_TYPES = [
    ("chat", "messages", "Hi", "invalid_type"),
    ("chat", "messages", [], "empty_array"),
    ("chat", "model", 5, "invalid_type"),
    ("chat", "stream", "yes", "invalid_type"),
    ("chat", "max_tokens", 2.5, "invalid_type"),
    ("chat", "temperature", "hot", "invalid_type"),
    ("chat", "user", 42, "invalid_type"),
    ("chat", "stop", [1, 2], "invalid_type"),
    ("chat", "tools", {"type": "function"}, "invalid_type"),
    ("chat", "metadata", ["tags"], "invalid_type"),
    ("embeddings", "input", 5, "invalid_type"),
    ("embeddings", "input", "", "invalid_value"),
    ("embeddings", "model", 5, "invalid_type"),
    ("embeddings", "encoding_format", True, "invalid_type"),
    ("messages", "messages", "Hi", "invalid_type"),
    ("messages", "model", 5, "invalid_type"),
    ("messages", "stream", "yes", "invalid_type"),
    ("messages", "max_tokens", "16", "invalid_type"),
    ("responses", "input", 5, "invalid_type"),
    ("responses", "model", 5, "invalid_type"),
    ("responses", "stream", "yes", "invalid_type"),
    ("responses", "store", "no", "invalid_type"),
    ("responses", "tools", {"type": "function"}, "invalid_type"),
    ("responses", "previous_response_id", 5, "invalid_type"),
    ("responses", "instructions", ["Be brief."], "invalid_type"),
]


def test_it_refuses_fields_of_the_wrong_type(world):
    for door, name, value, code in WRONG_TYPES:
        assert_refused(send(world, door, with_fields(door, **{name: value})), door, code=code, param=name)


def test_it_refuses_a_role_that_is_not_a_string(world):
    for door, param in (("chat", "messages[0].role"), ("messages", "messages.0.role")):
        for role in ({}, ["user"], 5):
            body = with_fields(door, messages=[{"role": role, "content": "Hi"}])
            assert_refused(send(world, door, body), door, code="invalid_value", param=param)
    count = httpx.post(world.gateway.v1 + "/messages/count_tokens", headers={"x-api-key": world.key_a},
                       json={"model": "sim-mini", "messages": [{"role": {}, "content": "Hi"}]}, timeout=30)
    assert_refused(count, "messages", code="invalid_value", param="messages.0.role")


def test_it_refuses_malformed_content_parts(world):
    for part, param, code in (
        (5, "messages[0].content[0]", "invalid_type"),
        ({"type": "text", "text": 5}, "messages[0].content[0].text", "invalid_type"),
        ({"text": "Hi"}, "messages[0].content[0].type", "missing_required_parameter"),
    ):
        body = with_fields("chat", messages=[{"role": "user", "content": [part]}])
        assert_refused(send(world, "chat", body), "chat", code=code, param=param)


def test_it_refuses_missing_required_fields(world):
    for door, (_path, base) in DOORS.items():
        for name in base:
            body = with_fields(door)
            del body[name]
            assert_refused(send(world, door, body), door, code="missing_required_parameter", param=name)


def test_it_refuses_unknown_top_level_fields_as_openai_does(world):
    for door in DOORS:
        message = assert_refused(send(world, door, with_fields(door, max_token=5)), door, code="unknown_parameter",
                                 param="max_token")
        if door == "messages":
            assert message == "max_token: Extra inputs are not permitted"
        else:
            assert message == "Unrecognized request argument supplied: max_token"


def test_it_answers_a_request_using_fields_of_the_allow_list(world):
    body = with_fields("chat", seed=7, user="u-1", store=False, metadata={"tags": ["docs"]}, n=1, logprobs=False,
                       parallel_tool_calls=True, stop=["\n\n"], service_tier="auto", prompt_cache_key="k",
                       safety_identifier="s", response_format={"type": "text"}, frequency_penalty=0,
                       presence_penalty=0, top_p=1, temperature=0, max_completion_tokens=64, reasoning_effort=None)
    response = send(world, "chat", body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    response = send(world, "embeddings", with_fields("embeddings", encoding_format="float", user="u-1"))
    assert response.status_code == 200, response.text


def _fields_of(*typed_dicts) -> set[str]:
    return {name for typed in typed_dicts for name in typed.__required_keys__ | typed.__optional_keys__}


def test_it_allows_every_field_the_official_sdks_send():
    # The SDKs are the reference for "every field the API takes today": a field they add and the
    # allow-lists lack would be refused, so this fails until the lists catch up.
    assert _fields_of(chat_params.CompletionCreateParamsBase) <= set(CHAT_FIELDS)
    assert _fields_of(chat_params.CompletionCreateParamsStreaming) <= set(CHAT_FIELDS)
    assert _fields_of(embedding_params.EmbeddingCreateParams) == set(EMBEDDINGS_FIELDS)
    # user_profile_id and workspace_id travel as headers, not in the body.
    headers_only = {"user_profile_id", "workspace_id"}
    assert _fields_of(anthropic_params.MessageCreateParamsStreaming) - headers_only <= MESSAGES_FIELDS
    assert _fields_of(anthropic_count_params.MessageCountTokensParams) - headers_only <= COUNT_TOKENS_FIELDS
    assert {"temperature", "top_p", "top_k"} <= MESSAGES_FIELDS  # older SDKs send them; Anthropic takes them
    assert _fields_of(response_params.ResponseCreateParamsStreaming) == set(RESPONSES_FIELDS)


def test_it_checks_each_allowed_chat_field_for_its_json_type():
    for name, types in CHAT_FIELDS.items():
        if types is None:
            continue
        wrong = 5 if str not in types or list in types else [5]
        with pytest.raises(BadRequest) as caught:
            chat_body_validate({"model": "m", "messages": PROMPT, name: wrong})
        assert (caught.value.code, caught.value.param) == ("invalid_type", name)
        chat_body_validate({"model": "m", "messages": PROMPT, name: None})  # null means "not set"


def test_it_refuses_unknown_count_tokens_fields_the_messages_door_takes():
    with pytest.raises(BadRequest) as caught:
        messages_body_translate({"model": "m", "messages": PROMPT, "max_tokens": 5}, count_only=True)
    assert (caught.value.code, caught.value.param) == ("unknown_parameter", "max_tokens")


def test_it_answers_405_with_the_methods_a_path_takes(world):
    auth = {"authorization": f"Bearer {world.key_a}"}
    for method, path, allowed in (
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/cache/stats", "GET"),
        ("GET", "/v1/cache/clear", "POST"),
        ("GET", "/v1/messages", "POST"),
        ("GET", "/v1/responses", "POST"),
        ("POST", "/v1/responses/resp_x", "GET, DELETE"),
        ("GET", "/v1/responses/resp_x/cancel", "POST"),
        ("DELETE", "/v1/responses/resp_x/input_items", "GET"),
        ("PATCH", "/v1/files", "GET, POST"),
        ("POST", "/v1/files/file-x", "GET, DELETE"),
        ("GET", "/v1/batches/batch_x/cancel", "POST"),
        ("TRACE", "/v1/jobs/map-reduce", "POST"),
        ("POST", "/v1/openapi.json", "GET, HEAD"),
        ("GET", "/v1/complete", "POST, OPTIONS"),
        ("POST", "/v1/usage", "GET, HEAD, OPTIONS"),
        ("DELETE", "/v1/usage/export", "GET, HEAD, OPTIONS"),
    ):
        response = httpx.request(method, world.gateway.base + path, headers=auth, timeout=10)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == allowed, (method, path)
        body = response.json()
        error = body["error"]
        if path.startswith("/v1/messages"):
            assert (body["type"], error["type"]) == ("error", "invalid_request_error")
        else:
            assert (error["type"], error["code"]) == ("invalid_request_error", "method_not_allowed")
        assert allowed in error["message"]


def test_it_refuses_a_bad_body_on_the_simple_endpoint_in_openai_shape(world):
    url, auth = world.gateway.v1 + "/complete", {"authorization": f"Bearer {world.key_a}"}
    for raw, content_type, status, code in (
        (b"{bad", "application/json", 400, "invalid_json"),
        (b"[" * 100_000, "application/json", 400, "nesting_too_deep"),
        (b"prompt=hi", "application/x-www-form-urlencoded", 400, "invalid_json"),
        (b"[]", "application/json", 400, "invalid_json"),
        (b'{"prompt": "' + b"x" * (3 * 1024 * 1024) + b'"}', "application/json", 413, "payload_too_large"),
    ):
        response = httpx.post(url, content=raw, headers={**auth, "content-type": content_type}, timeout=30)
        assert_refused(response, "complete", status=status, code=code)
    answer = httpx.post(url, json={"prompt": "Hi", "model": "sim-mini"}, headers={**auth, "accept": "application/xml"},
                        timeout=30)
    assert answer.status_code == 200 and answer.json()["content"]


def test_it_passes_a_providers_own_refusal_on_from_the_simple_endpoint(world):
    # A provider's 4xx (other than 408, 409, 429) is the client's: it comes back as it was sent.
    world.simulator.fault(model="*", mode="status", status=422, count=-1)
    for stream in (False, True):
        response = httpx.post(world.gateway.v1 + "/complete", headers={"authorization": f"Bearer {world.key_a}"},
                              json={"prompt": "Hi", "model": "sim-mini", "stream": stream, "use_cache": False},
                              timeout=30)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "simulated_fault"


def test_it_cuts_a_long_unknown_field_name_short_in_the_refusal():
    for validate in (chat_body_validate, lambda body: messages_body_translate({**body, "max_tokens": 5})):
        with pytest.raises(BadRequest) as caught:
            validate({"model": "m", "messages": PROMPT, "x" * 100_000: 1})
        assert (caught.value.code, caught.value.param) == ("unknown_parameter", "x" * 200)
        assert len(caught.value.message) < 300


@pytest.mark.parametrize("door", ["chat", "messages"])
def test_it_answers_a_prompt_that_spells_a_special_token_as_text(world, door):
    # A prompt may hold "<|endoftext|>" as text: the counts that estimate its tokens (a translated
    # stream's message_start, limits) take it as text, never as a reason to fail.
    prompt = [{"role": "user", "content": "What does <|endoftext|> mean in <|im_start|> a prompt?"}]
    response = send(world, door, with_fields(door, messages=prompt, stream=True))
    assert response.status_code == 200, response.text
    assert response.text.rstrip().endswith("data: [DONE]" if door == "chat" else 'data: {"type":"message_stop"}')
