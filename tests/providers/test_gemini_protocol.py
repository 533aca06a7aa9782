"""Gemini's protocol without a network: the chat form to ``generateContent`` and back, and a
Gemini SSE stream read as OpenAI chat chunks (the live round trip is tests/gateway/test_provider_protocols.py)."""

from __future__ import annotations

import asyncio
import base64
from types import SimpleNamespace

import orjson
import pytest

from apps.providers.memory import MemoryTransport
from apps.providers.protocols import chat_protocol
from apps.providers.protocols.azure import azure_path
from apps.providers.protocols.gemini import completion_from_gemini, gemini_request, usage_from_gemini
from apps.providers.transport import UpstreamClientError, UpstreamFailure


def _model(kind: str = "gemini", upstream_id: str = "gemini-2.5-flash", api_version: str = ""):
    provider = SimpleNamespace(id=1, name="p", kind=kind, base_url="http://x", credential="k", timeout=5.0,
                               max_concurrency=4, api_version=api_version)
    return SimpleNamespace(name="m", upstream_id=upstream_id, provider=provider)


PNG = base64.b64encode(b"\x89PNG fake").decode()


def test_it_translates_a_conversation_with_tools_and_images():
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is in it, and the weather?"},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_abc__thought__c2ln", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_abc__thought__c2ln", "content": "sunny"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather now",
                                                    "parameters": {"type": "object",
                                                                   "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "max_tokens": 50, "temperature": 0.2, "stop": "END", "reasoning_effort": "low",
    }
    out = gemini_request(body)
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in out["contents"]] == ["user", "model", "user"]
    assert out["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    assert out["contents"][1]["parts"] == [{"functionCall": {"name": "weather", "args": {"city": "Paris"}},
                                            "thoughtSignature": "c2ln"}]
    # the tool's result and the next user turn share one user turn
    assert out["contents"][2]["parts"] == [{"functionResponse": {"name": "weather", "response": {"result": "sunny"}}},
                                           {"text": "And tomorrow?"}]
    assert out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["properties"] == {
        "city": {"type": "string"}}
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}}
    assert out["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 50, "stopSequences": ["END"],
                                       "thinkingConfig": {"thinkingBudget": 1024}}


def test_it_reads_an_answer_back_with_its_finish_reason_and_usage():
    parsed = {"candidates": [{"content": {"role": "model", "parts": [{"text": "thinking", "thought": True},
                                                                      {"text": "Hello "}, {"text": "there"}]},
                              "finishReason": "MAX_TOKENS", "index": 0}],
              "usageMetadata": {"promptTokenCount": 100, "cachedContentTokenCount": 40, "candidatesTokenCount": 7,
                                "thoughtsTokenCount": 20, "totalTokenCount": 127},
              "modelVersion": "gemini-2.5-flash", "responseId": "r1"}
    completion = completion_from_gemini(parsed, "gemini-2.5-flash")
    choice = completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello there"}
    assert choice["finish_reason"] == "length"
    assert completion["usage"] == {"prompt_tokens": 100, "completion_tokens": 27, "total_tokens": 127,
                                   "prompt_tokens_details": {"cached_tokens": 40},
                                   "completion_tokens_details": {"reasoning_tokens": 20}}
    safety = completion_from_gemini({"candidates": [{"finishReason": "SAFETY"}]}, "g")
    assert safety["choices"][0]["finish_reason"] == "content_filter"
    assert usage_from_gemini({"totalTokenCount": 3}) is None


