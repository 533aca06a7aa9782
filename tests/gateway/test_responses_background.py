"""Background responses (``background: true``): created at once, run off the request through the
same pipeline, retrieved as they go, followed and replayed as a stream, cancelled. Live gateway,
the simulated upstream, the official ``openai`` SDK."""

from __future__ import annotations

import concurrent.futures
import json
from decimal import Decimal

import httpx
import openai
import pytest
from openai.types.responses import Response

from tests.gateway.conftest import gateway_start, gateway_stop, request_logs, wait_until
from tests.gateway.test_responses import EVENTS, client
from tests.gateway.test_responses_native import last_sent, native  # noqa: F401 (a fixture)


def raw_follow(world, response_id: str, *, key: str | None = None, after: int | None = None,
               until: str | None = None) -> tuple[list[dict], httpx.Response]:
    """The events of ``GET /v1/responses/{id}?stream=true`` (to the stream's end, or up to the
    first event of type ``until``), as sent."""
    query = "?stream=true" + (f"&starting_after={after}" if after is not None else "")
    events: list[dict] = []
    with httpx.stream("GET", world.gateway.v1 + f"/responses/{response_id}{query}", timeout=30,
                      headers={"Authorization": f"Bearer {key or world.key_a}"}) as answer:
        if answer.status_code != 200:
            answer.read()
            return events, answer
        name = None
        for line in answer.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["type"] == name
                events.append(event)
                if event["type"] == until:
                    break
    return events, answer


def validated(events: list[dict]) -> list[dict]:
    """``events``, each checked against the SDK's own event models (``response.cancelled``,
    which the SDK has no model for, through its response)."""
    for event in events:
        if event["type"] == "response.cancelled":
            assert Response.model_validate(event["response"]).status == "cancelled"
        else:
            EVENTS.validate_python(event)
    return events


def test_it_answers_queued_at_once_and_completes_off_the_request(world):
    sdk = client(world)
    raw = sdk.responses.with_raw_response.create(model="sim-mini", input="Work on this in the background",
                                                 background=True)
    created = raw.parse()
    assert created.status == "queued" and created.background is True and created.output == []
    assert created.id.startswith("resp_") and created.model == "sim-mini"
    # Followed live (the stream ends with the response): the SDK's own retrieve stream.
    events = list(sdk.responses.retrieve(created.id, stream=True))
    assert events[0].type == "response.created" and events[0].response.status == "queued"
    assert events[-1].type == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    done = sdk.responses.retrieve(created.id)
    assert done.status == "completed" and done.background is True and done.output_text
    assert done.usage.output_tokens > 0 and done.output_text == events[-1].response.output_text
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == done.output_text
    # The same answer the pipeline gives in the foreground, and one usage row, priced.
    foreground = sdk.responses.create(model="sim-mini", input="Work on this in the background", store=False,
                                      extra_headers={"Cache-Control": "no-store"})
    assert foreground.output_text == done.output_text
    rows = request_logs(2, tenant=world.tenant_a, endpoint="/v1/responses")
    row = next(row for row in rows if row.request_id == raw.headers["x-switchyard-request-id"])
    assert row.status_code == 200 and row.model_used == "sim-mini" and row.cost > Decimal(0)
    assert row.output_tokens == done.usage.output_tokens
    # Replayed from a sequence number; each event valid for the SDK.
    tail, _ = raw_follow(world, created.id, after=3)
    assert [event["sequence_number"] for event in validated(tail)] == list(range(4, len(events)))
    replayed = list(sdk.responses.retrieve(created.id, stream=True, starting_after=len(events) - 2))
    assert [event.type for event in replayed] == ["response.completed"]
    # A finished one cannot be cancelled; it can be continued.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.cancel(created.id)
    assert refused.value.body["code"] == "response_not_cancellable"
    after = sdk.responses.create(model="sim-mini", input="And then?", previous_response_id=created.id)
    assert after.output_text and after.background is False


