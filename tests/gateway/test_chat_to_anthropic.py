"""OpenAI-format clients (the official ``openai`` SDK, unchanged) reaching a native Anthropic
provider through ``/v1/chat/completions`` and ``/v1/responses``: the simulated Messages API over
real HTTP, which checks what it receives as Anthropic's API does."""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import httpx
import openai
import pytest

from apps.simulator.answers import answer_words, prompt_tokens
from apps.simulator.messages import conversation
from tests.gateway.conftest import request_logs, wait_until

CHUNKS = 12  # the test simulator's words per answer
NATIVE = "claude-sim"  # served by the simulator's /v1/messages, model id sim-mini
NO_STORE = {"cache-control": "no-store"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
# A 1x1 transparent PNG.
PIXEL = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6300010000"
    "050001a5f645400000000049454e44ae426082")).decode()


def client(world, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=world.gateway.v1, api_key=key or world.key_a, max_retries=0)


def expected_text(body: dict) -> str:
    """What the simulator answers to the Messages request ``body``."""
    return "".join(answer_words(body["model"], conversation(body), CHUNKS))


@pytest.fixture
def native(world):
    """A native Anthropic provider (the simulator's Messages API) with prompt-cache prices."""
    from apps.catalog.models import Model, Provider

    provider = Provider.objects.create(name="sim-anthropic", kind=Provider.Kind.ANTHROPIC,
                                       base_url=world.simulator.v1, credential="sk-ant-sim", timeout_seconds=5.0)
    world.models[NATIVE] = Model.objects.create(
        name=NATIVE, upstream_id="sim-mini", provider=provider, tier=Model.Tier.SIMPLE,
        input_price_per_million=Decimal("3"), cached_input_price_per_million=Decimal("0.30"),
        cache_write_price_per_million=Decimal("3.75"), output_price_per_million=Decimal("15"),
        max_output_tokens=4096)
    assert wait_until(lambda: NATIVE in {m.id for m in client(world).models.list()})
    return world


def _completion(sdk: openai.OpenAI, stream: bool, **request):
    """A chat completion, asked as JSON or streamed (assembled by the SDK's stream helper)."""
    if not stream:
        return sdk.chat.completions.create(**request)
    with sdk.chat.completions.stream(**request, stream_options={"include_usage": True}) as events:
        return events.get_final_completion()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_it_runs_the_sdks_tool_calling_loop(native, stream):
    world = native
    sdk = client(world)
    messages = [{"role": "system", "content": "You are a travel desk."},
                {"role": "user", "content": "Weather and time in Paris?"}]
    asked = _completion(sdk, stream, model=NATIVE, messages=messages, tools=[WEATHER, CLOCK],
                        tool_choice="required", extra_headers=NO_STORE)
    sent = world.simulator.last_messages()
    assert sent["system"] == "You are a travel desk."
    assert sent["messages"] == [{"role": "user", "content": "Weather and time in Paris?"}]
    assert sent["tool_choice"] == {"type": "any"} and sent["max_tokens"] == 4096
    assert [t["input_schema"] for t in sent["tools"]] == [WEATHER["function"]["parameters"],
                                                          CLOCK["function"]["parameters"]]
    choice = asked.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]  # in parallel
    weather = json.loads(calls[0].function.arguments)
    assert isinstance(weather["city"], str) and weather["days"] == 42
    assert len({c.id for c in calls}) == 2

    results = [{"role": "tool", "tool_call_id": calls[0].id, "content": "Sunny, 21 C"},
               {"role": "tool", "tool_call_id": calls[1].id, "content": "14:05"}]
    follow = [*messages, choice.message.model_dump(exclude_none=True), *results]
    answered = _completion(sdk, stream, model=NATIVE, messages=follow, tools=[WEATHER, CLOCK],
                           extra_headers=NO_STORE)
    sent = world.simulator.last_messages()
    assistant, tool_turn = sent["messages"][1:]
    assert [b["type"] for b in assistant["content"]] == ["tool_use", "tool_use"]
    assert assistant["content"][0]["input"] == weather
    assert tool_turn == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": calls[0].id, "content": "Sunny, 21 C"},
        {"type": "tool_result", "tool_use_id": calls[1].id, "content": "14:05"}]}
    assert answered.choices[0].finish_reason == "stop"
    assert answered.choices[0].message.content == expected_text(sent)
    assert answered.usage.prompt_tokens == prompt_tokens(conversation(sent))
    assert answered.usage.completion_tokens == CHUNKS

    price = world.models[NATIVE].prices.get()
    first, second = request_logs(2, tenant=world.tenant_a, endpoint="/v1/chat/completions")
    assert (first.model_used, first.is_stream, first.status_code) == (NATIVE, stream, 200)
    assert (second.input_tokens, second.output_tokens) == (answered.usage.prompt_tokens, CHUNKS)
    assert first.output_tokens == asked.usage.completion_tokens > 0
    assert second.cost == price.cost(input_tokens=second.input_tokens, cached_tokens=0,
                                     output_tokens=CHUNKS) > 0