def test_it_reads_function_calls_as_tool_calls_carrying_the_signature():
    parsed = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}, "thoughtSignature": "U0lH"}]},
        "finishReason": "STOP"}], "responseId": "r2"}
    choice = completion_from_gemini(parsed, "g")["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "weather", "arguments": '{"city":"Oslo"}'}
    assert call["id"].startswith("call_") and call["id"].endswith("__thought__U0lH")
    assert choice["message"]["content"] is None
    # sent back as it came, the call carries its signature to Gemini again
    again = gemini_request({"messages": [{"role": "user", "content": "hi"}, choice["message"]]})
    assert again["contents"][1]["parts"][0]["thoughtSignature"] == "U0lH"


def test_a_blocked_prompt_is_a_content_filter_refusal_and_no_candidate_a_failure():
    protocol = chat_protocol("gemini")
    with pytest.raises(UpstreamClientError) as refused:
        protocol.json_read(b"{}", {"promptFeedback": {"blockReason": "SAFETY"}}, _model())
    assert refused.value.status == 400 and refused.value.code == "content_filter"
    with pytest.raises(UpstreamFailure):
        protocol.json_read(b"{}", {"candidates": []}, _model())


def test_a_gemini_error_is_told_in_openais_shape():
    google = orjson.dumps({"error": {"code": 400, "message": "Bad field", "status": "INVALID_ARGUMENT"}})
    read = chat_protocol("gemini").refusal_read(UpstreamClientError(400, google, "application/json"))
    assert read.code == "invalid_argument"
    assert orjson.loads(read.body) == {"error": {"message": "Bad field", "type": "invalid_request_error",
                                                 "param": None, "code": "invalid_argument"}}


def _events(*chunks: dict) -> bytes:
    return b"".join(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n" for chunk in chunks)


def _openai_chunks(data: bytes) -> list:
    return [orjson.loads(e[6:]) if e != b"data: [DONE]" else "[DONE]" for e in data.split(b"\n\n") if e]


def test_a_stream_is_read_as_openai_chunks_with_usage_and_done():
    transport = MemoryTransport()
    model = _model()
    stream_bytes = _events(
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}], "responseId": "s1"},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
         "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2, "thoughtsTokenCount": 4}},
    )
    cut = 30  # the first event arrives in two reads, split inside its \r\n\r\n too
    transport.script(model.upstream_id, [stream_bytes[:cut], stream_bytes[cut:-3], stream_bytes[-3:]])

    async def read() -> bytes:
        opened = await transport.open_stream(model, "/x", b"{}")
        stream = await chat_protocol("gemini").stream_read(opened)
        out = stream.first
        while piece := await stream.readany():
            out += piece
        await stream.close()
        return out

    chunks = _openai_chunks(asyncio.run(read()))
    assert chunks[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert chunks[0]["id"] == "chatcmpl-s1" and chunks[0]["object"] == "chat.completion.chunk"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1] if c["choices"]) == "Hello"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"]][-1] == "stop"
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["completion_tokens"] == 6
    assert transport.in_flight == 0


def test_a_stream_that_fails_before_any_content_can_fall_back():
    transport = MemoryTransport()
    model = _model()
    transport.script(model.upstream_id, [_events({"error": {"code": 503, "status": "UNAVAILABLE"}})])

    async def read():
        opened = await transport.open_stream(model, "/x", b"{}")
        await chat_protocol("gemini").stream_read(opened)

    with pytest.raises(UpstreamFailure) as failed:
        asyncio.run(read())
    assert failed.value.status == 503
    assert transport.in_flight == 0  # the connection went back


@pytest.mark.parametrize(("version", "path"), [
    ("", "/openai/v1/chat/completions"),
    ("v1", "/openai/v1/chat/completions"),
    ("preview", "/openai/v1/chat/completions?api-version=preview"),
    ("2024-10-21", "/openai/deployments/my%20dep/chat/completions?api-version=2024-10-21"),
])
def test_azure_paths_follow_the_api_version(version, path):
    assert azure_path(_model("azure", "my dep", version)) == path
    assert chat_protocol("azure").path(_model("azure", "my dep", version), stream=True) == path


def test_gemini_paths_name_the_model_and_the_stream():
    protocol = chat_protocol("gemini")
    assert protocol.path(_model(upstream_id="models/gemini-2.5-pro"), stream=False) == \
        "/models/gemini-2.5-pro:generateContent"
    assert protocol.path(_model(), stream=True) == "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
