"""Azure OpenAI and Gemini providers behind a live Switchyard, over real HTTP to the simulated
upstream's Azure and Gemini endpoints, with the official ``openai`` SDK (and the ``anthropic``
one on ``/v1/messages``) on the client side."""

from __future__ import annotations

import json
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from tests.gateway.conftest import http_json, request_logs, wait_until

NO_STORE = {"Cache-Control": "no-store"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


class Clouds:
    """Providers of the new kinds, all pointing at the simulator, and a model on each."""

    def __init__(self, world) -> None:
        from apps.catalog.models import Model, Provider
        from apps.routing.models import RoutingFallback, RoutingRule

        base = world.simulator.base
        self.world = world

        def provider(name: str, kind: str, url: str, credential: str, api_version: str = "") -> Provider:
            return Provider.objects.create(name=name, kind=kind, base_url=url, credential=credential,
                                           api_version=api_version, timeout_seconds=5.0)

        def model(name: str, upstream_id: str, on: Provider, cached: str = "0.25", written: str | None = None) -> Model:
            return Model.objects.create(name=name, upstream_id=upstream_id, provider=on,
                                        input_price_per_million=Decimal("1.00"),
                                        cached_input_price_per_million=Decimal(cached),
                                        cache_write_price_per_million=None if written is None else Decimal(written),
                                        output_price_per_million=Decimal("4.00"), max_output_tokens=4096)

        dated = provider("azure-dated", "azure", base, "az-key", "2024-10-21")
        v1 = provider("azure-v1", "azure", base, "az-key")
        gemini = provider("gemini", "gemini", base + "/v1beta", "g-key")
        refused = provider("gemini-bad-key", "gemini", base + "/v1beta", "invalid-key")
        bedrock = provider("bedrock", "bedrock", base, "AKIDSIMULATED:simulated-secret")
        wrong_secret = provider("bedrock-wrong-secret", "bedrock", base, "AKIDSIMULATED:not-the-secret")
        self.models = {
            "az-dated": model("az-dated", "sim-deployment", dated),
            "az-v1": model("az-v1", "sim-v1-model", v1),
            "gem": model("gem", "gemini-sim-flash", gemini),
            "gem-bad-key": model("gem-bad-key", "gemini-sim-refused", refused),
            "claude-bedrock": model("claude-bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0", bedrock,
                                    written="1.25"),
            "bedrock-wrong-secret": model("bedrock-wrong-secret", "amazon.nova-lite-v1:0", wrong_secret),
        }
        rule = RoutingRule.objects.create(name="cloud", match_model="cloud", target=self.models["az-dated"],
                                          priority=5)
        RoutingFallback.objects.create(rule=rule, model=self.models["gem"], position=0)
        # created last: a catalog the gateway shows with them holds everything above
        embedding = (("az-embed", "sim-embed-deployment", dated), ("gem-embed", "text-embedding", gemini))
        for name, upstream, on in embedding:
            self.models[name] = Model.objects.create(name=name, upstream_id=upstream, provider=on,
                                                     mode=Model.Mode.EMBEDDING, input_price_per_million=Decimal("0.02"))

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.world.gateway.v1, api_key=key or self.world.key_a, max_retries=0)

    def price(self, name: str):
        return self.models[name].prices.get()


@pytest.fixture
def clouds(world):
    clouds = Clouds(world)

    def sees_them() -> bool:
        status, body = http_json("GET", world.gateway.v1 + "/models",
                                 headers={"Authorization": f"Bearer {world.key_a}"})
        expected = {"az-dated", "az-v1", "gem", "gem-bad-key", "claude-bedrock", "az-embed", "gem-embed"}
        return status == 200 and expected <= {m["id"] for m in body["data"]}

    assert wait_until(sees_them), "the gateway never saw the new providers"
    return clouds


def _ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --- Azure OpenAI ---------------------------------------------------------------------------------

