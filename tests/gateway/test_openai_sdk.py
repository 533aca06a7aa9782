"""The official ``openai`` SDK, unchanged, against a live Switchyard."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from decimal import Decimal

import openai
import pytest

from tests.gateway.conftest import request_logs, wait_until


def client(world, key: str | None = None, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=world.gateway.v1, api_key=key or world.key_a, max_retries=0, **kwargs)


def test_it_answers_chat_through_the_sdk(world):
    raw = client(world).chat.completions.with_raw_response.create(
        model="sim-mini", messages=[{"role": "user", "content": "Say hello"}])
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage.prompt_tokens > 0
    assert raw.headers["x-switchyard-model"] == "sim-mini"
    assert raw.headers["x-switchyard-provider"] == "sim"
    assert raw.headers["x-switchyard-cache"] == "miss"
    assert raw.headers["x-switchyard-request-id"].startswith("req_")
    assert float(raw.headers["x-switchyard-overhead-ms"]) >= 0
    assert Decimal(raw.headers["x-switchyard-cost"]) > 0


def test_it_streams_through_the_sdk_with_usage_when_asked(world):
    sdk = client(world)
    plain = sdk.chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "Stream me"}])
    chunks = list(sdk.chat.completions.create(
        model="sim-mini", messages=[{"role": "user", "content": "Stream me"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_it_records_usage_of_a_stream_even_when_the_client_did_not_ask(world):
    sdk = client(world)
    chunks = list(sdk.chat.completions.create(
        model="sim-mini", messages=[{"role": "user", "content": "No usage for me"}], stream=True))
    assert chunks
    assert all(chunk.usage is None for chunk in chunks)
    (row,) = request_logs(1, tenant=world.tenant_a, is_stream=True)
    assert row.output_tokens > 0
    assert row.input_tokens > 0
    assert row.tokens_estimated is False
    assert row.cost == world.models["sim-mini"].prices.get().cost(
        input_tokens=row.input_tokens, cached_tokens=0, output_tokens=row.output_tokens)


def test_it_lists_models_with_prices(world):
    models = {m.id: m for m in client(world).models.list()}
    assert {"auto", "sim-mini", "sim-standard", "sim-premium", "sim-embed"} <= set(models)
    pricing = models["sim-mini"].model_extra["switchyard"]["pricing_per_million_tokens"]
    assert Decimal(pricing["input"]) == Decimal("0.15")
    assert Decimal(pricing["output"]) == Decimal("0.60")


def test_it_forwards_embeddings(world):
    result = client(world).embeddings.create(model="sim-embed", input=["one", "two"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) == 384
    (row,) = request_logs(1, tenant=world.tenant_a, endpoint="/v1/embeddings")
    assert row.model_used == "sim-embed"
    assert row.input_tokens > 0


def test_it_refuses_embeddings_over_openais_limits_before_going_upstream(world):
    """2,048 inputs a request, 300,000 tokens in all, each input within the model's context
    window: what is over is refused with OpenAI's error and never reaches the provider."""
    sdk = client(world)
    world.simulator.reset()
    refusals = {
        "array_above_max_length": ["word"] * 2049,
        "max_tokens_per_request": ["hello " * 8000] * 38,  # 8,001 tokens each, 304,038 in all
        "context_length_exceeded": ["fine", "hello " * 130_000],  # the model's window: 128,000
    }
    for code, inputs in refusals.items():
        error = _embed_refusal(sdk, inputs)
        assert error is not None, code
        assert error.status_code == 400
        assert error.body["code"] == code and error.body["param"] == "input", error.body
        assert error.body["type"] == "invalid_request_error" and error.body["message"]
    assert world.simulator.stats()["by_model"].get("sim-embed", 0) == 0, "a refused request went upstream"
    assert len(sdk.embeddings.create(model="sim-embed", input=["word"] * 2048).data) == 2048
    assert len(sdk.embeddings.create(model="sim-embed", input=["hello " * 8000] * 37).data) == 37
    assert world.simulator.stats()["by_model"]["sim-embed"] == 2
    rows = request_logs(3, tenant=world.tenant_a, endpoint="/v1/embeddings", timeout=30, status_code__gte=400)
    assert {row.error_code for row in rows} == set(refusals)