def test_it_sends_images_stop_sequences_and_sampling_as_anthropic_takes_them(native):
    world = native
    sdk = client(world)
    content = [{"type": "text", "text": "What is in these pictures?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/yard.jpg", "detail": "low"}}]
    answer = sdk.chat.completions.create(model=NATIVE, messages=[{"role": "user", "content": content}], stop="END",
                                         temperature=1.5, top_p=0.5, max_completion_tokens=300, user="u-7")
    sent = world.simulator.last_messages()
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these pictures?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/yard.jpg"}}]
    assert (sent["stop_sequences"], sent["temperature"], sent["top_p"], sent["max_tokens"]) == (["END"], 1, 0.5, 300)
    assert sent["metadata"] == {"user_id": "u-7"}
    assert answer.choices[0].message.content == expected_text(sent)


def test_it_answers_a_json_schema_format_through_a_forced_tool(native):
    world = native
    sdk = client(world)
    schema = {"type": "object", "properties": {"station": {"type": "string"}, "platforms": {"type": "integer"}},
              "required": ["station", "platforms"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "station_card", "schema": schema}}
    ask = [{"role": "user", "content": "Describe a station"}]
    answer = sdk.chat.completions.create(model=NATIVE, messages=ask, response_format=fmt, extra_headers=NO_STORE)
    sent = world.simulator.last_messages()
    assert sent["tool_choice"] == {"type": "tool", "name": "station_card"}
    assert sent["tools"][0]["input_schema"] == schema
    card = json.loads(answer.choices[0].message.content)
    assert isinstance(card["station"], str) and card["platforms"] == 42
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.tool_calls is None
    with sdk.chat.completions.stream(model=NATIVE, messages=ask, response_format=fmt,
                                     extra_headers=NO_STORE) as events:
        streamed = events.get_final_completion()
    assert json.loads(streamed.choices[0].message.content) == card
    assert streamed.choices[0].finish_reason == "stop"
    sdk.chat.completions.create(model=NATIVE, messages=ask, response_format={"type": "json_object"})
    assert "JSON object" in world.simulator.last_messages()["system"]


def test_it_prices_prompt_cache_reads_and_writes(native):
    world = native
    sdk = client(world)
    system = {"role": "system", "content": [{"type": "text", "cache_control": {"type": "ephemeral"},
                                             "text": "A long and stable system prompt about freight yards."}]}
    ask = [system, {"role": "user", "content": "Which yard?"}]
    first = sdk.chat.completions.create(model=NATIVE, messages=ask, extra_headers=NO_STORE)
    assert world.simulator.last_messages()["system"][0]["cache_control"] == {"type": "ephemeral"}
    with sdk.chat.completions.stream(model=NATIVE, messages=ask, extra_headers=NO_STORE,
                                     stream_options={"include_usage": True}) as events:
        second = events.get_final_completion()
    written = first.usage.model_extra["cache_creation_input_tokens"]
    assert written > 0 and first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == written
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    one, two = request_logs(2, tenant=world.tenant_a, endpoint="/v1/chat/completions")
    total = first.usage.prompt_tokens
    assert (one.input_tokens, one.cached_tokens, one.cache_write_tokens) == (total, 0, written)
    assert (two.input_tokens, two.cached_tokens, two.cache_write_tokens) == (total, written, 0)
    assert one.cost == ((total - written) * Decimal("3") + written * Decimal("3.75")
                        + one.output_tokens * Decimal("15")) / 1_000_000
    assert two.cost == ((total - written) * Decimal("3") + written * Decimal("0.30")
                        + two.output_tokens * Decimal("15")) / 1_000_000


