"""The simulated upstream answers the official openai SDK, and its faults behave as documented."""

from __future__ import annotations

import asyncio
import math

import httpx
import openai
import pytest

from tests.gateway.conftest import Simulator


@pytest.fixture
def sim(simulator) -> Simulator:
    return simulator


def sdk(sim: Simulator, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.v1, api_key="unused", max_retries=0, **kwargs)


def ask(sim, content: str, **extra):
    return sdk(sim).chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": content}], **extra)


def test_it_answers_deterministically_from_the_prompt(sim):
    first, again, other = ask(sim, "What is Python?"), ask(sim, "What is Python?"), ask(sim, "What is Rust?")
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    assert first.usage.completion_tokens == 12  # --chunks 12 in the fixture
    assert first.usage.prompt_tokens == 3 * 4 // 3 + 3
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert first.system_fingerprint == "switchyard-simulated"


def test_it_labels_itself_simulated(sim):
    response = httpx.get(sim.v1 + "/models")
    assert response.headers["x-simulated-upstream"] == "true"
    assert {m["owned_by"] for m in response.json()["data"]} == {"switchyard-simulator"}


def test_it_streams_the_same_text_with_usage_only_when_asked(sim):
    plain = ask(sim, "stream this").choices[0].message.content
    with_usage = list(ask(sim, "stream this", stream=True, stream_options={"include_usage": True}))
    without = list(ask(sim, "stream this", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in with_usage if c.choices) == plain
    assert with_usage[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in without)


def test_it_caps_the_answer_at_max_tokens(sim):
    capped = ask(sim, "cap me", max_tokens=4)
    assert capped.usage.completion_tokens == 4
    assert capped.choices[0].finish_reason == "length"


def test_it_embeds_deterministic_unit_vectors(sim):
    client = sdk(sim)
    one = client.embeddings.create(model="sim-embed", input=["alpha", "beta"])
    again = client.embeddings.create(model="sim-embed", input="alpha")
    small = client.embeddings.create(model="sim-embed", input="alpha", dimensions=64)
    assert len(one.data[0].embedding) == 384
    assert math.isclose(sum(v * v for v in one.data[0].embedding), 1.0, rel_tol=1e-4)
    assert one.data[0].embedding == pytest.approx(again.data[0].embedding, rel=1e-6)
    assert one.data[0].embedding != pytest.approx(one.data[1].embedding)
    assert len(small.data[0].embedding) == 64


def test_it_rejects_bad_bodies_in_openai_shape(sim):
    response = httpx.post(sim.v1 + "/chat/completions", json={"model": "sim-mini", "messages": []})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    assert httpx.post(sim.v1 + "/chat/completions", content=b"{nope").status_code == 400


def test_it_injects_status_faults_for_a_model_and_a_count(sim):
    sim.fault(model="sim-mini", mode="status", status=500, count=1)
    with pytest.raises(openai.InternalServerError):
        ask(sim, "fail once")
    assert ask(sim, "then work").choices
    sim.fault(model="sim-mini", mode="status", status=429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(sim, "rate limited")
    assert caught.value.response.headers["retry-after"] == "3"


def test_it_cuts_a_stream_before_done(sim):
    sim.fault(model="*", mode="cut")
    with pytest.raises(httpx.HTTPError), httpx.stream(
        "POST", sim.v1 + "/chat/completions",
        json={"model": "sim-mini", "stream": True, "messages": [{"role": "user", "content": "cut"}]},
    ) as response:
        body = b"".join(response.iter_raw())
        assert b"[DONE]" not in body  # reached only if the cut surfaced as a clean end


def test_it_answers_invalid_json_and_garbage_when_asked(sim):
    sim.fault(model="*", mode="invalid_json")
    response = httpx.post(sim.v1 + "/chat/completions",
                          json={"model": "sim-mini", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    response = httpx.post(sim.v1 + "/chat/completions", headers={"x-sim-fault": "garbage"},
                          json={"model": "sim-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert b"data:" not in response.content


def test_it_times_out_a_client_with_a_short_timeout(sim):
    sim.fault(model="*", mode="timeout")
    with pytest.raises(openai.APITimeoutError):
        sdk(sim, timeout=0.5).chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "x"}])


def test_it_counts_requests_and_peak_concurrency(sim):
    async def run():
        client = openai.AsyncOpenAI(base_url=sim.v1, api_key="unused", max_retries=0,
                                    default_headers={"x-sim-ttft-ms": "300"})
        await asyncio.gather(*[client.chat.completions.create(
            model="sim-standard", messages=[{"role": "user", "content": f"n{i}"}]) for i in range(5)])
        await client.close()

    asyncio.run(run())
    stats = sim.stats()
    assert stats["requests"] == 5
    assert stats["by_model"] == {"sim-standard": 5}
    assert stats["max_in_flight"] == 5
    assert stats["in_flight"] == 0
