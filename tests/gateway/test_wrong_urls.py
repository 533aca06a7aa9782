"""A client pointed at the wrong URL (the SDK's base URL without ``/v1``, with it twice, a path
that does not exist) or asking for a model that does not exist is told, in JSON, what it meant."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest


def _error(response: httpx.Response) -> dict:
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def test_it_tells_an_sdk_whose_base_url_lacks_v1_to_add_it(world):
    sdk = openai.OpenAI(base_url=world.gateway.base, api_key=world.key_a, max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "Hello"}])
    message = raised.value.body["message"]
    assert "did you mean /v1/chat/completions?" in message
    assert f"base URL to {world.gateway.v1} " in message


def test_it_tells_an_sdk_whose_base_url_repeats_v1_to_drop_one(world):
    sdk = openai.OpenAI(base_url=world.gateway.v1 + "/v1", api_key=world.key_a, max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.embeddings.create(model="sim-embed", input="Hello")
    message = raised.value.body["message"]
    assert "repeats /v1: did you mean /v1/embeddings?" in message
    assert f"base URL to {world.gateway.v1} " in message


def test_it_tells_the_anthropic_sdk_with_v1_in_its_base_url_to_drop_it(world):
    sdk = anthropic.Anthropic(base_url=world.gateway.v1, api_key=world.key_a, max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as raised:
        sdk.messages.create(model="sim-mini", max_tokens=20, messages=[{"role": "user", "content": "Hello"}])
    assert "did you mean /v1/messages?" in raised.value.body["error"]["message"]


@pytest.mark.parametrize(("method", "path", "hint"), [
    ("POST", "/chat/completions", "did you mean /v1/chat/completions?"),
    ("GET", "/models", "did you mean /v1/models?"),
    ("POST", "/v1/v1/chat/completions", "repeats /v1: did you mean /v1/chat/completions?"),
    ("GET", "/v1/files/", "Did you mean /v1/files, without the trailing slash?"),
    ("POST", "/v1/chat/completion", "GET /v1/openapi.json describes all of them"),
    ("GET", "/v1/models/sim-mini", "GET /v1/openapi.json describes all of them"),
    ("DELETE", "/v1", "Its endpoints include POST /v1/chat/completions"),
])
def test_it_answers_every_miss_under_v1_and_each_usual_mistake_in_json(world, method, path, hint):
    response = httpx.request(method, world.gateway.base + path, json={"model": "sim-mini"},
                             headers={"Authorization": f"Bearer {world.key_a}"}, timeout=30)
    error = _error(response)
    assert error["code"] == "unknown_url"
    assert error["message"].startswith(f"Invalid URL ({method} {path}).")
    assert hint in error["message"]


def test_it_still_serves_django_pages_and_html_404s_outside_the_api(world):
    assert httpx.get(world.gateway.base + "/v1/openapi.json", timeout=30).status_code == 200
    outside = httpx.get(world.gateway.base + "/no-such-page", timeout=30)
    assert outside.status_code == 404
    assert "application/json" not in outside.headers["content-type"]


def test_it_points_at_the_model_list_when_a_model_does_not_exist(world):
    sdk = openai.OpenAI(base_url=world.gateway.v1, api_key=world.key_a, max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "Hello"}])
    assert raised.value.body["code"] == "model_not_found"
    assert "The model 'gpt-9' does not exist. GET /v1/models lists the models this key may use" in \
        raised.value.body["message"]
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.embeddings.create(model="sim-mini", input="Hello")
    assert "cannot serve embedding requests. GET /v1/models" in raised.value.body["message"]
