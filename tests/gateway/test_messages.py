"""The official ``anthropic`` SDK, unchanged, against a live Switchyard's ``/v1/messages``, with
the simulated upstream over real HTTP: once as a native Anthropic provider (bytes relayed), once
as an OpenAI-compatible one (translated)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from apps.simulator.answers import answer_words, prompt_tokens
from apps.simulator.messages import conversation
from tests.gateway.conftest import request_logs, wait_until

CHUNKS = 12  # the test simulator's words per answer
NATIVE = "claude-sim"  # served by the simulator's /v1/messages
TRANSLATED = "sim-mini"  # served by the simulator's /v1/chat/completions


def sdk(world, key: str | None = None, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=world.gateway.base, api_key=key or world.key_a, max_retries=0, **kwargs)


def async_sdk(world, key: str | None = None) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=world.gateway.base, api_key=key or world.key_a, max_retries=0)


def models_seen(world, *names: str) -> bool:
    client = openai.OpenAI(base_url=world.gateway.v1, api_key=world.key_a, max_retries=0)
    return set(names) <= {m.id for m in client.models.list()}


@pytest.fixture
def native(world):
    """A native Anthropic provider (the simulator's Messages API) with a cache-write price."""
    from apps.catalog.models import Model, Provider

    provider = Provider.objects.create(name="sim-anthropic", kind=Provider.Kind.ANTHROPIC,
                                       base_url=world.simulator.v1, credential="sk-ant-sim", timeout_seconds=5.0)
    world.models[NATIVE] = Model.objects.create(
        name=NATIVE, upstream_id="sim-mini", provider=provider, tier=Model.Tier.SIMPLE,
        input_price_per_million=Decimal("3"), cached_input_price_per_million=Decimal("0.30"),
        cache_write_price_per_million=Decimal("3.75"), output_price_per_million=Decimal("15"),
        max_output_tokens=4096)
    assert wait_until(lambda: models_seen(world, NATIVE))
    return world


def expected_text(model: str, messages: list) -> str:
    return "".join(answer_words(model, messages, CHUNKS))


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
def test_it_creates_a_message_through_the_sdk(native, model):
    world = native
    raw = sdk(world).messages.with_raw_response.create(
        model=model, max_tokens=256, messages=[{"role": "user", "content": "Say hello"}])
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    if model == NATIVE:
        assert message.content[0].text == expected_text("sim-mini", [{"role": "user", "content": "Say hello"}])
    else:
        assert message.content[0].text == expected_text("sim-mini", [{"role": "user", "content": "Say hello"}])
        assert message.id == "msg_" + raw.headers["x-switchyard-request-id"]
    assert message.usage.output_tokens == CHUNKS
    assert message.usage.input_tokens == prompt_tokens([{"role": "user", "content": "Say hello"}])
    assert raw.headers["x-switchyard-model"] == model
    assert raw.headers["x-switchyard-cache"] == "miss"
    assert raw.headers["request-id"] == raw.headers["x-switchyard-request-id"]
    (row,) = request_logs(1, tenant=world.tenant_a, endpoint="/v1/messages")
    assert row.model_used == model and row.status_code == 200 and not row.is_stream
    assert (row.input_tokens, row.output_tokens, row.tokens_estimated) == (message.usage.input_tokens, CHUNKS, False)
    assert row.cost == world.models[model].prices.get().cost(
        input_tokens=row.input_tokens, cached_tokens=0, output_tokens=row.output_tokens) > 0


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
def test_it_streams_text_deltas_and_final_usage(native, model):
    world = native
    prompt = [{"role": "user", "content": f"Stream to me ({model})"}]
    with sdk(world).messages.stream(model=model, max_tokens=256, messages=prompt) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [e.delta.text for e in events if e.type == "content_block_delta"]
    assert len(deltas) == CHUNKS
    assert "".join(deltas) == final.content[0].text == expected_text("sim-mini", prompt)
    assert events[0].type == "message_start"
    # The prompt's tokens are there from the start: the provider's count from a native provider;
    # from an OpenAI-compatible one (which counts only at the end) an estimate with the chat
    # format's per-message overhead, corrected by the final usage.
    start = events[0].message.usage.input_tokens
    if model == NATIVE:
        assert start == prompt_tokens(prompt)
    else:
        assert prompt_tokens(prompt) <= start <= prompt_tokens(prompt) + 8
    assert events[-1].type == "message_stop"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == CHUNKS
    assert final.usage.input_tokens == prompt_tokens(prompt)
    (row,) = request_logs(1, tenant=world.tenant_a, endpoint="/v1/messages", is_stream=True)
    assert (row.input_tokens, row.output_tokens, row.status_code) == (prompt_tokens(prompt), CHUNKS, 200)
    assert row.ttft_ms is not None and row.cost > 0


def test_it_works_with_the_async_sdk(native):
    world = native

    async def run():
        client = async_sdk(world)
        answers = await asyncio.gather(*[client.messages.create(
            model=TRANSLATED, max_tokens=64, messages=[{"role": "user", "content": f"Question {i}"}])
            for i in range(4)])
        async with client.messages.stream(model=NATIVE, max_tokens=64,
                                          messages=[{"role": "user", "content": "async stream"}]) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        counted = await client.messages.count_tokens(model=NATIVE, messages=[{"role": "user", "content": "a b c"}])
        await client.close()
        return answers, texts, final, counted

    answers, texts, final, counted = asyncio.run(run())
    assert len({a.content[0].text for a in answers}) == 4
    assert "".join(texts) == final.content[0].text
    assert final.usage.output_tokens == CHUNKS
    assert counted.input_tokens == prompt_tokens([{"role": "user", "content": "a b c"}])


def test_it_counts_tokens_natively_or_itself(native):
    from apps.core import tokens

    world = native
    messages = [{"role": "user", "content": "How many tokens are in this sentence, please?"}]
    client = sdk(world)
    assert client.messages.count_tokens(model=NATIVE, messages=messages, system="Be brief").input_tokens == \
        prompt_tokens([{"role": "system", "content": "Be brief"}, *messages])  # the provider's own count
    local = client.messages.count_tokens(model=TRANSLATED, messages=messages, system="Be brief").input_tokens
    assert local == tokens.messages_tokens([{"role": "system", "content": "Be brief"}, *messages])
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=messages)