def test_it_answers_through_azures_deployment_and_v1_urls(clouds):
    sdk = clouds.client()
    for name, upstream in (("az-dated", "sim-deployment"), ("az-v1", "sim-v1-model")):
        raw = sdk.chat.completions.with_raw_response.create(model=name, messages=_ask("Hello Azure"))
        completion = raw.parse()
        assert completion.choices[0].message.content
        assert raw.headers["x-switchyard-model"] == name
        assert completion.model == upstream  # the deployment named in the URL answered
    assert clouds.world.simulator.stats()["by_model"] == {"sim-deployment": 1, "sim-v1-model": 1}
    rows = request_logs(2, tenant=clouds.world.tenant_a)
    for row in rows:
        assert row.status_code == 200 and row.tokens_estimated is False
        assert row.cost == clouds.price(row.model_used).cost(
            input_tokens=row.input_tokens, cached_tokens=row.cached_tokens, output_tokens=row.output_tokens)
        assert row.cost > 0


def test_it_streams_from_azure_with_usage(clouds):
    sdk = clouds.client()
    plain = sdk.chat.completions.create(model="az-dated", messages=_ask("Stream from Azure"), extra_headers=NO_STORE)
    chunks = list(sdk.chat.completions.create(model="az-dated", messages=_ask("Stream from Azure"), stream=True,
                                              stream_options={"include_usage": True}, extra_headers=NO_STORE))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    row = request_logs(1, tenant=clouds.world.tenant_a, is_stream=True)[0]
    assert (row.input_tokens, row.output_tokens) == (plain.usage.prompt_tokens, plain.usage.completion_tokens)
    assert row.cost == clouds.price("az-dated").cost(input_tokens=row.input_tokens, cached_tokens=0,
                                                     output_tokens=row.output_tokens)


