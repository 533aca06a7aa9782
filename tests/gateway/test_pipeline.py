"""The pipeline's step order, with providers answering from the in-memory transport: every
way a request ends leaves exactly one usage row, priced, with its limits settled."""

from __future__ import annotations

import time
from decimal import Decimal

import orjson
import pytest

from apps.core.errors import BadRequest, UpstreamError
from apps.gateway.dialects.anthropic.dialect import ANTHROPIC_MESSAGES
from apps.gateway.dialects.openai import OPENAI_CHAT
from apps.gateway.pipeline.run import ChatRequest, chat
from apps.gateway.runtime import Runtime
from apps.gateway.snapshot import KeyInfo, ModelInfo, ProviderInfo, Snapshot
from apps.providers.memory import MemoryTransport
from apps.providers.transport import UpstreamClientError, UpstreamFailure

PROVIDER = ProviderInfo(id=1, name="sim", kind="openai", base_url="http://127.0.0.1:9/v1", credential="",
                        timeout=5.0, max_concurrency=10)


def _model(id_: int, name: str) -> ModelInfo:
    return ModelInfo(id=id_, name=name, upstream_id=f"{name}-upstream", provider=PROVIDER, mode="chat", tier="simple",
                     price_id=None, input_price=Decimal("1"), cached_input_price=Decimal("0.5"),
                     output_price=Decimal("2"), context_window=8000, max_output_tokens=1000)


FIRST, SECOND = _model(1, "first"), _model(2, "second")
KEY = KeyInfo(id=7, prefix="sk-sy-test", key_hash="", tenant_id=3, tenant_slug="acme", allowed_models=None,
              expires_at=None, usable=True, cache_enabled=False)


def _answer(text: str = "Hello there.", *, usage: bool = True) -> dict:
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "model": "x",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    if usage:
        answer["usage"] = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    return answer


def _chunks(*texts: str) -> list[bytes]:
    events = [{"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]} for text in texts]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": len(texts),
                                            "total_tokens": 10 + len(texts)}})
    return [b"data: " + orjson.dumps(event) + b"\n\n" for event in events] + [b"data: [DONE]\n\n"]


@pytest.fixture
def runtime(settings):
    settings.GATEWAY_RETRIES = 0
    settings.GATEWAY_RETRY_BACKOFF = 0
    runtime = Runtime()
    runtime.snapshot = Snapshot(models={"first": FIRST, "second": SECOND}, global_rules=(), tenant_rules={},
                                simple_pattern=None, complex_pattern=None)
    runtime.transport = MemoryTransport()
    return runtime


def _rule_chain(runtime: Runtime) -> None:
    from apps.gateway.snapshot import RuleInfo

    rule = RuleInfo(id=11, tenant_id=None, priority=1, match_model="first", match_tier="", min_prompt_tokens=None,
                    max_prompt_tokens=None, tags=frozenset(), weight=1, chain=(FIRST, SECOND))
    runtime.snapshot = Snapshot(models=runtime.snapshot.models, global_rules=(rule,), tenant_rules={},
                                simple_pattern=None, complex_pattern=None)


def _request(body: dict, dialect=OPENAI_CHAT) -> ChatRequest:
    return ChatRequest(KEY, body, dialect, time.perf_counter())


BODY = {"model": "first", "messages": [{"role": "user", "content": "Say hello."}]}


async def test_it_answers_json_and_logs_one_priced_row(runtime):
    runtime.transport.script("first-upstream", _answer())
    answer = await chat(runtime, _request(dict(BODY)))
    assert orjson.loads(answer.raw)["choices"][0]["message"]["content"] == "Hello there."
    assert runtime.transport.sent[0].body["model"] == "first-upstream"
    [row] = runtime.usage.pending()
    assert (row["status_code"], row["model_used"], row["input_tokens"], row["output_tokens"]) == (200, "first", 10, 4)
    assert row["cost"] == FIRST.cost(10, 0, 4) and row["request_id"] == answer.call.request_id


async def test_it_falls_back_once_and_records_the_failure(runtime):
    _rule_chain(runtime)
    runtime.transport.script("first-upstream", UpstreamFailure("status 503", status=503))
    runtime.transport.script("second-upstream", _answer())
    answer = await chat(runtime, _request(dict(BODY)))
    assert answer.call.model is SECOND
    [row] = runtime.usage.pending()
    assert row["model_used"] == "second" and "first: status 503" in row["upstream_failures"]


async def test_it_logs_a_request_every_provider_failed(runtime):
    _rule_chain(runtime)
    runtime.transport.script("first-upstream", UpstreamFailure("status 500", status=500))
    runtime.transport.script("second-upstream", UpstreamFailure("timeout", timeout=True))
    with pytest.raises(UpstreamError):
        await chat(runtime, _request(dict(BODY)))
    [row] = runtime.usage.pending()
    assert row["status_code"] == 504 and row["cost"] == 0


async def test_it_logs_a_providers_refusal_without_billing_it(runtime):
    refusal = UpstreamClientError(400, b'{"error": {"message": "no", "code": "bad_thing"}}', "application/json",
                                  model=FIRST)
    runtime.transport.script("first-upstream", refusal)
    with pytest.raises(UpstreamClientError):
        await chat(runtime, _request(dict(BODY)))
    [row] = runtime.usage.pending()
    assert (row["status_code"], row["error_code"], row["cost"]) == (400, "bad_thing", 0)


async def test_it_logs_a_refused_body_once(runtime):
    with pytest.raises(BadRequest):
        await chat(runtime, _request({"model": "first", "messages": "not a list"}))
    [row] = runtime.usage.pending()
    assert row["status_code"] == 400 and row["requested_model"] == "first"
    assert runtime.transport.sent == []


async def test_it_relays_a_stream_and_logs_it_when_it_ends(runtime):
    runtime.transport.script("first-upstream", _chunks("Hel", "lo"))
    answer = await chat(runtime, _request({**BODY, "stream": True}))
    assert runtime.usage.pending() == []  # a stream logs itself at its end
    relayed = b"".join([piece async for piece in answer.stream])
    assert b": x-switchyard-cost " in relayed and relayed.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in relayed  # the client did not ask for usage
    [row] = runtime.usage.pending()
    assert (row["status_code"], row["output_tokens"], row["is_stream"]) == (200, 2, True)
    assert runtime.transport.in_flight == 0


async def test_it_logs_a_stream_its_door_never_relayed(runtime):
    runtime.transport.script("first-upstream", _chunks("Hi"))
    answer = await chat(runtime, _request({**BODY, "stream": True}))
    await answer.close()
    await answer.close()  # a second close adds nothing
    [row] = runtime.usage.pending()
    assert (row["status_code"], row["error_code"]) == (499, "client_closed_request")
    assert runtime.transport.in_flight == 0


async def test_it_translates_a_messages_request_for_an_openai_provider(runtime):
    runtime.transport.script("first-upstream", _answer("Bonjour."))
    body = {"model": "first", "max_tokens": 50, "messages": [{"role": "user", "content": "Say hello."}]}
    answer = await chat(runtime, _request(body, ANTHROPIC_MESSAGES))
    sent = runtime.transport.sent[0]
    assert sent.path == "/chat/completions" and sent.body["messages"][-1]["content"] == "Say hello."
    message = orjson.loads(answer.raw)
    assert message["type"] == "message" and message["content"][0]["text"] == "Bonjour."
    assert message["usage"]["output_tokens"] == 4
    [row] = runtime.usage.pending()
    assert row["endpoint"] == "/v1/messages" and row["cost"] == FIRST.cost(10, 0, 4)
