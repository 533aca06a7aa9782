"""The Responses dialect's translations, event by event: what the live tests cannot isolate.
Every event is validated with the ``openai`` SDK's own models."""

from __future__ import annotations

import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from apps.core.errors import BadRequest, UpstreamError
from apps.gateway.dialects.responses.sse import ResponsesFromOpenAI
from apps.gateway.dialects.responses.translate import (
    response_from_completion,
    response_shell,
    response_usage,
    responses_body_translate,
)

EVENTS = TypeAdapter(ResponseStreamEvent)


def chunk(delta: dict, finish=None, **extra) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def events(raw: bytes) -> list[dict]:
    """Parse SSE as a strict client would: every event named, its data JSON of that type."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block or block.startswith(":"):
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), block
        data = orjson.loads(data_line[6:])
        assert data["type"] == name_line[7:]
        EVENTS.validate_python(data)
        out.append(data)
    return out


def translator(**original) -> ResponsesFromOpenAI:
    shell = response_shell({"model": "m", "input": "x", **original}, response_id="resp_abc", model="m",
                           created_at=1)
    return ResponsesFromOpenAI(frame=shell, usage_of=lambda: response_usage(7, 2, 5))


def test_it_copies_escaped_text_verbatim_and_decodes_it_once_at_the_end():
    pieces = ['He said "hi"\n', "caf\u00e9 \u2603 ", "back\\slash", " \U0001f682"]
    t = translator()
    raw = t.translate(chunk({"role": "assistant", "content": ""}))
    for piece in pieces:
        raw += t.translate(chunk({"content": piece}))
    raw += t.translate(chunk({}, "stop") + b": x-switchyard-cost 0.1\n\n" + b"data: [DONE]\n\n")
    got = events(raw)
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    assert [e["delta"] for e in got if e["type"] == "response.output_text.delta"] == pieces
    (done,) = [e for e in got if e["type"] == "response.output_text.done"]
    assert done["text"] == "".join(pieces)
    final = Response.model_validate(got[-1]["response"])
    assert final.output_text == "".join(pieces) and final.status == "completed"
    assert (final.usage.input_tokens, final.usage.input_tokens_details.cached_tokens,
            final.usage.output_tokens) == (7, 2, 5)
    assert b": x-switchyard-cost 0.1\n\n" in raw


def test_it_writes_a_run_of_text_deltas_read_at_once_as_it_writes_them_one_by_one():
    pieces = ['He said "hi"\n', "", "caf\u00e9 \u2603 ", "back\\slash", " \U0001f682"] * 3
    stream = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in pieces] + [
        chunk({}, "stop"), b"data: [DONE]\n\n"]
    one_by_one = translator()
    apart = b"".join(one_by_one.translate(event) for event in stream)
    at_once = translator()
    together = at_once.translate(b"".join(stream[:7])) + at_once.translate(b"".join(stream[7:]))
    assert together == apart
    got = events(together)
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    assert "".join(e["delta"] for e in got if e["type"] == "response.output_text.delta") == "".join(pieces)
    assert at_once.response["output"][0]["content"][0]["text"] == "".join(pieces)


def test_it_closes_the_text_item_before_a_tool_call_opens_and_reads_reasoning_tokens():
    t = translator(tools=[{"type": "function", "name": "f"}])
    raw = t.translate(chunk({"role": "assistant", "content": "Let me look."}))
    raw += t.translate(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                              "function": {"name": "f", "arguments": '{"a":'}}]}))
    raw += t.translate(chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}, "tool_calls"))
    raw += t.translate(b"data: " + orjson.dumps({"choices": [], "usage": {
        "prompt_tokens": 7, "completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 3}}}) + b"\n\n")
    raw += t.translate(b"data: [DONE]\n\n")
    kinds = [e["type"] for e in events(raw)]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    final = Response.model_validate(t.response)
    assert [item.type for item in final.output] == ["message", "function_call"]
    assert final.output[1].arguments == '{"a": 1}' and final.output[1].call_id == "call_1"
    assert final.usage.output_tokens_details.reasoning_tokens == 3
    assert t.tools


def test_it_ends_an_answer_cut_by_max_output_tokens_as_incomplete():
    t = translator(max_output_tokens=3)
    raw = t.translate(chunk({"content": "one two three"}) + chunk({}, "length") + b"data: [DONE]\n\n")
    last = events(raw)[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_it_writes_an_error_event_in_sequence():
    t = translator()
    raw = t.translate(chunk({"content": "Half"}))
    raw += t.error(UpstreamError("The upstream stream ended before it finished.", code="upstream_stream_cut"))
    got = events(raw)
    assert got[-1]["type"] == "error" and got[-1]["code"] == "upstream_stream_cut"
    assert [e["sequence_number"] for e in got] == list(range(len(got)))


def test_it_turns_a_completion_with_parallel_calls_into_function_call_items():
    completion = {"model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": '{"x": 1}'}}]}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 6, "prompt_tokens_details": {"cached_tokens": 1}}}
    response = response_from_completion(completion, response_shell({"input": "x"}, response_id="resp_1", model="m"))
    parsed = Response.model_validate(response)
    assert [(item.call_id, item.name) for item in parsed.output] == [("call_a", "f"), ("call_b", "g")]
    assert len({item.id for item in parsed.output}) == 2
    assert (parsed.usage.input_tokens, parsed.usage.input_tokens_details.cached_tokens) == (4, 1)


def test_it_sends_parallel_calls_and_their_results_as_one_assistant_turn():
    chat = responses_body_translate({"model": "m", "instructions": "Be brief.", "input": [
        {"role": "user", "content": "Two cities"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "a", "output": "1"},
        {"type": "function_call_output", "call_id": "b", "output": [{"type": "input_text", "text": "2"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []}],
        "text": {"format": {"type": "json_object"}}, "reasoning": {"effort": "low"}, "max_output_tokens": 50,
        "tool_choice": {"type": "function", "name": "f"}, "tools": [{"type": "function", "name": "f"}]})
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two cities"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "1"}, {"role": "tool", "tool_call_id": "b", "content": "2"}]
    assert chat["response_format"] == {"type": "json_object"} and chat["reasoning_effort"] == "low"
    assert chat["max_tokens"] == 50 and chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["tools"] == [{"type": "function", "function": {"name": "f"}}]


def test_it_sends_input_images_as_chat_image_parts():
    chat = responses_body_translate({"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Briefly."}]}]})
    assert chat["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "user", "content": "Briefly."}]


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "input[0].content[0].file_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x", "detail": "max"}]}]},
     "input[0].content[0].detail"),
    ({"input": [{"role": "developer", "content": [{"type": "input_image", "image_url": "https://x"}]}]},
     "input[0].content[0]"),
    ({"input": []}, "input"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "a"}]}, "input[0].output"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
    ({"input": [7]}, "input[0]"),
    ({"input": "x", "tool_choice": {"type": "web_search"}}, "tool_choice"),
    ({"input": "x", "background": True, "store": False}, "background"),
    ({"input": "x", "truncation": "middle"}, "truncation"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
])
def test_it_refuses_what_it_cannot_translate_naming_the_field(body, param):
    with pytest.raises(BadRequest) as refused:
        responses_body_translate({"model": "m", **body})
    assert refused.value.param == param