def test_azures_content_filter_refusal_is_passed_on_not_retried_and_billed_nothing(clouds):
    clouds.world.simulator.fault(model="sim-deployment", mode="content_filter")
    with pytest.raises(openai.BadRequestError) as refused:
        clouds.client().chat.completions.create(model="az-dated", messages=_ask("Something the filter stops"))
    assert refused.value.status_code == 400
    assert refused.value.code == "content_filter"
    assert refused.value.body["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert clouds.world.simulator.stats()["by_model"] == {"sim-deployment": 1}
    (row,) = request_logs(1, tenant=clouds.world.tenant_a, status_code=400)
    assert row.error_code == "content_filter" and row.cost == 0


def test_an_azure_429_is_retried_then_falls_back(clouds):
    clouds.world.simulator.fault(model="sim-deployment", mode="status", status=429, retry_after=0.01, count=-1)
    raw = clouds.client().chat.completions.with_raw_response.create(model="cloud", messages=_ask("Fall back please"))
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-switchyard-model"] == "gem"
    assert clouds.world.simulator.stats()["by_model"] == {"sim-deployment": 2, "gemini-sim-flash": 1}
    (row,) = request_logs(1, tenant=clouds.world.tenant_a)
    assert row.model_used == "gem" and row.upstream_failures.count("status 429") == 2


def test_a_wrong_azure_key_fails_over_as_the_providers_problem(clouds):
    from apps.catalog.models import Provider

    provider = Provider.objects.get(name="azure-dated")
    provider.credential = "invalid-key"  # Azure answers 401: our credential, not the client's request
    provider.save()
    assert wait_until(lambda: _model_of(clouds, "cloud") == "gem")
    row = request_logs(1, tenant=clouds.world.tenant_a, model_used="gem")[-1]
    assert row.status_code == 200 and "refused credentials (401)" in row.upstream_failures


def test_azure_embeddings_go_to_the_deployment_and_gemini_ones_are_refused(clouds):
    vectors = clouds.client().embeddings.create(model="az-embed", input=["one", "two"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384
    assert clouds.world.simulator.stats()["by_model"] == {"sim-embed-deployment": 1}
    with pytest.raises(openai.BadRequestError) as refused:
        clouds.client().embeddings.create(model="gem-embed", input="one")
    assert "gemini provider" in refused.value.message
    rows = request_logs(2, tenant=clouds.world.tenant_a, endpoint="/v1/embeddings")
    assert [r.status_code for r in rows] == [200, 400] and rows[0].cost > 0


def _model_of(clouds, requested: str) -> str:
    raw = clouds.client().chat.completions.with_raw_response.create(model=requested, messages=_ask("Who answers?"),
                                                                    extra_headers=NO_STORE)
    return raw.headers["x-switchyard-model"]


# --- Gemini -----------------------------------------------------------------------------------------

SYSTEM = "You are a careful assistant who answers in plain words for the switchyard tests."


def test_it_answers_from_gemini_with_cached_and_reasoning_tokens_priced(clouds):
    sdk = clouds.client()
    first = sdk.chat.completions.create(
        model="gem", messages=[{"role": "system", "content": SYSTEM}, *_ask("First question")],
        reasoning_effort="low", extra_headers=NO_STORE)
    second = sdk.chat.completions.create(
        model="gem", messages=[{"role": "system", "content": SYSTEM}, *_ask("Second question")],
        reasoning_effort="low", extra_headers=NO_STORE)
    assert first.choices[0].message.content and first.choices[0].finish_reason == "stop"
    words = 12  # the test simulator's answer length
    for answer in (first, second):
        assert answer.usage.completion_tokens_details.reasoning_tokens == 2 * words
        assert answer.usage.completion_tokens == words + 2 * words
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens  # the system instruction, cached implicitly
    rows = request_logs(2, tenant=clouds.world.tenant_a)
    assert [r.cached_tokens for r in rows] == [0, cached]
    price = clouds.price("gem")
    for row, answer in zip(rows, (first, second), strict=True):
        assert (row.input_tokens, row.output_tokens) == (answer.usage.prompt_tokens, answer.usage.completion_tokens)
        assert row.cost == price.cost(input_tokens=row.input_tokens, cached_tokens=row.cached_tokens,
                                      output_tokens=row.output_tokens)
    assert rows[1].cost == (Decimal(second.usage.prompt_tokens - cached) * Decimal("1.00")
                            + Decimal(cached) * Decimal("0.25")
                            + Decimal(second.usage.completion_tokens) * Decimal("4.00")) / Decimal(1_000_000)


def test_it_streams_from_gemini_as_openai_chunks(clouds):
    sdk = clouds.client()
    plain = sdk.chat.completions.create(model="gem", messages=_ask("Stream from Gemini"), extra_headers=NO_STORE)
    chunks = list(sdk.chat.completions.create(model="gem", messages=_ask("Stream from Gemini"), stream=True,
                                              stream_options={"include_usage": True}, extra_headers=NO_STORE))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    quiet = list(sdk.chat.completions.create(model="gem", messages=_ask("Stream from Gemini"), stream=True,
                                             extra_headers=NO_STORE))
    assert all(c.usage is None for c in quiet)  # usage only when asked, but recorded anyway
    rows = request_logs(2, tenant=clouds.world.tenant_a, is_stream=True)
    for row in rows:
        assert row.tokens_estimated is False and row.output_tokens == plain.usage.completion_tokens
        assert row.cost == clouds.price("gem").cost(input_tokens=row.input_tokens, cached_tokens=row.cached_tokens,
                                                    output_tokens=row.output_tokens)


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_loop_runs_through_gemini(clouds, stream):
    sdk = clouds.client()
    messages = _ask("What is the weather in Paris?")
    if stream:
        chunks = list(sdk.chat.completions.create(model="gem", messages=messages, tools=[WEATHER],
                                                  tool_choice="required", stream=True, extra_headers=NO_STORE))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        (call,) = [tc for d in deltas for tc in d.tool_calls or []]
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
        assistant = {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                             "arguments": call.function.arguments}}]}
    else:
        answer = sdk.chat.completions.create(model="gem", messages=messages, tools=[WEATHER], tool_choice="required",
                                             extra_headers=NO_STORE)
        assert answer.choices[0].finish_reason == "tool_calls"
        (call,) = answer.choices[0].message.tool_calls
        assistant = answer.choices[0].message.model_dump(exclude_none=True)
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
    # The result goes back with the call: the simulator refuses a functionResponse that does not
    # follow its functionCall, or a call sent back without its thought signature.
    messages += [assistant, {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny"}'}]
    final = sdk.chat.completions.create(model="gem", messages=messages, tools=[WEATHER], tool_choice="auto",
                                        extra_headers=NO_STORE)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content
    rows = request_logs(2, tenant=clouds.world.tenant_a)
    assert all(r.status_code == 200 and r.cost > 0 for r in rows)


def test_a_gemini_answer_stopped_for_safety_finishes_as_content_filter(clouds):
    clouds.world.simulator.fault(model="gemini-sim-flash", mode="content_filter", count=2)
    sdk = clouds.client()
    answer = sdk.chat.completions.create(model="gem", messages=_ask("Something unsafe"), extra_headers=NO_STORE)
    assert answer.choices[0].finish_reason == "content_filter"
    assert len(answer.choices[0].message.content.split()) <= 3
    chunks = list(sdk.chat.completions.create(model="gem", messages=_ask("Something unsafe"), stream=True,
                                              extra_headers=NO_STORE))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"


def test_a_gemini_invalid_argument_is_passed_on_in_openais_shape(clouds):
    clouds.world.simulator.fault(model="gemini-sim-flash", mode="status", status=400)
    with pytest.raises(openai.BadRequestError) as refused:
        clouds.client().chat.completions.create(model="gem", messages=_ask("A bad request"))
    assert refused.value.code == "invalid_argument"
    assert "injected fault" in refused.value.message
    assert clouds.world.simulator.stats()["by_model"] == {"gemini-sim-flash": 1}  # not retried
    (row,) = request_logs(1, tenant=clouds.world.tenant_a, status_code=400)
    assert row.error_code == "invalid_argument" and row.cost == 0


def test_gemini_rate_limits_are_retried_then_told_with_their_retry_delay(clouds):
    clouds.world.simulator.fault(model="gemini-sim-flash", mode="status", status=429, retry_after=3, count=-1)
    with pytest.raises(openai.RateLimitError) as limited:
        clouds.client().chat.completions.create(model="gem", messages=_ask("Too many"))
    assert limited.value.code == "upstream_rate_limited"
    assert limited.value.response.headers["retry-after"] == "3"  # Google's RetryInfo, not a header
    assert clouds.world.simulator.stats()["by_model"] == {"gemini-sim-flash": 2}


def test_a_refused_gemini_key_is_the_providers_failure_not_the_clients(clouds):
    with pytest.raises(openai.APIStatusError) as failed:
        clouds.client().chat.completions.create(model="gem-bad-key", messages=_ask("Hello"))
    assert failed.value.status_code == 502
    assert "refused credentials" in failed.value.message
    (row,) = request_logs(1, tenant=clouds.world.tenant_a, status_code=502)
    assert row.cost == 0


# --- Amazon Bedrock ---------------------------------------------------------------------------------

BEDROCK_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"


def test_it_answers_and_streams_from_bedrock_signed_with_sigv4(clouds):
    sdk = clouds.client()
    plain = sdk.chat.completions.create(model="claude-bedrock", extra_headers=NO_STORE,
                                        messages=[{"role": "system", "content": SYSTEM}, *_ask("Hello Bedrock")])
    assert plain.choices[0].finish_reason == "stop" and plain.model == BEDROCK_ID
    chunks = list(sdk.chat.completions.create(
        model="claude-bedrock", messages=[{"role": "system", "content": SYSTEM}, *_ask("Hello Bedrock")],
        stream=True, stream_options={"include_usage": True}, extra_headers=NO_STORE))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert clouds.world.simulator.stats()["by_model"] == {BEDROCK_ID: 2}  # the model id's ":" survived signing
    rows = request_logs(2, tenant=clouds.world.tenant_a, model_used="claude-bedrock")
    for row in rows:
        assert row.tokens_estimated is False and row.output_tokens == plain.usage.completion_tokens
        assert row.cost == clouds.price("claude-bedrock").cost(
            input_tokens=row.input_tokens, cached_tokens=row.cached_tokens, output_tokens=row.output_tokens) > 0


@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_prompt_cache_writes_and_reads_are_each_priced_at_their_own_price(clouds, stream):
    sdk = clouds.client()
    system = f"You answer questions about the {'streamed' if stream else 'plain'} weather. " * 30
    marked = {"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}
    messages = [{"role": "system", "content": [marked]}, *_ask("Will it rain in Lima?")]
    for _ in range(2):
        if stream:
            chunks = list(sdk.chat.completions.create(model="claude-bedrock", messages=messages, stream=True,
                                                      stream_options={"include_usage": True}, extra_headers=NO_STORE))
            assert chunks[-1].usage.prompt_tokens > 0
        else:
            sdk.chat.completions.create(model="claude-bedrock", messages=messages, extra_headers=NO_STORE)
    first, second = request_logs(2, tenant=clouds.world.tenant_a, model_used="claude-bedrock")
    # The first request wrote the system prompt to the prompt cache, the second read it back.
    assert first.cache_write_tokens > 100 and first.cached_tokens == 0
    assert second.cached_tokens == first.cache_write_tokens and second.cache_write_tokens == 0
    assert first.input_tokens == second.input_tokens
    price = clouds.price("claude-bedrock")
    for row in (first, second):
        assert row.cost == price.cost(input_tokens=row.input_tokens, cached_tokens=row.cached_tokens,
                                      output_tokens=row.output_tokens, cache_write_tokens=row.cache_write_tokens)
    # Writes cost 1.25 a million tokens, not the input price of 1.00.
    assert first.cost - price.cost(input_tokens=first.input_tokens, cached_tokens=0,
                                   output_tokens=first.output_tokens) == \
        first.cache_write_tokens * Decimal("0.25") / 1_000_000


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_loop_runs_through_bedrock(clouds, stream):
    sdk = clouds.client()
    messages = _ask("What is the weather in Lima?")
    if stream:
        chunks = list(sdk.chat.completions.create(model="claude-bedrock", messages=messages, tools=[WEATHER],
                                                  tool_choice="required", stream=True, extra_headers=NO_STORE))
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
        ident, name = calls[0].id, calls[0].function.name
        arguments = "".join(tc.function.arguments or "" for tc in calls)
    else:
        answer = sdk.chat.completions.create(model="claude-bedrock", messages=messages, tools=[WEATHER],
                                             tool_choice="required", extra_headers=NO_STORE)
        assert answer.choices[0].finish_reason == "tool_calls"
        (call,) = answer.choices[0].message.tool_calls
        ident, name, arguments = call.id, call.function.name, call.function.arguments
    assert name == "get_weather" and set(json.loads(arguments)) == {"city"}
    messages += [{"role": "assistant", "content": None, "tool_calls": [
        {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": ident, "content": '{"forecast": "fog"}'}]
    final = sdk.chat.completions.create(model="claude-bedrock", messages=messages, tools=[WEATHER],
                                        extra_headers=NO_STORE)  # a toolResult that does not answer it is a 400
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content


def test_bedrock_errors_are_told_as_the_gateway_tells_them(clouds):
    sim = clouds.world.simulator
    sim.fault(model=BEDROCK_ID, mode="status", status=400)
    with pytest.raises(openai.BadRequestError) as refused:
        clouds.client().chat.completions.create(model="claude-bedrock", messages=_ask("Bad"))
    assert refused.value.code == "validation_exception" and "injected fault" in refused.value.message
    sim.fault(model=BEDROCK_ID, mode="status", status=429, count=-1)
    with pytest.raises(openai.RateLimitError) as limited:
        clouds.client().chat.completions.create(model="claude-bedrock", messages=_ask("Throttled"))
    assert limited.value.code == "upstream_rate_limited"
    with pytest.raises(openai.APIStatusError) as failed:
        clouds.client().chat.completions.create(model="bedrock-wrong-secret", messages=_ask("Signed wrong"))
    assert failed.value.status_code == 502 and "refused credentials (403)" in failed.value.message
    rows = request_logs(3, tenant=clouds.world.tenant_a)
    assert [(r.status_code, r.error_code) for r in rows] == [
        (400, "validation_exception"), (429, "upstream_rate_limited"), (502, "upstream_error")]
    assert all(r.cost == 0 for r in rows)


# --- the other doors --------------------------------------------------------------------------------

def test_the_messages_door_reaches_gemini_json_and_stream(clouds):
    sdk = anthropic.Anthropic(base_url=clouds.world.gateway.base, api_key=clouds.world.key_a, max_retries=0)
    message = sdk.messages.create(model="gem", max_tokens=200, system=SYSTEM,
                                  messages=[{"role": "user", "content": "Hello from Messages"}],
                                  extra_headers=NO_STORE)
    assert message.content[0].text and message.stop_reason == "end_turn"
    with sdk.messages.stream(model="gem", max_tokens=200, system=SYSTEM,
                             messages=[{"role": "user", "content": "Hello from Messages"}],
                             extra_headers=NO_STORE) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == message.content[0].text
    assert final.usage.output_tokens == message.usage.output_tokens
    rows = request_logs(2, tenant=clouds.world.tenant_a, endpoint="/v1/messages")
    assert {r.model_used for r in rows} == {"gem"} and all(r.cost > 0 for r in rows)


def test_the_responses_door_reaches_azure_and_gemini(clouds):
    sdk = clouds.client()
    for name in ("az-v1", "gem"):
        response = sdk.responses.create(model=name, input="Hello from Responses", extra_headers=NO_STORE)
        assert response.output_text and response.status == "completed"
        events = list(sdk.responses.create(model=name, input="Hello from Responses", stream=True,
                                           extra_headers=NO_STORE))
        assert events[-1].type == "response.completed"
        assert events[-1].response.output_text == response.output_text


# --- context windows --------------------------------------------------------------------------------

def test_each_clouds_context_length_refusal_moves_on_to_a_larger_window(clouds):
    """Gemini and Bedrock say a prompt is too long only in words; Azure with OpenAI's code."""
    from apps.catalog.models import Model
    from apps.routing.models import RoutingFallback, RoutingRule

    models = clouds.models
    for name, window in (("gem", 100_000), ("claude-bedrock", 200_000), ("az-v1", 1_000_000)):
        Model.objects.filter(pk=models[name].pk).update(context_window=window)
    rule = RoutingRule.objects.create(name="growing", match_model="growing", target=models["gem"], priority=4)
    RoutingFallback.objects.create(rule=rule, model=models["claude-bedrock"], position=0)
    RoutingFallback.objects.create(rule=rule, model=models["az-v1"], position=1)
    sdk = clouds.client()

    def ask():
        return sdk.chat.completions.with_raw_response.create(model="growing", messages=_ask("Hello clouds"),
                                                             extra_headers=NO_STORE)

    assert wait_until(lambda: _answered(ask))
    world = clouds.world
    world.simulator.reset()
    for upstream in ("gemini-sim-flash", "anthropic.claude-3-5-haiku-20241022-v1:0"):
        world.simulator.fault(model=upstream, mode="context_length", count=1)
    raw = ask()
    assert raw.headers["x-switchyard-model"] == "az-v1"
    assert raw.parse().choices[0].message.content
    failures = request_logs(1, request_id=raw.headers["x-switchyard-request-id"])[0].upstream_failures
    assert failures == ("gem: prompt too long for its context window (100000 tokens); "
                        "claude-bedrock: prompt too long for its context window (200000 tokens)")
    # The largest refuses too: its refusal (Azure's, with OpenAI's code) is passed on.
    for upstream in ("gemini-sim-flash", "anthropic.claude-3-5-haiku-20241022-v1:0", "sim-v1-model"):
        world.simulator.fault(model=upstream, mode="context_length", count=1)
    with pytest.raises(openai.BadRequestError) as caught:
        ask()
    assert caught.value.code == "context_length_exceeded"
    assert world.simulator.stats()["by_model"] == {"gemini-sim-flash": 2, "anthropic.claude-3-5-haiku-20241022-v1:0": 2,
                                                   "sim-v1-model": 2}


def _answered(ask) -> bool:
    try:
        return ask().headers["x-switchyard-model"] == "gem"
    except openai.APIStatusError:
        return False


# --- tenants ----------------------------------------------------------------------------------------

def test_tenant_b_sees_nothing_of_tenant_as_gemini_requests(clouds):
    world = clouds.world
    body = {"model": "gem", "messages": _ask("A private Gemini question")}
    a = {"Authorization": f"Bearer {world.key_a}"}
    b = {"Authorization": f"Bearer {world.key_b}"}
    first = httpx.post(world.gateway.v1 + "/chat/completions", json=body, headers=a)
    assert first.headers["x-switchyard-cache"] == "miss"
    from apps.cache.models import CacheEntry
    assert wait_until(lambda: CacheEntry.objects.filter(tenant=world.tenant_a).exists())
    assert wait_until(lambda: httpx.post(world.gateway.v1 + "/chat/completions", json=body, headers=a)
                      .headers["x-switchyard-cache"] == "hit-exact")
    theirs = httpx.post(world.gateway.v1 + "/chat/completions", json=body, headers=b)
    assert theirs.status_code == 200 and theirs.headers["x-switchyard-cache"] == "miss"
    request_logs(1, tenant=world.tenant_b)
    usage = httpx.get(world.gateway.v1 + "/usage/export", headers=b)
    assert first.headers["x-switchyard-request-id"] not in usage.text