def test_it_refuses_what_it_cannot_run_in_the_background(world):
    sdk = client(world)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="sim-mini", input="x", background=True, store=False)
    assert (refused.value.body["param"], refused.value.body["code"]) == ("background", "invalid_value")
    with pytest.raises(openai.NotFoundError):  # routing refuses before anything is queued
        sdk.responses.create(model="no-such-model", input="x", background=True)
    foreground = sdk.responses.create(model="sim-mini", input="In the foreground")
    answer = httpx.get(world.gateway.v1 + f"/responses/{foreground.id}?stream=true",
                       headers={"Authorization": f"Bearer {world.key_a}"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "stream"
    for after in ("x", "-1", "1.5"):
        answer = httpx.get(world.gateway.v1 + f"/responses/{foreground.id}?stream=true&starting_after={after}",
                           headers={"Authorization": f"Bearer {world.key_a}"})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "starting_after"
    with pytest.raises(openai.BadRequestError):
        sdk.responses.cancel(foreground.id)
    rows = request_logs(3, tenant=world.tenant_a, endpoint="/v1/responses")
    assert sorted(row.status_code for row in rows) == [200, 400, 404]


def test_it_cancels_a_response_in_progress_and_ends_its_stream(world):
    sdk = client(world)
    world.simulator.fault(model="sim-mini", mode="stall", count=1)  # three words, then silence
    created = sdk.responses.create(model="sim-mini", input="A long background job", background=True)
    seen, _ = raw_follow(world, created.id, until="response.output_text.delta")
    assert sdk.responses.retrieve(created.id).status == "in_progress"
    with pytest.raises(openai.BadRequestError) as unfinished:
        sdk.responses.create(model="sim-mini", input="And then?", previous_response_id=created.id)
    assert unfinished.value.body["code"] == "previous_response_in_progress"
    theirs = client(world, world.key_b)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.cancel(created.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(created.id)
    _, hidden = raw_follow(world, created.id, key=world.key_b)
    assert hidden.status_code == 404
    cancelled = sdk.responses.cancel(created.id)
    assert cancelled.status == "cancelled" and cancelled.id == created.id
    assert sdk.responses.retrieve(created.id).status == "cancelled"
    assert sdk.responses.cancel(created.id).status == "cancelled"  # again: the same answer
    events, _ = raw_follow(world, created.id, after=seen[-1]["sequence_number"])
    assert validated(events)[-1]["type"] == "response.cancelled"
    everything, _ = raw_follow(world, created.id)
    assert [event["sequence_number"] for event in everything] == list(range(len(everything)))
    assert wait_until(lambda: world.simulator.stats()["in_flight"] == 0)  # the provider's stream was closed
    (row,) = request_logs(1, tenant=world.tenant_a, endpoint="/v1/responses")
    assert (row.status_code, row.error_code) == (499, "client_closed_request")
    assert row.output_tokens > 0  # billed for what was produced


def test_it_cancels_a_queued_response_before_the_provider_answers(world):
    sdk = client(world)
    world.simulator.fault(model="sim-mini", mode="slow", delay=10, count=1)
    created = sdk.responses.create(model="sim-mini", input="Never mind", background=True)
    assert sdk.responses.cancel(created.id).status == "cancelled"
    events = list(sdk.responses.retrieve(created.id, stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.cancelled"
    (row,) = request_logs(1, tenant=world.tenant_a, endpoint="/v1/responses")
    assert row.status_code == 499 and row.output_tokens == 0


def test_it_streams_a_background_response_that_resumes_after_a_disconnect(world):
    sdk = client(world)
    world.simulator.fault(model="sim-mini", mode="slow", delay=0.3, count=1)
    with sdk.responses.create(model="sim-mini", input="Stream me in the background", background=True,
                              stream=True) as stream:
        first = next(iter(stream))  # then the client goes away
    assert first.type == "response.created" and first.response.background is True
    rest = list(sdk.responses.retrieve(first.response.id, stream=True, starting_after=first.sequence_number))
    assert [event.sequence_number for event in rest] == list(range(1, len(rest) + 1))
    assert rest[-1].type == "response.completed" and rest[-1].response.output_text
    assert sdk.responses.retrieve(first.response.id).output_text == rest[-1].response.output_text
    # Read to its end on create, the stream is the whole of it.
    events = list(sdk.responses.create(model="sim-mini", input="Stream me whole", background=True, stream=True))
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"


def test_a_response_whose_gateway_died_is_failed_not_left_in_progress(world, tmp_path):
    dying = gateway_start(tmp_path, extra_env={"RESPONSES_BACKGROUND_HEARTBEAT": "0.2",
                                               "RESPONSES_BACKGROUND_STALE": "4"})
    try:
        sdk = openai.OpenAI(base_url=dying.v1, api_key=world.key_a, max_retries=0)
        world.simulator.fault(model="sim-mini", mode="stall", count=2)
        created = sdk.responses.create(model="sim-mini", input="Lost with its gateway", background=True)
        other = sdk.responses.create(model="sim-mini", input="Cancelled from elsewhere", background=True)
        assert wait_until(lambda: {sdk.responses.retrieve(created.id).status,
                                   sdk.responses.retrieve(other.id).status} == {"in_progress"})
        # Cancelled through another gateway process: the run sees it at its next write and stops.
        assert client(world).responses.cancel(other.id).status == "cancelled"
        events = list(sdk.responses.retrieve(other.id, stream=True))
        assert events[-1].type == "response.cancelled"
        assert [event.sequence_number for event in events] == list(range(len(events)))
        assert wait_until(lambda: world.simulator.stats()["in_flight"] == 1)  # its provider stream closed
        # Followed through another process (which reads its row) while it runs, and after its process died.
        follower = concurrent.futures.ThreadPoolExecutor(1).submit(
            lambda: list(client(world).responses.retrieve(created.id, stream=True)))
        assert wait_until(lambda: world.simulator.stats()["in_flight"] == 1 and not follower.done())
        dying.proc.kill()
        dying.proc.wait()
    finally:
        gateway_stop(dying)
    # Another process reads it: its run did not write it again in time (the dead process's 4 s: a
    # loaded machine can hold a live run's heartbeat, every 0.2 s, back by more than a second).
    followed = follower.result(timeout=30)
    assert followed[0].type == "response.created" and followed[-1].type == "response.failed"
    assert [event.sequence_number for event in followed] == list(range(len(followed)))
    sdk = client(world)
    assert sdk.responses.retrieve(created.id).status == "failed"
    failed = sdk.responses.retrieve(created.id)
    assert failed.error.code == "server_error" and failed.background is True
    events = list(sdk.responses.retrieve(created.id, stream=True))
    assert events[-1].type == "response.failed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    with pytest.raises(openai.BadRequestError):
        sdk.responses.cancel(created.id)


def test_a_background_response_replays_a_cache_hit_and_runs_on_a_provider_serving_responses(native):  # noqa: F811
    sdk = client(native)
    first = sdk.responses.create(model="gpt-native", input="Cached in the background", background=True)
    events = list(sdk.responses.retrieve(first.id, stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.background is True
    assert "background" not in last_sent(native) and last_sent(native)["stream"] is True  # the gateway runs it
    again = sdk.responses.create(model="gpt-native", input="Cached in the background", background=True)
    replayed = list(sdk.responses.retrieve(again.id, stream=True))
    assert [event.sequence_number for event in replayed] == list(range(len(replayed)))
    assert replayed[-1].type == "response.completed"
    assert replayed[-1].response.output_text == events[-1].response.output_text
    assert sdk.responses.retrieve(again.id).status == "completed"
    rows = request_logs(2, tenant=native.tenant_a, endpoint="/v1/responses")
    assert [row.cache_outcome for row in rows] == ["miss", "exact"]
    assert rows[0].model_used == "gpt-native" and rows[0].cost > Decimal(0)


def test_a_background_response_that_fails_says_why(world):
    sdk = client(world)
    world.simulator.fault(model="sim-mini", mode="cut", count=1)  # mid-stream
    cut = sdk.responses.create(model="sim-mini", input="Cut in the background", background=True)
    events = validated(raw_follow(world, cut.id)[0])
    assert [event["type"] for event in events][-2:] == ["error", "response.failed"]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    failed = sdk.responses.retrieve(cut.id)
    assert failed.status == "failed" and failed.error.code == "server_error"
    assert failed.error.message.startswith("upstream_stream_cut: ")
    world.simulator.fault(model="sim-mini", mode="status", status=500, count=2)  # the attempt and its retry
    refused = sdk.responses.create(model="sim-mini", input="Refused in the background", background=True)
    events = validated(raw_follow(world, refused.id)[0])
    assert events[-1]["type"] == "response.failed"
    assert sdk.responses.retrieve(refused.id).status == "failed"
    rows = request_logs(2, tenant=world.tenant_a, endpoint="/v1/responses")
    assert sorted(row.status_code for row in rows) == [502, 502]