def test_it_replays_cached_answers_and_keeps_them_to_their_tenant(native):
    world = native
    ask = [{"role": "user", "content": "Name a famous railway station"}]
    mine, theirs = client(world), client(world, world.key_b)
    first = mine.chat.completions.with_raw_response.create(model=NATIVE, messages=ask)
    assert first.headers["x-switchyard-cache"] == "miss"
    text = first.parse().choices[0].message.content

    def hit() -> bool:
        again = mine.chat.completions.with_raw_response.create(model=NATIVE, messages=ask)
        return again.headers["x-switchyard-cache"] == "hit-exact" and again.parse().choices[0].message.content == text

    assert wait_until(hit)
    replay = mine.chat.completions.with_raw_response.create(model=NATIVE, messages=ask, stream=True)
    assert replay.headers["x-switchyard-cache"] == "hit-exact"
    chunks = list(replay.parse())
    assert len(chunks) > 3  # replayed in pieces
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    other = theirs.chat.completions.with_raw_response.create(model=NATIVE, messages=ask)
    assert other.headers["x-switchyard-cache"] == "miss"
    assert world.simulator.stats()["requests"] == 2  # one per tenant
    rows_b = request_logs(1, tenant=world.tenant_b, endpoint="/v1/chat/completions")
    assert [r.cache_outcome for r in rows_b] == ["miss"] and rows_b[0].cost > 0
    # A streamed answer is kept as well, and replayed as JSON.
    streamed_ask = [{"role": "user", "content": "Name a railway signal"}]
    with mine.chat.completions.stream(model=NATIVE, messages=streamed_ask) as events:
        streamed = events.get_final_completion().choices[0].message.content
    assert wait_until(lambda: mine.chat.completions.with_raw_response.create(
        model=NATIVE, messages=streamed_ask).headers["x-switchyard-cache"] == "hit-exact")
    assert mine.chat.completions.create(model=NATIVE, messages=streamed_ask).choices[0].message.content == streamed


def test_it_refuses_what_anthropic_cannot_take_with_a_400(native):
    world = native
    sdk = client(world)
    ask = [{"role": "user", "content": "x"}]
    bad = {
        "n": {"messages": ask, "n": 2},
        "logprobs": {"messages": ask, "logprobs": True},
        "messages[0].content[0].image_url": {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]},
        "messages[1].tool_calls[0].function.arguments": {"messages": [*ask, {
            "role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                 "function": {"name": "f", "arguments": "not json"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}]},
        "messages": {"messages": [{"role": "system", "content": "Only a system prompt"}]},
        "response_format": {"messages": ask, "tools": [WEATHER], "response_format": {
            "type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}},
    }
    for param, body in bad.items():
        answer = httpx.post(world.gateway.v1 + "/chat/completions", json={"model": NATIVE, **body}, timeout=30,
                            headers={"Authorization": f"Bearer {world.key_a}"})
        assert answer.status_code == 400, (param, answer.text)
        error = answer.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert world.simulator.stats()["requests"] == 0  # refused before the provider
    # What the provider itself refuses comes back in OpenAI's shape, with its status.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=NATIVE, messages=[*ask, {"role": "tool", "tool_call_id": "nope",
                                                                   "content": "orphan"}])
    assert "tool_result" in refused.value.body["message"] and refused.value.body["code"] == "invalid_request_error"
    world.simulator.fault(model="sim-mini", mode="status", status=529, count=-1)
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.chat.completions.create(model=NATIVE, messages=ask)
    assert failed.value.status_code == 502 and failed.value.body["code"] == "upstream_error"
    rows = request_logs(len(bad) + 2, tenant=world.tenant_a, endpoint="/v1/chat/completions")
    assert [r.status_code for r in rows] == [400] * (len(bad) + 1) + [502]
    assert all(r.model_used == NATIVE and r.cost == 0 for r in rows)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_it_answers_responses_with_function_tools(native, stream):
    world = native
    sdk = client(world)
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}

    def create(**request):
        if not stream:
            return sdk.responses.create(model=NATIVE, tools=[tool], extra_headers=NO_STORE, **request)
        with sdk.responses.stream(model=NATIVE, tools=[tool], extra_headers=NO_STORE, **request) as events:
            kinds = [event.type for event in events]
            assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
            return events.get_final_response()

    asked = create(instructions="Be brief.", input="Weather in Paris?", tool_choice="required")
    (call,) = asked.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments)["days"] == 42
    sent = world.simulator.last_messages()
    assert sent["system"] == "Be brief." and sent["tool_choice"] == {"type": "any"}
    answered = create(instructions="Be brief.", input=[
        {"role": "user", "content": "Weather in Paris?"}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}])
    sent = world.simulator.last_messages()
    assert sent["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": call.call_id,
                                               "content": "Sunny"}]
    assert answered.status == "completed" and answered.output_text == expected_text(sent)
    assert answered.usage.input_tokens == prompt_tokens(conversation(sent))
    assert answered.usage.output_tokens == CHUNKS
    price = world.models[NATIVE].prices.get()
    _first, second = request_logs(2, tenant=world.tenant_a, endpoint="/v1/responses")
    assert (second.model_used, second.is_stream, second.input_tokens) == (NATIVE, stream, answered.usage.input_tokens)
    assert second.cost == price.cost(input_tokens=second.input_tokens, cached_tokens=0, output_tokens=CHUNKS)


