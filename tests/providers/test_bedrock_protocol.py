"""Bedrock's Converse protocol without a network: the chat form to Converse and back, a binary
event stream read as OpenAI chat chunks, and the region a request is signed for."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson

from apps.providers.memory import MemoryTransport
from apps.providers.protocols import chat_protocol, embeddings_path
from apps.providers.protocols.bedrock import completion_from_bedrock, converse_request, usage_from_bedrock
from apps.providers.sigv4 import region_of, signed_headers
from apps.providers.transport import UpstreamClientError
from apps.simulator.bedrock import frame


def _model(upstream_id: str = "anthropic.claude-3-5-haiku-20241022-v1:0"):
    provider = SimpleNamespace(id=1, name="b", kind="bedrock", base_url="https://bedrock-runtime.eu-west-3.amazonaws.com",
                               credential="AKID:secret:token", timeout=5.0, max_concurrency=4, api_version="")
    return SimpleNamespace(name="m", upstream_id=upstream_id, provider=provider)


def test_it_translates_a_conversation_with_a_tool_loop():
    body = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "tooluse_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Lima"}'}}]},
        {"role": "tool", "tool_call_id": "tooluse_1", "content": '{"forecast": "fog"}'},
        {"role": "user", "content": "Thanks"},
    ], "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "max_tokens": 100, "stop": ["END"]}
    out = converse_request(body)
    assert out["system"] == [{"text": "Be brief."}]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][1]["content"] == [{"toolUse": {"toolUseId": "tooluse_1", "name": "weather",
                                                          "input": {"city": "Lima"}}}]
    assert out["messages"][2]["content"] == [{"toolResult": {"toolUseId": "tooluse_1",
                                                             "content": [{"json": {"forecast": "fog"}}]}},
                                             {"text": "Thanks"}]
    assert out["toolConfig"] == {"tools": [{"toolSpec": {"name": "weather", "inputSchema": {"json": {
        "type": "object"}}}}], "toolChoice": {"any": {}}}
    assert out["inferenceConfig"] == {"maxTokens": 100, "stopSequences": ["END"]}


def test_a_cache_control_mark_becomes_a_cache_point_and_writes_are_reported_apart():
    marked = {"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral"}}
    out = converse_request({"messages": [
        {"role": "system", "content": [marked]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
    assert out["system"] == [{"text": "Long rules."}, {"cachePoint": {"type": "default"}}]
    assert out["messages"] == [{"role": "user", "content": [{"text": "Hi"}]}]
    usage = usage_from_bedrock({"inputTokens": 10, "cacheReadInputTokens": 0, "cacheWriteInputTokens": 90,
                                "outputTokens": 5})
    assert usage["prompt_tokens"] == 100 and usage["cache_creation_input_tokens"] == 90
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


def test_it_reads_an_answer_with_cache_reads_as_cached_tokens():
    parsed = {"output": {"message": {"role": "assistant", "content": [
        {"text": "Calling."}, {"toolUse": {"toolUseId": "t1", "name": "weather", "input": {"city": "Oslo"}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "cacheReadInputTokens": 90, "cacheWriteInputTokens": 0, "outputTokens": 5}}
    completion = completion_from_bedrock(parsed, "m")
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city":"Oslo"}'}
    assert completion["usage"]["prompt_tokens"] == 100
    assert completion["usage"]["prompt_tokens_details"] == {"cached_tokens": 90}
    guarded = completion_from_bedrock({"output": {"message": {"content": []}}, "stopReason": "guardrail_intervened"},
                                      "m")
    assert guarded["choices"][0]["finish_reason"] == "content_filter"


def test_an_event_stream_is_read_as_openai_chunks():
    transport = MemoryTransport()
    model = _model()
    data = (frame("messageStart", {"role": "assistant"})
            + b"".join(frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w}}) for w in ("Hi", "!"))
            + frame("contentBlockStop", {"contentBlockIndex": 0}) + frame("messageStop", {"stopReason": "max_tokens"})
            + frame("metadata", {"usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}}))
    transport.script(model.upstream_id, [data[:7], data[7:50], data[50:]])  # frames split anywhere

    async def read() -> bytes:
        stream = await chat_protocol("bedrock").stream_read(await transport.open_stream(model, "/x", b"{}"))
        out = stream.first
        while piece := await stream.readany():
            out += piece
        await stream.close()
        return out

    events = [e for e in asyncio.run(read()).split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Hi!"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["usage"]["total_tokens"] == 5


def test_requests_are_signed_for_the_urls_region_with_the_session_token():
    model = _model()
    headers = signed_headers(model.provider, chat_protocol("bedrock").path(model, stream=False), b"{}",
                             {"Content-Type": "application/json"})
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/")
    assert "/eu-west-3/bedrock/aws4_request" in headers["Authorization"]
    assert headers["X-Amz-Security-Token"] == "token"
    assert region_of("http://127.0.0.1:8001") == "us-east-1"
    assert chat_protocol("bedrock").path(model, stream=True) == \
        "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream"
    assert embeddings_path(model) is None


def test_a_bedrock_error_is_told_in_openais_shape():
    body = b'{"message": "Malformed input"}'
    refused = UpstreamClientError(400, body, "application/json", code="ValidationException")
    read = chat_protocol("bedrock").refusal_read(refused)
    assert read.code == "validation_exception"
    assert orjson.loads(read.body)["error"]["message"] == "Malformed input"
