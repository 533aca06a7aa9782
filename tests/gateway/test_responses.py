"""The Responses API (``/v1/responses``) through the official ``openai`` SDK, unchanged, against
a live Switchyard and the simulated upstream: the same pipeline as every other door."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.gateway.conftest import request_logs, wait_until
from tests.gateway.test_capabilities import sized  # noqa: F401 (a fixture)

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
EVENTS = TypeAdapter(ResponseStreamEvent)


def client(world, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=world.gateway.v1, api_key=key or world.key_a, max_retries=0)


def raw_events(world, body: dict, key: str | None = None) -> list[dict]:
    """The SSE events of a streamed create, as sent."""
    events = []
    with httpx.stream("POST", world.gateway.v1 + "/responses", json={**body, "stream": True}, timeout=30,
                      headers={"Authorization": f"Bearer {key or world.key_a}"}) as answer:
        assert answer.status_code == 200
        name = None
        for line in answer.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["type"] == name
                events.append(event)
    return events


def test_it_answers_a_response_through_the_sdk(world):
    raw = client(world).responses.with_raw_response.create(
        model="sim-mini", instructions="Be brief.", input="Say hello", max_output_tokens=200)
    response = raw.parse()
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed"
    assert response.output_text
    (item,) = response.output
    assert item.type == "message" and item.role == "assistant" and item.content[0].type == "output_text"
    assert response.instructions == "Be brief." and response.max_output_tokens == 200
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0
    Response.model_validate(json.loads(raw.text))  # every field the SDK's model requires, of its type
    assert raw.headers["x-switchyard-model"] == "sim-mini"
    assert Decimal(raw.headers["x-switchyard-cost"]) > 0
    (row,) = request_logs(1, tenant=world.tenant_a, endpoint="/v1/responses")
    assert (row.model_used, row.input_tokens, row.output_tokens) == ("sim-mini", usage.input_tokens,
                                                                     usage.output_tokens)
    assert row.cost == Decimal(raw.headers["x-switchyard-cost"])
    assert row.request_id == raw.headers["x-switchyard-request-id"]


def test_it_sends_the_chat_form_upstream_and_routes_auto(world):
    sdk = client(world)
    response = sdk.responses.create(model="auto", input=[
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "input_text", "text": "What is the capital of France?"}]}])
    assert response.model in ("sim-mini", "sim-standard", "sim-premium")
    assert response.output_text
    chat = sdk.chat.completions.create(model=response.model, messages=[
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "What is the capital of France?"}])
    assert response.output_text == chat.choices[0].message.content  # the simulator answers from the prompt


def test_it_streams_typed_events_the_sdk_parses(world):
    body = {"model": "sim-mini", "input": "Stream a short answer"}
    events = raw_events(world, body)
    for event in events:
        EVENTS.validate_python(event)  # each one is a valid event of the SDK's own models
    kinds = [event["type"] for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    deltas = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == deltas
    assert done["usage"]["output_tokens"] > 0 and done["usage"]["input_tokens"] > 0

    with client(world).responses.stream(model="sim-mini", input="Stream a short answer") as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == deltas
    pieces = list(client(world).responses.create(model="sim-mini", input="Stream a short answer", stream=True))
    assert pieces[-1].type == "response.completed" and pieces[-1].response.output_text == deltas
    rows = request_logs(3, tenant=world.tenant_a, endpoint="/v1/responses", is_stream=True)
    assert rows[0].output_tokens == done["usage"]["output_tokens"] and rows[0].cache_outcome == "miss"
    assert {row.cache_outcome for row in rows[1:]} == {"exact"}


def test_it_replays_a_cache_hit_as_the_same_response(world):
    sdk = client(world)
    first = sdk.responses.create(model="sim-mini", input="Cache me please")
    request_logs(1, tenant=world.tenant_a, endpoint="/v1/responses")
    raw = sdk.responses.with_raw_response.create(model="sim-mini", input="Cache me please")
    assert raw.headers["x-switchyard-cache"] == "hit-exact"
    again = raw.parse()
    assert again.output_text == first.output_text and again.id != first.id
    assert sdk.responses.retrieve(again.id).output_text == first.output_text


def test_it_stores_retrieves_lists_and_deletes_a_response(world):
    sdk = client(world)
    response = sdk.responses.create(model="sim-mini", input=[
        {"role": "user", "content": "First question"}, {"role": "assistant", "content": "An answer"},
        {"role": "user", "content": "Second question"}])
    kept = sdk.responses.retrieve(response.id)
    assert kept.id == response.id and kept.output_text == response.output_text
    assert kept.usage.output_tokens == response.usage.output_tokens
    items = sdk.responses.input_items.list(response.id)
    assert [item.content[0].text for item in items.data] == ["Second question", "An answer", "First question"]
    page = sdk.responses.input_items.list(response.id, order="asc", limit=2)
    assert [item.role for item in page.data] == ["user", "assistant"] and page.has_more is True
    rest = sdk.responses.input_items.list(response.id, order="asc", after=page.last_id)
    assert [item.content[0].text for item in rest.data] == ["Second question"] and rest.has_more is False
    assert len(list(sdk.responses.input_items.list(response.id, limit=1))) == 3  # the SDK pages through
    cancel = httpx.post(world.gateway.v1 + f"/responses/{response.id}/cancel",
                        headers={"Authorization": f"Bearer {world.key_a}"})
    assert cancel.status_code == 400 and "background" in cancel.json()["error"]["message"]
    sdk.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as gone:
        sdk.responses.retrieve(response.id)
    assert gone.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        sdk.responses.delete(response.id)


def test_it_keeps_nothing_with_store_false(world):
    sdk = client(world)
    response = sdk.responses.create(model="sim-mini", input="Forget me", store=False)
    assert response.store is False and response.output_text
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="sim-mini", input="And then?", previous_response_id=response.id)
    assert refused.value.body["code"] == "previous_response_not_found"


def test_it_continues_a_conversation_from_a_previous_response(world):
    sdk = client(world)
    first = sdk.responses.create(model="sim-mini", instructions="Be brief.", input="My name is Ada.")
    second = sdk.responses.create(model="sim-mini", input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    # What the provider was sent: the first exchange, then the new input (instructions are not carried).
    chat = sdk.chat.completions.create(model="sim-mini", messages=[
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"}])
    assert second.output_text == chat.choices[0].message.content
    streamed = list(sdk.responses.create(model="sim-mini", input="And again?", previous_response_id=second.id,
                                         stream=True))
    third = sdk.responses.retrieve(streamed[-1].response.id)
    assert third.previous_response_id == second.id and third.output_text == streamed[-1].response.output_text
    assert [item.content[0].text for item in sdk.responses.input_items.list(third.id).data] == ["And again?"]


def test_it_round_trips_a_function_call(world):
    sdk = client(world)
    asked = sdk.responses.create(model="sim-mini", input="What is the weather in Paris?", tools=[WEATHER],
                                 tool_choice="required")
    (call,) = asked.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    assert isinstance(json.loads(call.arguments)["city"], str)
    answered = sdk.responses.create(model="sim-mini", previous_response_id=asked.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'}])
    assert answered.output[0].type == "message" and answered.output_text
    # Without a stored response: the call and its result sent back as items, two calls in parallel.
    parallel = sdk.responses.create(model="sim-mini", tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "21C"},
        {"type": "function_call_output", "call_id": "call_2", "output": "25C"}])
    assert parallel.output_text


def test_it_streams_a_function_call_with_argument_events(world):
    events = raw_events(world, {"model": "sim-mini", "input": "Weather in Oslo?", "tools": [WEATHER],
                                "tool_choice": {"type": "function", "name": "get_weather"}})
    for event in events:
        EVENTS.validate_python(event)
    kinds = [event["type"] for event in events]
    assert "response.function_call_arguments.delta" in kinds and "response.output_text.delta" not in kinds
    (done,) = [event for event in events if event["type"] == "response.function_call_arguments.done"]
    deltas = "".join(event["delta"] for event in events if event["type"] == "response.function_call_arguments.delta")
    assert done["arguments"] == deltas and json.loads(deltas)["city"]
    final = events[-1]["response"]
    assert final["output"][0]["type"] == "function_call" and final["output"][0]["arguments"] == deltas
    with client(world).responses.stream(model="sim-mini", input="Weather in Oslo?", tools=[WEATHER],
                                        tool_choice="required") as stream:
        final = stream.get_final_response()
    assert final.output[0].name == "get_weather"


def test_it_refuses_bad_input_with_openais_errors(world):
    sdk = client(world)
    bad = {
        "input": ({"model": "sim-mini"}, "missing_required_parameter"),
        "temperature": ({"model": "sim-mini", "input": "x", "temperature": 3}, "decimal_above_max_value"),
        "input[0].role": ({"model": "sim-mini", "input": [{"role": "robot", "content": "x"}]}, "invalid_value"),
        "input[0].content[0]": ({"model": "sim-mini", "input": [{"role": "user", "content": [
            {"type": "input_file", "file_id": "file-1"}]}]}, "unsupported_parameter"),
        "tools[0].type": ({"model": "sim-mini", "input": "x", "tools": [{"type": "web_search"}]},
                          "unsupported_parameter"),
        "text.format.schema": ({"model": "sim-mini", "input": "x", "text": {"format": {"type": "json_schema",
                                                                                      "name": "a"}}},
                               "missing_required_parameter"),
        "reasoning.effort": ({"model": "sim-mini", "input": "x", "reasoning": {"effort": "huge"}}, "invalid_value"),
        "previous_response_id": ({"model": "sim-mini", "input": "x", "previous_response_id": "resp_nope"},
                                 "previous_response_not_found"),
        "bogus": ({"model": "sim-mini", "input": "x", "bogus": 1}, "unknown_parameter"),
    }
    for param, (body, code) in bad.items():
        answer = httpx.post(world.gateway.v1 + "/responses", json=body, timeout=30,
                            headers={"Authorization": f"Bearer {world.key_a}"})
        assert answer.status_code == 400, (param, answer.text)
        error = answer.json()["error"]
        assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), error
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model="no-such-model", input="x")
    for path in ("/responses/resp_x/unknown", "/responses/"):
        assert httpx.get(world.gateway.v1 + path, headers={"Authorization": f"Bearer {world.key_a}"}
                         ).status_code == 404


def test_it_never_shows_one_tenants_response_to_another(world):
    mine, theirs = client(world), client(world, world.key_b)
    response = mine.responses.create(model="sim-mini", input="A secret of Acme's")
    with pytest.raises(openai.NotFoundError) as hidden:
        theirs.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as unknown:
        theirs.responses.retrieve("resp_" + "0" * 24)
    assert hidden.value.body["code"] == unknown.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        theirs.responses.input_items.list(response.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.cancel(response.id)
    with pytest.raises(openai.BadRequestError) as refused:
        theirs.responses.create(model="sim-mini", input="Go on", previous_response_id=response.id)
    assert refused.value.body["code"] == "previous_response_not_found"
    assert mine.responses.retrieve(response.id).output_text == response.output_text  # still there, untouched


def test_it_ends_a_failing_stream_with_an_error_event(world):
    world.simulator.fault(model="sim-mini", mode="cut", count=1)
    events = raw_events(world, {"model": "sim-mini", "input": "This stream will be cut"})
    for event in events:
        EVENTS.validate_python(event)
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "error" and events[-1]["code"] == "upstream_stream_cut"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    (row,) = request_logs(1, tenant=world.tenant_a, endpoint="/v1/responses")
    assert row.status_code == 502 and row.error_code == "upstream_stream_cut"
    world.simulator.fault(model="sim-mini", mode="cut", count=1)
    with client(world).responses.stream(model="sim-mini", input="A stream cut again") as stream:
        kinds = [event.type for event in stream]
        assert kinds[-1] == "error"
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            stream.get_final_response()


CLOCK = {"type": "function", "name": "get_time", "description": "The local time in a city.",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_it_answers_parallel_function_calls_and_takes_their_results_back(world):
    sdk = client(world)
    asked = sdk.responses.create(model="sim-mini", input="Weather and time in Lima?", tools=[WEATHER, CLOCK],
                                 tool_choice="required")
    assert [item.type for item in asked.output] == ["function_call", "function_call"]
    assert [item.name for item in asked.output] == ["get_weather", "get_time"]
    assert len({item.call_id for item in asked.output}) == len({item.id for item in asked.output}) == 2
    results = [{"type": "function_call_output", "call_id": item.call_id, "output": "fine"} for item in asked.output]
    answered = sdk.responses.create(model="sim-mini", previous_response_id=asked.id, input=results,
                                    tools=[WEATHER, CLOCK])
    assert answered.output_text
    one = sdk.responses.create(model="sim-mini", input="Weather and time in Lima?", tools=[WEATHER, CLOCK],
                               tool_choice="required", parallel_tool_calls=False)
    assert [item.name for item in one.output] == ["get_weather"]

    events = raw_events(world, {"model": "sim-mini", "input": "Weather and time in Quito?",
                                "tools": [WEATHER, CLOCK], "tool_choice": "required"})
    for event in events:
        EVENTS.validate_python(event)
    added = [event for event in events if event["type"] == "response.output_item.added"]
    done = [event for event in events if event["type"] == "response.output_item.done"]
    assert [(event["output_index"], event["item"]["name"]) for event in added] == [(0, "get_weather"),
                                                                                   (1, "get_time")]
    assert [event["output_index"] for event in done] == [0, 1]
    final = events[-1]["response"]
    assert [item["name"] for item in final["output"]] == ["get_weather", "get_time"]
    for index, item in enumerate(final["output"]):
        fragments = [event["delta"] for event in events
                     if event["type"] == "response.function_call_arguments.delta" and event["output_index"] == index]
        assert "".join(fragments) == item["arguments"] and json.loads(item["arguments"])["city"]
    stored = sdk.responses.retrieve(final["id"])
    assert [item.call_id for item in stored.output] == [item["call_id"] for item in final["output"]]


def test_it_holds_a_key_to_its_rate_limit(world):
    from apps.tenants.services import key_create
    from tests.gateway.test_limits import _limits_set, _same_minute, _seen

    _limits_set(world.tenant_a, rpm_limit=50)
    strict = key_create(tenant=world.tenant_a, name="strict", rpm_limit=2).secret
    other = key_create(tenant=world.tenant_a, name="other").secret
    _same_minute(20)  # the warm-up and the requests below share one clock minute, however slow
    assert _seen(world.gateway.base, other, "x-ratelimit-limit-requests")
    sdk = client(world, strict)
    for n in range(2):
        raw = sdk.responses.with_raw_response.create(model="sim-mini", input=f"Limited {n}")
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.responses.create(model="sim-mini", input="One too many")
    assert refused.value.body["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    rows = request_logs(3, tenant=world.tenant_a, endpoint="/v1/responses")
    assert sorted(row.status_code for row in rows) == [200, 200, 429]


def test_it_names_the_responses_field_a_capability_or_window_refusal_is_about(sized):  # noqa: F811
    from tests.gateway.test_capabilities import PIXEL, words

    def refused(body: dict) -> dict:
        answer = httpx.post(sized.gateway.v1 + "/responses", json=body, timeout=30,
                            headers={"Authorization": f"Bearer {sized.key_a}", "Cache-Control": "no-store"})
        assert answer.status_code == 400, answer.text
        return answer.json()["error"]

    error = refused({"model": "small-first", "input": "Think hard.", "reasoning": {"effort": "high"}})
    assert (error["code"], error["param"]) == ("model_capability_missing", "reasoning.effort")
    assert "reasoning effort (reasoning.effort)" in error["message"]
    error = refused({"model": "sim-mini", "input": "Weather?", "tools": [WEATHER]})
    assert (error["code"], error["param"]) == ("model_capability_missing", "tools")
    # The image is in the third input item; the chat form had the instructions' message before it.
    error = refused({"model": "sim-standard", "instructions": "Be brief.", "input": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                     {"type": "input_image", "image_url": PIXEL}]}]})
    assert (error["code"], error["param"]) == ("model_capability_missing", "input[2].content[1]")
    assert "image inputs (input[2].content[1])" in error["message"]
    error = refused({"model": "sim-mini", "input": words(1500), "max_output_tokens": 50})
    assert (error["code"], error["param"]) == ("context_length_exceeded", "input")
    error = refused({"model": "sim-mini", "input": "Hi", "max_output_tokens": 500})
    assert error["param"] == "max_output_tokens"

    mini = sized.models["sim-mini"]
    mini.supports_json_schema = False
    mini.save()
    schema = {"format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}}}
    assert wait_until(lambda: httpx.post(sized.gateway.v1 + "/responses", json={
        "model": "sim-mini", "input": "A city", "text": schema}, timeout=30,
        headers={"Authorization": f"Bearer {sized.key_b}"}).status_code == 400)
    error = refused({"model": "sim-mini", "input": "A city", "text": schema})
    assert (error["code"], error["param"]) == ("model_capability_missing", "text.format")
    with pytest.raises(openai.BadRequestError) as caught:  # the chat door still names the chat field
        client(sized).chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "A city"}],
                                              response_format={"type": "json_schema", "json_schema": {
                                                  "name": "city", "schema": {"type": "object"}}})
    assert caught.value.body["param"] == "response_format"
    assert request_logs(6, tenant=sized.tenant_a, endpoint="/v1/responses", status_code=400)