def _embed_refusal(sdk: openai.OpenAI, inputs: list) -> openai.BadRequestError | None:
    try:
        sdk.embeddings.create(model="sim-embed", input=inputs)
    except openai.BadRequestError as error:
        return error
    return None


def test_it_works_with_the_async_sdk(world):
    async def run():
        sdk = openai.AsyncOpenAI(base_url=world.gateway.v1, api_key=world.key_a, max_retries=0)
        answers = await asyncio.gather(*[
            sdk.chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": f"Question {i}"}])
            for i in range(5)
        ])
        stream = await sdk.chat.completions.create(
            model="sim-mini", messages=[{"role": "user", "content": "async stream"}], stream=True)
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        models = await sdk.models.list()
        embedding = await sdk.embeddings.create(model="sim-embed", input="hello")
        await sdk.close()
        return answers, pieces, models, embedding

    answers, pieces, models, embedding = asyncio.run(run())
    assert len({a.choices[0].message.content for a in answers}) == 5
    assert "".join(pieces)
    assert any(m.id == "sim-mini" for m in models.data)
    assert len(embedding.data[0].embedding) == 384


@pytest.mark.parametrize(
    ("kwargs", "exception", "status"),
    [
        ({"model": "sim-mini", "messages": []}, openai.BadRequestError, 400),
        ({"model": "sim-mini", "messages": [{"role": "user", "content": "x"}], "temperature": 7},
         openai.BadRequestError, 400),
        ({"model": "sim-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6},
         openai.BadRequestError, 400),
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, openai.NotFoundError, 404),
    ],
)
def test_it_raises_the_sdk_exception_for_bad_requests(world, kwargs, exception, status):
    with pytest.raises(exception) as caught:
        client(world).chat.completions.create(**kwargs)
    assert caught.value.status_code == status
    assert caught.value.body["message"]
    assert caught.value.body["type"]


def test_it_raises_authentication_error_for_a_bad_or_missing_key(world):
    with pytest.raises(openai.AuthenticationError):
        client(world, key="sk-sy-notarealkey0000000000000000000").models.list()
    request = urllib.request.Request(world.gateway.v1 + "/models")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 401
    assert json.loads(caught.value.read())["error"]["code"] == "invalid_api_key"


def test_it_raises_permission_denied_for_a_model_the_key_may_not_use(world):
    from apps.tenants.models import ApiKey

    key = ApiKey.objects.get(tenant=world.tenant_b)
    key.allowed_models.set([world.models["sim-mini"]])
    sdk = client(world, key=world.key_b)

    def restricted() -> bool:
        return [m.id for m in sdk.models.list() if m.id != "auto"] == ["sim-mini"]

    assert wait_until(restricted)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk.chat.completions.create(model="sim-premium", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 403
    assert sdk.chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "x"}]).choices


def test_a_tenants_allow_list_binds_every_key_and_narrows_a_keys_own(world):
    from apps.tenants.models import ApiKey

    world.tenant_b.allowed_models.set([world.models["sim-mini"], world.models["sim-premium"]])
    tenant_b, tenant_a = client(world, key=world.key_b), client(world)

    def listed(sdk) -> list[str]:
        return sorted(m.id for m in sdk.models.list() if m.id != "auto")

    assert wait_until(lambda: listed(tenant_b) == ["sim-mini", "sim-premium"])
    assert "sim-standard" in listed(tenant_a)  # the other tenant keeps every model
    with pytest.raises(openai.PermissionDeniedError):
        tenant_b.chat.completions.create(model="sim-standard", messages=[{"role": "user", "content": "x"}])
    assert tenant_b.chat.completions.create(model="sim-premium", messages=[{"role": "user", "content": "x"}]).choices
    # A key's own list narrows the tenant's; lists that share nothing leave the key no model at all.
    key = ApiKey.objects.get(tenant=world.tenant_b)
    key.allowed_models.set([world.models["sim-premium"], world.models["sim-standard"]])
    assert wait_until(lambda: listed(tenant_b) == ["sim-premium"])
    key.allowed_models.set([world.models["sim-standard"]])
    assert wait_until(lambda: listed(tenant_b) == [])
    with pytest.raises(openai.PermissionDeniedError):
        tenant_b.chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "x"}])


