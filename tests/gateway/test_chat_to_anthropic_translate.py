"""The chat-to-Anthropic translations, byte for byte: what the live tests cannot isolate. Every
chunk is validated with the ``openai`` SDK's own model."""

from __future__ import annotations

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from apps.core.errors import BadRequest
from apps.gateway.dialects.anthropic.chat_sse import ChatFromAnthropic
from apps.gateway.dialects.anthropic.from_chat import (
    chat_usage,
    completion_of_message,
    messages_request,
    openai_error_body,
)


def event(kind: str, **data) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def chunks(raw: bytes) -> list[dict]:
    """Parse chat SSE as a strict client would; comments and [DONE] kept as markers."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        if block.startswith(":"):
            out.append({"comment": block})
        elif block == "data: [DONE]":
            out.append({"done": True})
        else:
            assert block.startswith("data: ") and "\n" not in block, block
            data = orjson.loads(block[6:])
            if "error" not in data:
                ChatCompletionChunk.model_validate(data)
            out.append(data)
    return out


def translator(**options) -> ChatFromAnthropic:
    defaults = {"completion_id": "chatcmpl-1", "model": "claude", "created": 1, "include_usage": True,
                "json_tool": None, "usage_of": lambda: chat_usage(30, 10, 5, 9)}
    return ChatFromAnthropic(**{**defaults, **options})


def test_it_copies_text_verbatim_and_ends_with_usage_cost_and_done_in_order():
    pieces = ['He said "hi"\n', "caf\u00e9 \u2603 ", "back\\slash", " \U0001f682"]
    t = translator()
    raw = t.translate(event("message_start", message={"id": "m", "usage": {"input_tokens": 3}})
                      + event("content_block_start", index=0, content_block={"type": "text", "text": ""})
                      + event("ping"))
    for piece in pieces:
        raw += t.translate(event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece}))
    raw += t.translate(event("content_block_stop", index=0)
                       + event("message_delta", delta={"stop_reason": "max_tokens"}, usage={"output_tokens": 4})
                       + b": x-switchyard-cost 0.01\n\n" + event("message_stop"))
    got = chunks(raw)
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in got[1:5]] == pieces
    assert got[5]["choices"][0]["finish_reason"] == "length"
    assert got[6]["choices"] == [] and got[6]["usage"] == {
        "prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "prompt_tokens_details": {"cached_tokens": 10},
        "cache_creation_input_tokens": 5}
    assert got[7:] == [{"comment": ": x-switchyard-cost 0.01"}, {"done": True}]
    assert {c["id"] for c in got if "id" in c} == {"chatcmpl-1"}


def test_it_streams_parallel_tool_calls_and_skips_thinking():
    t = translator(include_usage=False)
    raw = t.translate(
        event("message_start", message={})
        + event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""})
        + event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hmm"})
        + event("content_block_start", index=1, content_block={"type": "tool_use", "id": "toolu_a", "name": "f",
                                                               "input": {}})
        + event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"city":'})
        + event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '"Paris"}'})
        + event("content_block_start", index=2, content_block={"type": "tool_use", "id": "toolu_b", "name": "g",
                                                               "input": {}})
        + event("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": "{}"})
        + event("message_delta", delta={"stop_reason": "tool_use"}) + event("message_stop"))
    got = chunks(raw)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in got if c.get("choices")
             and "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0] == {"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert "".join(c["function"]["arguments"] for c in calls if c["index"] == 0) == '{"city":"Paris"}'
    assert [c["id"] for c in calls if "id" in c] == ["toolu_a", "toolu_b"]
    assert got[-2]["choices"][0]["finish_reason"] == "tool_calls" and got[-1] == {"done": True}
    assert not any("usage" in c for c in got)  # not asked for
    assert "hmm" not in raw.decode()


def test_it_writes_a_json_schema_tools_input_as_content_and_an_error_as_an_error_event():
    t = translator(json_tool="card")
    raw = t.translate(
        event("content_block_start", index=0, content_block={"type": "tool_use", "id": "t", "name": "card",
                                                               "input": {}})
        + event("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": '{"a": 1}'})
        + event("message_delta", delta={"stop_reason": "tool_use"}))
    got = chunks(raw)
    assert got[0]["choices"][0]["delta"] == {"content": '{"a": 1}'} and got[1]["choices"][0]["finish_reason"] == "stop"
    error = chunks(t.translate(event("error", error={"type": "overloaded_error", "message": "busy"})))
    assert error == [{"error": {"message": "busy", "type": "overloaded_error", "param": None,
                                "code": "overloaded_error"}}]


def test_it_builds_anthropic_turns_from_a_chat_conversation():
    body = {"model": "auto", "stop": "END", "temperature": 2, "parallel_tool_calls": False,
            "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {
                "type": "function", "function": {"name": "f"}}, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "One"},
        {"role": "user", "content": [{"type": "text", "text": "Two"}]},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
            {"id": "b", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "2"}]},
        {"role": "user", "content": "Thanks"}]}
    sent = orjson.loads(messages_request(body, "claude-x", stream=True, max_tokens=1024))
    assert sent["system"] == "Be brief.\n\nUse tools."
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {"x": 1}},
                                          {"type": "tool_use", "id": "b", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": "1"},
                                     {"type": "tool_result", "tool_use_id": "b", "content": "2"},
                                     {"type": "text", "text": "Thanks"}]}]
    assert sent["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    assert sent["tool_choice"] == {"type": "tool", "name": "f", "disable_parallel_tool_use": True}
    assert (sent["model"], sent["max_tokens"], sent["stream"], sent["temperature"], sent["stop_sequences"]) == (
        "claude-x", 1024, True, 1, ["END"])


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 3}, "n"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
     "messages[0].content[0].image_url"),
    ({"tools": [{"type": "custom", "custom": {"name": "g"}}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "allowed_tools"}},
     "tool_choice"),
])
def test_it_refuses_what_has_no_anthropic_form_naming_the_field(body, param):
    with pytest.raises(BadRequest) as refused:
        messages_request({"model": "m", "messages": [{"role": "user", "content": "x"}], **body}, "c", stream=False,
                         max_tokens=10)
    assert refused.value.param == param and refused.value.status == 400


def test_it_reads_a_message_back_as_a_completion_the_sdk_parses():
    message = {"id": "msg_1", "type": "message", "model": "claude", "stop_reason": "tool_use", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}],
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 3, "output_tokens": 2}}
    completion = completion_of_message(message, completion_id="chatcmpl-1", json_tool=None,
                                       usage=chat_usage(8, 3, 0, 2))
    parsed = ChatCompletion.model_validate(completion)
    assert parsed.choices[0].message.content is None and parsed.choices[0].finish_reason == "tool_calls"
    assert parsed.choices[0].message.tool_calls[0].function.arguments == '{"a":1}'
    assert parsed.usage.prompt_tokens_details.cached_tokens == 3
    as_json = completion_of_message(message, completion_id="chatcmpl-1", json_tool="f", usage=chat_usage(8, 3, 0, 2))
    assert as_json["choices"][0]["message"] == {"role": "assistant", "content": '{"a":1}'}
    assert as_json["choices"][0]["finish_reason"] == "stop"
    body = orjson.loads(openai_error_body(400, b'{"type":"error","error":{"type":"invalid_request_error",'
                                               b'"message":"max_tokens: too large"}}'))
    assert body == {"error": {"message": "max_tokens: too large", "type": "invalid_request_error", "param": None,
                              "code": "invalid_request_error"}}