@pytest.mark.parametrize("model", [NATIVE, "sim-mini"])
def test_it_sends_responses_input_images_to_either_kind_of_provider(native, model):
    world = native
    sdk = client(world)
    response = sdk.responses.create(model=model, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Which yard is this?"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{PIXEL}"},
        {"type": "input_image", "image_url": "https://example.com/yard.jpg", "detail": "high"}]}])
    assert response.status == "completed" and response.output_text
    if model == NATIVE:
        sent = world.simulator.last_messages()
        assert [b["type"] for b in sent["messages"][0]["content"]] == ["text", "image", "image"]
        assert sent["messages"][0]["content"][1]["source"] == {"type": "base64", "media_type": "image/png",
                                                               "data": PIXEL}
        assert response.output_text == expected_text(sent)
    items = sdk.responses.input_items.list(response.id)
    assert [part.type for part in items.data[0].content] == ["input_text", "input_image", "input_image"]


def test_it_reaches_the_provider_from_the_other_doors_on_the_chat_pipeline(native):
    import asyncio

    from websockets.asyncio.client import connect

    world = native
    auth = {"Authorization": f"Bearer {world.key_a}"}
    simple = httpx.post(world.gateway.v1 + "/complete", headers=auth, timeout=30,
                        json={"prompt": "Name a depot", "model": NATIVE, "use_cache": False})
    assert simple.status_code == 200, simple.text
    sent = world.simulator.last_messages()
    assert simple.json()["content"] == expected_text(sent) and simple.json()["model_used"] == NATIVE

    async def socket() -> tuple[str, dict]:
        url = world.gateway.base.replace("http://", "ws://") + "/ws/v1/chat"
        async with connect(url, additional_headers=auth) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "chat.request", "id": "r1", "cache_control": "no-store", "body": {
                "model": NATIVE, "messages": [{"role": "user", "content": "Name a signal box"}]}}))
            text = ""
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if event["type"] == "delta":
                    text += event["content"]
                elif event["type"] in ("done", "error"):
                    return text, event

    text, done = asyncio.run(socket())
    assert done["type"] == "done", done
    sent = world.simulator.last_messages()
    assert text == expected_text(sent) and done["usage"]["completion_tokens"] == CHUNKS
    assert done["finish_reason"] == "stop" and done["model"] == NATIVE


def test_it_ends_a_stream_cut_midway_with_an_openai_error_event(native):
    world = native
    world.simulator.fault(model="sim-mini", mode="cut")
    body = {"model": NATIVE, "stream": True, "messages": [{"role": "user", "content": "Go"}]}
    with httpx.stream("POST", world.gateway.v1 + "/chat/completions", timeout=30, json=body,
                      headers={"Authorization": f"Bearer {world.key_a}"}) as answer:
        assert answer.status_code == 200
        events = [json.loads(line[6:]) for line in answer.iter_lines() if line.startswith("data: {")]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["error"]["code"] == "upstream_stream_cut"
    (row,) = request_logs(1, tenant=world.tenant_a, endpoint="/v1/chat/completions")
    assert (row.status_code, row.error_code, row.model_used) == (502, "upstream_stream_cut", NATIVE)
    assert row.output_tokens > 0  # billed for what was produced
