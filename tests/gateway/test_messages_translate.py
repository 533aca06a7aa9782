"""The Messages door's translations, byte for byte: what the live tests cannot isolate."""

from __future__ import annotations

import orjson
import pytest

from apps.core.errors import GatewayError, LimitsUnavailable, UpstreamError, UpstreamTimeout
from apps.gateway.dialects.anthropic.errors import error_event, error_render
from apps.gateway.dialects.anthropic.sse import AnthropicFromOpenAI
from apps.gateway.dialects.anthropic.translate import messages_body_translate


def chunk(delta: dict, finish=None, **extra) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def events(raw: bytes) -> list[tuple[str, dict]]:
    """Parse SSE as a strict client would: every event named, every data JSON."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block or block.startswith(":"):
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), block
        data = orjson.loads(data_line[6:])
        assert data["type"] == name_line[7:]
        out.append((name_line[7:], data))
    return out


def test_it_copies_escaped_text_verbatim_and_ends_with_usage():
    pieces = ['He said "hi"\n', "caf\u00e9 \u2603 ", "back\\slash", " \U0001f682"]
    translator = AnthropicFromOpenAI(message_id="msg_1", model="m",
                                     usage_of=lambda: {"input_tokens": 5, "output_tokens": 4})
    raw = translator.translate(chunk({"role": "assistant", "content": ""}))
    for piece in pieces:
        raw += translator.translate(chunk({"content": piece}))
    raw += translator.translate(chunk({}, "length") + b": x-switchyard-cost 0.01\n\ndata: [DONE]\n\n")
    parsed = events(raw)
    assert [name for name, _ in parsed] == ["message_start", "ping", "content_block_start",
                                            *["content_block_delta"] * 4, "content_block_stop", "message_delta",
                                            "message_stop"]
    assert "".join(d["delta"]["text"] for name, d in parsed if name == "content_block_delta") == "".join(pieces)
    delta = parsed[-2][1]
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"] == {"input_tokens": 5, "output_tokens": 4}
    assert b": x-switchyard-cost 0.01\n\n" in raw


def test_it_takes_the_streams_own_usage_and_translates_tool_calls():
    translator = AnthropicFromOpenAI(message_id="msg_2", model="m")
    raw = translator.translate(
        chunk({"content": "Let me look."})
        + chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                 "function": {"name": "get_weather", "arguments": ""}}]})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]})
        + chunk({}, "tool_calls")
        + b'data: {"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":9,'
          b'"prompt_tokens_details":{"cached_tokens":10}}}\n\n'
        + b"data: [DONE]\n\n")
    parsed = events(raw)
    starts = [d["content_block"] for name, d in parsed if name == "content_block_start"]
    assert starts == [{"type": "text", "text": ""},
                      {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}]
    json_parts = [d["delta"]["partial_json"] for name, d in parsed
                  if name == "content_block_delta" and d["index"] == 1]
    assert orjson.loads("".join(json_parts)) == {"city": "Paris"}
    assert [d["index"] for name, d in parsed if name == "content_block_stop"] == [0, 1]
    final = parsed[-2][1]
    assert final["delta"]["stop_reason"] == "tool_use"
    assert final["usage"] == {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10,
                              "output_tokens": 9}


@pytest.mark.parametrize("shape", ["compact", "openai", "spaced"])
def test_it_translates_runs_of_text_deltas_alike_however_the_reads_cut_them(shape):
    # Runs of plain text deltas are rewritten in one pass; whatever the reads hold (one event,
    # a run, a run with a tool call or the end inside it), the client sees the same events.
    random = __import__("random").Random(7)
    texts = [random.choice([" word", 'q"uote', "back\\", "\n", "caf\u00e9", "", 'x\\"},"finish_reason":null}]}'])
             for _ in range(40)]
    stream = [chunk({"role": "assistant", "content": ""})]
    for n, text in enumerate(texts):
        if n == 20:
            stream.append(chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f",
                                                                                          "arguments": "{}"}}]}))
        extra = {"usage": None} if shape == "openai" else {}
        event = chunk({"content": text}, **extra)
        if shape == "openai":
            event = event.replace(b'},"finish_reason"', b'},"logprobs":null,"finish_reason"')
        elif shape == "spaced":
            event = event.replace(b'"delta":{"content":', b'"delta": {"content": ')
        stream.append(event)
    stream += [chunk({}, "stop"), b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":40}}\n\n',
               b"data: [DONE]\n\n"]

    def translated(reads: list[bytes]) -> bytes:
        translator = AnthropicFromOpenAI(message_id="msg_3", model="m")
        return b"".join(translator.translate(read) for read in reads)

    one_by_one = translated(stream)
    parsed = events(one_by_one)
    text = [d["delta"]["text"] for name, d in parsed if name == "content_block_delta" and d["index"] in (0, 2)]
    assert "".join(text) == "".join(texts)
    assert [d["content_block"]["type"] for name, d in parsed if name == "content_block_start"] == [
        "text", "tool_use", "text"]
    assert translated([b"".join(stream)]) == one_by_one
    for _ in range(50):
        reads, at = [], 0
        while at < len(stream):
            size = random.randint(1, 15)
            reads.append(b"".join(stream[at:at + size]))
            at += size
        assert translated(reads) == one_by_one


def test_it_lists_what_only_a_native_provider_takes_and_refuses_malformed_bodies():
    chat, unsupported = messages_body_translate({
        "model": "m", "max_tokens": 10, "container": "x",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "read this"},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}}]}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    assert unsupported == ["'document' content blocks", "server tool 'web_search_20250305'",
                           "the 'container' parameter"]
    assert chat["native_parameters"] == {"container": "x"}
    for body, param in (
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5},
         "temperature"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ):
        with pytest.raises(GatewayError) as caught:
            messages_body_translate(body)
        assert caught.value.status == 400 and caught.value.param == param


@pytest.mark.parametrize(("error", "status", "kind"), [
    (GatewayError(), 500, "api_error"),
    (UpstreamError(), 529, "overloaded_error"),
    (LimitsUnavailable(), 529, "overloaded_error"),
    (UpstreamTimeout(), 504, "timeout_error"),
])
def test_it_renders_server_side_errors_in_anthropics_statuses(error, status, kind):
    rendered_status, body, headers = error_render(error, "req_1")
    assert rendered_status == status
    assert orjson.loads(body) == {"type": "error", "error": {"type": kind, "message": error.message},
                                  "request_id": "req_1"}
    assert (b"x-switchyard-error-code", error.code.encode()) in headers
    assert events(error_event(error)) == [("error", {"type": "error", "error": {"type": kind,
                                                                               "message": error.message}})]