def test_it_translates_a_multi_turn_conversation_with_a_system_prompt(native):
    world = native
    turns = [
        {"role": "user", "content": "What is a switchyard?"},
        {"role": "assistant", "content": [{"type": "text", "text": "A place where trains are sorted."}]},
        {"role": "user", "content": [{"type": "text", "text": "And a signal?"},
                                     {"type": "text", "text": "Answer briefly.",
                                      "cache_control": {"type": "ephemeral"}}]},
    ]
    message = sdk(world).messages.create(model=TRANSLATED, max_tokens=100, system="You are a railway guide.",
                                         messages=turns, stop_sequences=["STOP"], extra_body={"temperature": 0})
    # What the OpenAI-compatible upstream must have received, in order: the simulator's answer and
    # prompt count are functions of exactly these messages.
    chat = [
        {"role": "system", "content": "You are a railway guide."},
        {"role": "user", "content": "What is a switchyard?"},
        {"role": "assistant", "content": "A place where trains are sorted."},
        {"role": "user", "content": [{"type": "text", "text": "And a signal?"},
                                     {"type": "text", "text": "Answer briefly."}]},
    ]
    assert message.content[0].text == expected_text("sim-mini", chat)
    assert message.usage.input_tokens == prompt_tokens(chat)
    # The same conversation, natively: the system prompt arrives as Anthropic's own field.
    native_answer = sdk(world).messages.create(model=NATIVE, max_tokens=100, system="You are a railway guide.",
                                               messages=turns)
    assert native_answer.content[0].text == expected_text("sim-mini", conversation(
        {"system": "You are a railway guide.", "messages": turns}))


WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                            "required": ["city"]}}


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
def test_it_answers_tool_use_natively_or_translated(native, model):
    world = native
    client = sdk(world)
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    message = client.messages.create(model=model, max_tokens=200, messages=ask, tools=[WEATHER],
                                     tool_choice={"type": "tool", "name": "get_weather"})
    (block,) = message.content
    assert message.stop_reason == "tool_use"
    assert block.type == "tool_use" and block.name == "get_weather"
    assert isinstance(block.input["city"], str) and block.input["days"] == 42
    with client.messages.stream(model=model, max_tokens=200, messages=ask, tools=[WEATHER],
                                tool_choice={"type": "any"}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == block.input
    # The tool's result goes back as a tool_result block (a tool message upstream).
    follow = client.messages.create(model=model, max_tokens=200, tools=[WEATHER], messages=[
        *ask, {"role": "assistant", "content": [block.model_dump(exclude_none=True)]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "Sunny, 21 C"}]}])
    assert follow.stop_reason == "end_turn" and follow.content[0].text


def test_it_refuses_what_only_a_native_provider_takes_with_a_clear_400(native):
    world = native
    client = sdk(world)
    ask = [{"role": "user", "content": "Think first"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=TRANSLATED, max_tokens=2000, messages=ask,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "'thinking'" in caught.value.body["error"]["message"]
    assert "native Anthropic provider" in caught.value.body["error"]["message"]
    answer = client.messages.create(model=NATIVE, max_tokens=2000, messages=ask,
                                    thinking={"type": "enabled", "budget_tokens": 1024})
    assert answer.content[0].text


def test_it_raises_each_error_status_as_the_sdks_own_exception(native):
    from apps.catalog.models import Model, Provider
    from apps.tenants.models import ApiKey

    world = native
    client = sdk(world)
    ask = [{"role": "user", "content": "x"}]

    def error_of(exception, **kwargs):
        with pytest.raises(exception) as caught:
            (kwargs.pop("client", None) or client).messages.create(**{"model": TRANSLATED, "max_tokens": 10,
                                                                      "messages": ask, **kwargs})
        body = caught.value.body
        assert body["type"] == "error" and body["error"]["message"], body
        return caught.value, body["error"]["type"]

    assert error_of(anthropic.BadRequestError, extra_body={"temperature": 3})[1] == "invalid_request_error"
    assert error_of(anthropic.BadRequestError, messages=[])[1] == "invalid_request_error"
    assert error_of(anthropic.AuthenticationError,
                    client=sdk(world, key="sk-sy-notarealkey0000000000000000000"))[1] == "authentication_error"
    assert error_of(anthropic.NotFoundError, model="no-such-model")[1] == "not_found_error"
    big = [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]
    assert error_of(anthropic.ContentTooLargeError, messages=big)[1] == "request_too_large"
    world.simulator.fault(model="*", mode="status", status=429, retry_after=7, count=-1)
    error, kind = error_of(anthropic.RateLimitError)
    assert kind == "rate_limit_error" and error.response.headers["retry-after"] == "7"
    world.simulator.reset()
    world.simulator.fault(model="*", mode="status", status=500, count=-1)
    assert error_of(anthropic.OverloadedError)[1] == "overloaded_error"
    assert error_of(anthropic.OverloadedError, model=NATIVE)[1] == "overloaded_error"
    world.simulator.reset()
    impatient = Provider.objects.create(name="impatient", kind=Provider.Kind.ANTHROPIC,
                                        base_url=world.simulator.v1, timeout_seconds=0.3)
    Model.objects.create(name="claude-slow", upstream_id="sim-slow", provider=impatient, is_free=True)
    assert wait_until(lambda: models_seen(world, "claude-slow"))
    world.simulator.fault(model="sim-slow", mode="timeout", count=-1)
    assert error_of(anthropic.GatewayTimeoutError, model="claude-slow")[1] == "timeout_error"
    key = ApiKey.objects.get(tenant=world.tenant_b)
    key.allowed_models.set([world.models[TRANSLATED]])
    restricted = sdk(world, key=world.key_b)
    assert wait_until(lambda: _refused(restricted))
    assert error_of(anthropic.PermissionDeniedError, client=restricted, model=NATIVE)[1] == "permission_error"
    rows = request_logs(1, tenant=world.tenant_a, status_code=502)
    assert rows and rows[0].endpoint == "/v1/messages" and rows[0].error_code == "upstream_error"


def _refused(client) -> bool:
    try:
        client.messages.create(model=NATIVE, max_tokens=5, messages=[{"role": "user", "content": "x"}])
    except anthropic.PermissionDeniedError:
        return True
    return False


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
def test_it_ends_a_stream_cut_midway_with_an_error_event(native, model):
    world = native
    world.simulator.fault(model="sim-mini", mode="cut")
    with pytest.raises(anthropic.APIStatusError) as caught:
        with sdk(world).messages.stream(model=model, max_tokens=100,
                                        messages=[{"role": "user", "content": "cut me"}]) as stream:
            for _ in stream:
                pass
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "overloaded_error"
    (row,) = request_logs(1, tenant=world.tenant_a, endpoint="/v1/messages")
    assert row.status_code == 502 and row.error_code == "upstream_stream_cut"


def test_it_replays_a_cached_answer_as_a_valid_anthropic_stream(native):
    world = native
    client = sdk(world)
    ask = [{"role": "user", "content": "What is the boiling point of water?"}]
    raw = client.messages.with_raw_response.create(model=TRANSLATED, max_tokens=100, messages=ask)
    first = raw.parse()
    assert raw.headers["x-switchyard-cache"] == "miss"
    assert wait_until(lambda: _entries(world.tenant_a) == 1)
    with client.messages.stream(model=TRANSLATED, max_tokens=100, messages=ask) as stream:
        events = list(stream)
        final = stream.get_final_message()
        assert stream.response.headers["x-switchyard-cache"] == "hit-exact"
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    assert len([e for e in events if e.type == "content_block_delta"]) > 1  # replayed in pieces
    assert final.content[0].text == first.content[0].text
    assert final.usage.output_tokens == first.usage.output_tokens
    again = client.messages.with_raw_response.create(model=TRANSLATED, max_tokens=100, messages=ask)
    assert again.headers["x-switchyard-cache"] == "hit-exact"
    assert again.parse().content[0].text == first.content[0].text
    miss, hit, hit_json = request_logs(3, tenant=world.tenant_a, endpoint="/v1/messages")
    assert (miss.cache_outcome, hit.cache_outcome, hit_json.cache_outcome) == ("miss", "exact", "exact")
    assert hit.cost == 0 and hit.saved_cost == miss.cost > 0 and hit.is_stream
    assert world.simulator.stats()["requests"] == 1
    # A native answer is cached too, and the native stream of a new question is stored for replay.
    native_ask = [{"role": "user", "content": "Name a railway signal"}]
    with client.messages.stream(model=NATIVE, max_tokens=100, messages=native_ask) as stream:
        streamed = stream.get_final_message()
    assert wait_until(lambda: _entries(world.tenant_a) == 2)
    replayed = client.messages.with_raw_response.create(model=NATIVE, max_tokens=100, messages=native_ask)
    assert replayed.headers["x-switchyard-cache"] == "hit-exact"
    assert replayed.parse().content[0].text == streamed.content[0].text


def _entries(tenant) -> int:
    from apps.cache.models import CacheEntry

    return CacheEntry.objects.filter(tenant=tenant).count()


def test_it_never_serves_one_tenants_cached_message_to_another(native):
    from apps.cache.models import CacheEntry

    world = native
    ask = [{"role": "user", "content": "Explain how a hash map works"}]
    a = sdk(world).messages.with_raw_response.create(model=TRANSLATED, max_tokens=100, messages=ask)
    assert a.headers["x-switchyard-cache"] == "miss"
    assert wait_until(lambda: _entries(world.tenant_a) == 1)
    assert sdk(world).messages.with_raw_response.create(
        model=TRANSLATED, max_tokens=100, messages=ask).headers["x-switchyard-cache"] == "hit-exact"
    b = sdk(world, key=world.key_b).messages.with_raw_response.create(model=TRANSLATED, max_tokens=100, messages=ask)
    assert b.headers["x-switchyard-cache"] == "miss"
    with sdk(world, key=world.key_b).messages.stream(model=TRANSLATED, max_tokens=100, messages=ask) as stream:
        assert stream.response.headers["x-switchyard-cache"] in ("miss", "hit-exact")
        stream.get_final_message()
    assert CacheEntry.objects.get(tenant=world.tenant_a).hit_count <= 1
    rows_b = request_logs(2, tenant=world.tenant_b, endpoint="/v1/messages")
    assert rows_b[0].cache_outcome == "miss"
    assert all(r.api_key.tenant_id == world.tenant_b.id for r in rows_b)
    rows_a = request_logs(2, tenant=world.tenant_a, endpoint="/v1/messages")
    assert [r.cache_outcome for r in rows_a] == ["miss", "exact"]
    assert world.simulator.stats()["requests"] == 2  # one per tenant


def test_it_prices_prompt_cache_reads_and_writes(native):
    world = native
    client = sdk(world)
    system = [{"type": "text", "text": "A long and stable system prompt about freight trains and their yards.",
               "cache_control": {"type": "ephemeral"}}]
    ask = [{"role": "user", "content": "Which yard?"}]
    no_store = {"cache-control": "no-store"}  # Switchyard's own cache stays out of the way
    first = client.messages.create(model=NATIVE, max_tokens=50, system=system, messages=ask, extra_headers=no_store)
    second = client.messages.create(model=NATIVE, max_tokens=50, system=system, messages=ask, extra_headers=no_store)
    written = first.usage.cache_creation_input_tokens
    assert written > 0 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == written and second.usage.cache_creation_input_tokens == 0
    price = world.models[NATIVE].prices.get()
    one, two = request_logs(2, tenant=world.tenant_a, endpoint="/v1/messages")
    total = first.usage.input_tokens + written
    assert (one.input_tokens, one.cached_tokens, one.cache_write_tokens) == (total, 0, written)
    assert (two.input_tokens, two.cached_tokens, two.cache_write_tokens) == (total, written, 0)
    assert one.cost == (first.usage.input_tokens * Decimal("3") + written * Decimal("3.75")
                        + first.usage.output_tokens * Decimal("15")) / 1_000_000
    assert two.cost == price.cost(input_tokens=total, cached_tokens=written, output_tokens=two.output_tokens)
    assert one.cost > two.cost


def test_it_routes_auto_and_reaches_native_models_from_the_chat_door(native):
    world = native
    raw = sdk(world).messages.with_raw_response.create(
        model="auto", max_tokens=50, messages=[{"role": "user", "content": "What is Python?"}])
    assert raw.headers["x-switchyard-model"] == "sim-mini"
    (row,) = request_logs(1, tenant=world.tenant_a, endpoint="/v1/messages")
    assert row.requested_model == "auto" and row.routing_rule_id is not None
    chat = openai.OpenAI(base_url=world.gateway.v1, api_key=world.key_a, max_retries=0)
    answer = chat.chat.completions.create(model=NATIVE, messages=[{"role": "user", "content": "x"}])
    # Translated to the provider's Messages API (tests/gateway/test_chat_to_anthropic.py has the rest).
    assert answer.choices[0].message.content == expected_text("sim-mini", [{"role": "user", "content": "x"}])


def test_it_authenticates_by_bearer_and_applies_the_keys_limits(native):
    from apps.tenants.services import key_create

    world = native
    key = key_create(tenant=world.tenant_a, name="strict", rpm_limit=2).secret
    bearer = anthropic.Anthropic(base_url=world.gateway.base, auth_token=key, max_retries=0)
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left + 0.05)

    def send(n):
        return bearer.messages.with_raw_response.create(
            model=TRANSLATED, max_tokens=10, messages=[{"role": "user", "content": f"limit {n}"}])

    assert wait_until(lambda: "x-ratelimit-limit-requests" in send("warm").headers)
    with pytest.raises(anthropic.RateLimitError) as caught:
        for n in range(3):
            send(n)
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60
    plain = httpx.post(world.gateway.base + "/v1/messages", headers={"x-api-key": world.key_b},
                       json={"model": TRANSLATED, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert plain.status_code == 200 and plain.json()["type"] == "message"
    missing = httpx.post(world.gateway.base + "/v1/messages", json={"model": TRANSLATED})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
