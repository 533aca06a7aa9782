"""The simulated upstream answers the official openai SDK, and its faults behave as documented.

The ``simulator`` fixture (tests/conftest.py) runs ``python -m apps.simulator.server --ttft-ms 5
--chunks 12`` in a subprocess; no test here touches the database.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import struct
import time

import httpx
import openai
import pytest

from tests.live import Simulator, wait_until

USER = [{"role": "user", "content": "x"}]


@pytest.fixture
def sim(simulator) -> Simulator:
    return simulator


def sdk(sim: Simulator, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.v1, api_key="unused", max_retries=0, **kwargs)


def ask(sim: Simulator, content: str, **extra):
    return sdk(sim).chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": content}], **extra)


def post_chat(sim: Simulator, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(sim.v1 + "/chat/completions", json=body, timeout=10, **kwargs)


# --- chat --------------------------------------------------------------------------------

def test_it_answers_deterministically_from_the_prompt(sim):
    first, again, other = ask(sim, "What is Python?"), ask(sim, "What is Python?"), ask(sim, "What is Rust?")
    assert first.choices[0].message.content
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    assert first.model == "sim-mini"
    assert first.object == "chat.completion"
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].finish_reason == "stop"
    assert first.usage.completion_tokens == 12  # --chunks 12 in the fixture
    assert first.usage.prompt_tokens == 3 * 4 // 3 + 3  # three words, one message
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert first.system_fingerprint == "switchyard-simulated"


def test_it_counts_prompt_tokens_over_every_message(sim):
    messages = [{"role": "system", "content": "be brief and exact"},
                {"role": "user", "content": [{"type": "text", "text": "two words"}]},
                {"role": "user", "content": "one more sentence here please"}]
    answer = sdk(sim).chat.completions.create(model="sim-standard", messages=messages)
    assert answer.usage.prompt_tokens == (4 + 2 + 5) * 4 // 3 + 3 * 3
    assert answer.model == "sim-standard"


def test_it_writes_capitalised_sentences_with_mixed_punctuation(sim):
    content = ask(sim, "Tell me a long story", extra_headers={"x-sim-chunks": "80"}).choices[0].message.content
    assert len(content.split()) == 80
    sentences = [s for s in re.split(r"(?<=[.?!]) ", content) if s]
    assert len(sentences) > 3
    assert all(s[0].isupper() and s[-1] in ".?!" for s in sentences)
    assert re.search(r"[?!] ", content)


def test_it_streams_the_same_text_with_usage_only_when_asked(sim):
    plain = ask(sim, "stream this").choices[0].message.content
    with_usage = list(ask(sim, "stream this", stream=True, stream_options={"include_usage": True}))
    without = list(ask(sim, "stream this", stream=True))
    assert with_usage[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_usage if c.choices) == plain
    assert "".join(c.choices[0].delta.content or "" for c in without) == plain
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage.completion_tokens == 12
    assert with_usage[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in without)
    assert without[-1].choices[0].finish_reason == "stop"
    assert len(without) == 1 + 12 + 1  # role chunk, one chunk per word, finish chunk


def test_it_frames_the_stream_as_server_sent_events_ending_in_done(sim):
    response = post_chat(sim, {"model": "sim-mini", "stream": True, "messages": USER})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    events = response.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])


def test_it_caps_the_answer_at_max_tokens(sim):
    capped = ask(sim, "cap me", max_tokens=4)
    assert capped.usage.completion_tokens == 4
    assert capped.choices[0].finish_reason == "length"
    newer = ask(sim, "cap me", max_completion_tokens=5)
    assert newer.usage.completion_tokens == 5
    chunks = list(ask(sim, "cap me", max_tokens=4, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == capped.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 4
    assert ask(sim, "cap me", max_tokens=100).choices[0].finish_reason == "stop"


def test_it_takes_its_knobs_from_request_headers(sim):
    answer = ask(sim, "knobs", extra_headers={"x-sim-chunks": "3"})
    assert answer.usage.completion_tokens == 3
    started = time.monotonic()
    ask(sim, "knobs", extra_headers={"x-sim-ttft-ms": "300"})
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    chunks = list(ask(sim, "knobs", stream=True, extra_headers={"x-sim-chunk-delay-ms": "40", "x-sim-chunks": "6"}))
    assert time.monotonic() - started >= 5 * 0.04
    assert len(chunks) == 1 + 6 + 1


def test_it_rejects_bad_bodies_in_openai_shape(sim):
    for body, param in [({"model": "sim-mini", "messages": []}, "messages"), ({"model": "sim-mini"}, "messages"),
                        ({"messages": USER}, "model"), ({"model": "", "messages": USER}, "model")]:
        response = post_chat(sim, body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert set(error) == {"message", "type", "param", "code"}
    assert httpx.post(sim.v1 + "/chat/completions", content=b"{nope").status_code == 400
    with pytest.raises(openai.BadRequestError):
        sdk(sim).chat.completions.create(model="sim-mini", messages=[])
    assert sim.stats()["requests"] == 0  # rejected requests are not counted


# --- embeddings and models ---------------------------------------------------------------

def test_it_embeds_deterministic_unit_vectors(sim):
    client = sdk(sim)
    one = client.embeddings.create(model="sim-embed", input=["alpha", "beta"])
    again = client.embeddings.create(model="sim-embed", input="alpha")
    small = client.embeddings.create(model="sim-embed", input="alpha", dimensions=64)
    assert len(one.data[0].embedding) == 384
    assert [d.index for d in one.data] == [0, 1]
    assert math.isclose(sum(v * v for v in one.data[0].embedding), 1.0, rel_tol=1e-4)
    assert one.data[0].embedding == pytest.approx(again.data[0].embedding, rel=1e-6)
    assert one.data[0].embedding != pytest.approx(one.data[1].embedding)
    assert len(small.data[0].embedding) == 64
    assert math.isclose(sum(v * v for v in small.data[0].embedding), 1.0, rel_tol=1e-4)
    assert one.usage.prompt_tokens == one.usage.total_tokens == 2 * (1 * 4 // 3 + 1)


def test_it_encodes_embeddings_as_floats_or_little_endian_base64(sim):
    url = sim.v1 + "/embeddings"
    floats = httpx.post(url, json={"model": "sim-embed", "input": "gamma", "encoding_format": "float"}).json()
    packed = httpx.post(url, json={"model": "sim-embed", "input": "gamma", "encoding_format": "base64"}).json()
    decoded = struct.unpack("<384f", base64.b64decode(packed["data"][0]["embedding"]))
    assert isinstance(floats["data"][0]["embedding"], list)
    assert list(decoded) == pytest.approx(floats["data"][0]["embedding"], rel=1e-6, abs=1e-7)


def test_it_rejects_token_arrays_and_bad_embedding_inputs(sim):
    url = sim.v1 + "/embeddings"
    for body in [{"model": "sim-embed", "input": [[1, 2, 3]]}, {"model": "sim-embed", "input": []},
                 {"model": "sim-embed"}, {"model": "sim-embed", "input": "x", "dimensions": 0}]:
        response = httpx.post(url, json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_it_lists_its_models_and_labels_every_response_simulated(sim):
    models = sdk(sim).models.list()
    assert [m.id for m in models.data] == ["sim-mini", "sim-standard", "sim-premium", "sim-embed"]
    assert {m.owned_by for m in models.data} == {"switchyard-simulator"}
    responses = [httpx.get(sim.v1 + "/models"), post_chat(sim, {"model": "sim-mini", "messages": USER}),
                 post_chat(sim, {"model": "sim-mini"}), httpx.get(sim.base + "/_sim/stats"),
                 post_chat(sim, {"model": "sim-mini", "stream": True, "messages": USER}),
                 httpx.post(sim.v1 + "/embeddings", json={"model": "sim-embed", "input": "x"})]
    assert [r.headers["x-simulated-upstream"] for r in responses] == ["true"] * len(responses)


# --- faults ------------------------------------------------------------------------------

def test_it_injects_status_faults_for_a_model_and_a_count(sim):
    sim.fault(model="sim-mini", mode="status", status=500, count=2)
    assert sdk(sim).chat.completions.create(model="sim-premium", messages=USER).choices  # not this model
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as caught:
            ask(sim, "fail twice")
        assert caught.value.body["code"] == "simulated_fault"
    assert ask(sim, "then work").choices
    sim.fault(model="sim-mini", mode="status", status=429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(sim, "rate limited")
    assert caught.value.response.headers["retry-after"] == "3"


def test_it_keeps_a_fault_until_cleared_with_count_minus_one(sim):
    sim.fault(model="*", mode="status", status=503, count=-1)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            ask(sim, "down")
    with pytest.raises(openai.InternalServerError):
        sdk(sim).embeddings.create(model="sim-embed", input="down too")
    assert httpx.delete(sim.base + "/_sim/faults").status_code == 200
    assert ask(sim, "up again").choices


def test_it_validates_fault_requests(sim):
    url = sim.base + "/_sim/faults"
    for spec in [{"mode": "explode"}, {"mode": "status", "count": 0}, {"mode": "status", "status": "x"},
                 {"mode": "status", "status": 42}, {"mode": "status", "retry_after": "soon"}]:
        assert httpx.post(url, json=spec).status_code == 400, spec
    assert sim.stats()["faults"] == 0


def test_it_takes_a_fault_from_a_request_header(sim):
    with pytest.raises(openai.InternalServerError) as caught:
        ask(sim, "header", extra_headers={"x-sim-fault": "status:503"})
    assert caught.value.status_code == 503
    with pytest.raises(openai.BadRequestError):
        ask(sim, "header", extra_headers={"x-sim-fault": "status:400"})
    assert ask(sim, "no header").choices  # the header fault is not queued


def test_it_cuts_a_stream_before_done(sim):
    sim.fault(model="*", mode="cut")
    received = b""
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream(
        "POST", sim.v1 + "/chat/completions",
        json={"model": "sim-mini", "stream": True, "messages": [{"role": "user", "content": "cut"}]},
    ) as response:
        for piece in response.iter_raw():
            received += piece
    assert received.count(b'"delta":{"content"') == 3  # three words went out before the cut
    assert b"finish_reason\":\"stop" not in received
    assert b"[DONE]" not in received


def test_it_cuts_a_stream_under_the_sdk_and_drops_a_plain_request(sim):
    sim.fault(model="sim-mini", mode="cut", count=2)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in ask(sim, "cut", stream=True):
            received.append(chunk)
    assert received and received[0].choices[0].delta.role == "assistant"
    with pytest.raises(openai.APIConnectionError):
        ask(sim, "cut")
    assert ask(sim, "whole").choices[0].message.content


def test_it_answers_invalid_json_and_garbage_when_asked(sim):
    sim.fault(model="*", mode="invalid_json")
    response = post_chat(sim, {"model": "sim-mini", "messages": USER})
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    with pytest.raises(ValueError):
        ask(sim, "x", stream=True, extra_headers={"x-sim-fault": "invalid_json"}).__next__()
    response = post_chat(sim, {"model": "sim-mini", "stream": True, "messages": USER},
                         headers={"x-sim-fault": "garbage"})
    assert response.status_code == 200
    assert b"data:" not in response.content
    response = post_chat(sim, {"model": "sim-mini", "messages": USER}, headers={"x-sim-fault": "garbage"})
    assert response.headers["content-type"].startswith("text/plain")
    response = httpx.post(sim.v1 + "/embeddings", json={"model": "sim-embed", "input": "x"},
                          headers={"x-sim-fault": "invalid_json"})
    with pytest.raises(ValueError):
        response.json()


def test_it_leaves_usage_out_when_asked(sim):
    sim.fault(model="*", mode="no_usage", count=2)
    assert ask(sim, "no usage").usage is None
    chunks = list(ask(sim, "no usage", stream=True, stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks)
    assert ask(sim, "usage again").usage.completion_tokens == 12


def test_it_times_out_a_client_with_a_short_timeout(sim):
    sim.fault(model="*", mode="timeout")
    with pytest.raises(openai.APITimeoutError):  # the server never answers: the client's timeout ends it
        sdk(sim, timeout=0.5).chat.completions.create(model="sim-mini", messages=USER)
    assert wait_until(lambda: sim.stats()["in_flight"] == 0)  # the server let go once the client left
    assert sim.stats()["max_in_flight"] == 1


def test_it_times_out_async_clients_too(sim):
    async def run():
        client = openai.AsyncOpenAI(base_url=sim.v1, api_key="unused", max_retries=0, timeout=0.5)
        try:
            await client.embeddings.create(model="sim-embed", input="x", extra_headers={"x-sim-fault": "timeout"})
        finally:
            await client.close()

    with pytest.raises(openai.APITimeoutError):
        asyncio.run(run())


# --- stats -------------------------------------------------------------------------------

def test_it_counts_requests_and_peak_concurrency(sim):
    async def run():
        client = openai.AsyncOpenAI(base_url=sim.v1, api_key="unused", max_retries=0,
                                    default_headers={"x-sim-ttft-ms": "300"})
        answers = await asyncio.gather(*[client.chat.completions.create(
            model="sim-standard", messages=[{"role": "user", "content": f"n{i}"}]) for i in range(5)])
        await client.close()
        return answers

    answers = asyncio.run(run())
    assert len({a.choices[0].message.content for a in answers}) == 5
    stats = sim.stats()
    assert stats["requests"] == 5
    assert stats["by_model"] == {"sim-standard": 5}
    assert stats["max_in_flight"] == 5
    assert stats["in_flight"] == 0


def test_it_resets_its_counters_and_faults(sim):
    ask(sim, "count me")
    sdk(sim).embeddings.create(model="sim-embed", input="count me")
    sim.fault(model="*", mode="status", count=-1)
    stats = sim.stats()
    assert (stats["requests"], stats["by_model"], stats["faults"]) == (2, {"sim-mini": 1, "sim-embed": 1}, 1)
    sim.reset()
    assert sim.stats() == {"requests": 0, "by_model": {}, "in_flight": 0, "max_in_flight": 0, "faults": 0}
    assert ask(sim, "works").choices


def test_it_counts_only_text_parts_and_answers_whatever_other_parts_hold(sim):
    parts = [{"type": "text", "text": "three small words"}, {"type": "", "text": {}}, {"type": "image_url", "text": 5,
             "image_url": {"url": "data:image/png;base64,AA=="}}]
    response = post_chat(sim, {"model": "sim-mini", "messages": [{"role": "user", "content": parts}]})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 3 * 4 // 3 + 3
    native = httpx.post(sim.v1 + "/messages", headers={"anthropic-version": "2023-06-01"}, timeout=10, json={
        "model": "sim-mini", "max_tokens": 5, "messages": [{"role": "user", "content": parts}]})
    assert native.status_code == 200, native.text
    assert native.json()["usage"]["input_tokens"] == 3 * 4 // 3 + 3


def test_it_serves_the_responses_api_the_sdk_parses(sim):
    client = sdk(sim)
    response = client.responses.create(model="sim-mini", instructions="Be brief.", input="Say hello",
                                       max_output_tokens=5, reasoning={"effort": "low"})
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert len(response.output_text.split()) == 5
    assert response.usage.output_tokens == 5 + 8 and response.usage.output_tokens_details.reasoning_tokens == 8
    chat = ask(sim, "Say hello", max_tokens=5)
    assert chat.usage.prompt_tokens < response.usage.input_tokens  # the instructions count too
    with client.responses.stream(model="sim-mini", input="Stream it") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final.output_text
    assert len(final.output_text.split()) == 12 and events[-1].type == "response.completed"
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}}}
    (call,) = client.responses.create(model="sim-mini", input="x", tools=[tool], tool_choice="required").output
    assert call.type == "function_call" and call.name == "lookup" and '"days":42' in call.arguments
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="sim-mini", input="x", previous_response_id="resp_unknown")