def test_it_answers_413_for_an_oversized_body(world):
    sdk = client(world)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "x" * (5 * 1024 * 1024)}])
    assert caught.value.status_code == 413


def test_it_answers_502_when_every_upstream_fails(world):
    world.simulator.fault(model="*", mode="status", status=500, count=-1)
    with pytest.raises(openai.InternalServerError) as caught:
        client(world).chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_error"
    (row,) = request_logs(1, tenant=world.tenant_a, status_code=502)
    assert row.error_code == "upstream_error"


def test_it_answers_504_when_every_upstream_times_out(world):
    from apps.catalog.models import Model, Provider

    impatient = Provider.objects.create(name="impatient", kind=Provider.Kind.SIMULATED,
                                        base_url=world.simulator.v1, timeout_seconds=0.3)
    Model.objects.create(name="sim-slow", upstream_id="sim-slow", provider=impatient, is_free=True)
    sdk = client(world, timeout=30)
    assert wait_until(lambda: any(m.id == "sim-slow" for m in sdk.models.list()))
    world.simulator.fault(model="sim-slow", mode="timeout", count=-1)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="sim-slow", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "upstream_timeout"


def test_it_answers_429_with_retry_after_when_every_upstream_rate_limits(world):
    world.simulator.fault(model="*", mode="status", status=429, retry_after=7, count=-1)
    with pytest.raises(openai.RateLimitError) as caught:
        client(world).chat.completions.create(model="auto", messages=[{"role": "user", "content": "What is Python?"}])
    assert caught.value.status_code == 429
    assert caught.value.body["code"] == "upstream_rate_limited"
    assert caught.value.response.headers["retry-after"] == "7"


def test_it_never_exceeds_a_providers_concurrency_limit(world):
    from apps.catalog.models import Model, Provider

    narrow = Provider.objects.create(name="narrow", kind=Provider.Kind.SIMULATED, base_url=world.simulator.v1,
                                     max_concurrency=2)
    Model.objects.create(name="sim-narrow", upstream_id="sim-narrow", provider=narrow, is_free=True)
    sdk = client(world)
    assert wait_until(lambda: any(m.id == "sim-narrow" for m in sdk.models.list()))
    world.simulator.reset()

    async def run():
        async_sdk = openai.AsyncOpenAI(base_url=world.gateway.v1, api_key=world.key_a, max_retries=0)
        answers = await asyncio.gather(*[async_sdk.chat.completions.create(
            model="sim-narrow", messages=[{"role": "user", "content": f"narrow {i}"}]) for i in range(8)])
        await async_sdk.close()
        return answers

    assert len(asyncio.run(run())) == 8
    stats = world.simulator.stats()
    assert stats["by_model"]["sim-narrow"] == 8
    assert stats["max_in_flight"] == 2


@pytest.mark.parametrize("stream", [False, True])
def test_it_counts_tokens_itself_when_the_upstream_omits_usage(world, stream):
    world.simulator.fault(model="sim-mini", mode="no_usage", count=-1)
    sdk = client(world)
    prompt = [{"role": "user", "content": f"Count my tokens please ({stream})"}]
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
            model="sim-mini", messages=prompt, stream=True) if c.choices)
    else:
        answer = sdk.chat.completions.create(model="sim-mini", messages=prompt)
        assert answer.usage is None
        text = answer.choices[0].message.content
    assert text
    (row,) = request_logs(1, tenant=world.tenant_a)
    assert row.tokens_estimated is True
    assert row.input_tokens > 0
    assert row.output_tokens > 0
    assert row.cost == world.models["sim-mini"].prices.get().cost(
        input_tokens=row.input_tokens, cached_tokens=0, output_tokens=row.output_tokens)
