"""Amazon Bedrock's Converse API, translated to and from OpenAI's chat form, each request signed
with AWS Signature Version 4 by botocore's own signer, streams parsed by botocore's event-stream
parser.

    request   POST {base}/model/{id}/converse, or /converse-stream (binary event stream); the
              base is https://bedrock-runtime.REGION.amazonaws.com, the region signed for read
              from it (us-east-1 for any other host); the credential is
              ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]
    messages  system and developer -> system; user / assistant -> messages (turns of one role
              merged, as Converse requires them to alternate); text, images (data: URLs) ->
              text and image blocks; tool calls -> toolUse blocks, tool results -> toolResult
              blocks in the next user turn; a text part marked ``cache_control`` (the prompt-cache
              mark Anthropic reads) is followed by a ``cachePoint`` block
    tools     functions -> toolConfig.tools[].toolSpec (the JSON schema as inputSchema.json);
              tool_choice auto / required / a named function -> toolChoice auto / any / tool
    settings  max(_completion)_tokens, temperature, top_p, stop -> inferenceConfig
    answer    output.message's text blocks -> content, toolUse blocks -> tool_calls; stopReason
              end_turn / stop_sequence / tool_use / max_tokens / guardrail_intervened and
              content_filtered -> stop / stop / tool_calls / length / content_filter
    usage     inputTokens + cacheReadInputTokens + cacheWriteInputTokens -> prompt_tokens, the
              reads as cached_tokens, the writes as cache_creation_input_tokens (priced at the
              model's cache-write price); outputTokens -> completion_tokens
    stream    messageStart, contentBlockStart/Delta/Stop, messageStop (the finish_reason chunk),
              metadata (the usage chunk, then ``data: [DONE]``)
    errors    {"message"} with its type (``__type`` or the x-amzn-ErrorType header) -> OpenAI's
              shape, the type as the code (``validation_exception``)
"""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING
from urllib.parse import quote

import aiohttp
import orjson
from botocore.eventstream import EventStreamBuffer

from apps.providers.transport import UpstreamClientError, UpstreamFailure

if TYPE_CHECKING:
    from apps.providers.transport import ModelRoute, ProviderStream

BEDROCK_KIND = "bedrock"
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls", "max_tokens": "length",
           "guardrail_intervened": "content_filter", "content_filtered": "content_filter"}
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                  "image/webp": "webp"}


# --- the request -------------------------------------------------------------------------------

def _blocks(content) -> list[dict]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[dict] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and part.get("text"):
            blocks.append({"text": part["text"]})
            if isinstance(part.get("cache_control"), dict):
                blocks.append({"cachePoint": {"type": "default"}})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url.startswith("data:"):
                header, _, data = url.partition(",")
                mime = header[5:].split(";")[0]
                blocks.append({"image": {"format": _IMAGE_FORMATS.get(mime, "png"), "source": {"bytes": data}}})
    return blocks


def _add(messages: list[dict], role: str, blocks: list[dict]) -> None:
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _tool_result(content) -> list[dict]:
    text = content if isinstance(content, str) else "".join(
        p.get("text") or "" for p in content or [] if isinstance(p, dict))
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return [{"text": text}]
    return [{"json": value}] if isinstance(value, dict) else [{"text": text}]


def converse_request(body: dict) -> dict:
    """An OpenAI chat body as a Converse body."""
    system: list[dict] = []
    messages: list[dict] = []
    for message in body.get("messages") or []:
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.extend(_blocks(content))
        elif role == "user":
            _add(messages, "user", _blocks(content))
        elif role == "assistant":
            blocks = _blocks(content)
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                try:
                    arguments = orjson.loads(function.get("arguments") or "{}")
                except orjson.JSONDecodeError:
                    arguments = {}
                blocks.append({"toolUse": {"toolUseId": call.get("id") or "", "name": function.get("name") or "",
                                           "input": arguments if isinstance(arguments, dict) else {}}})
            _add(messages, "assistant", blocks)
        elif role == "tool":
            _add(messages, "user", [{"toolResult": {"toolUseId": message.get("tool_call_id") or "",
                                                    "content": _tool_result(content)}}])
    out: dict = {"messages": messages}
    if system:
        out["system"] = system
    config: dict = {}
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    for name, value in (("maxTokens", limit), ("temperature", body.get("temperature")),
                        ("topP", body.get("top_p"))):
        if value is not None:
            config[name] = value
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if config:
        out["inferenceConfig"] = config
    tools = [{"toolSpec": {"name": f["name"], **({"description": f["description"]} if f.get("description") else {}),
                           "inputSchema": {"json": f.get("parameters") or {"type": "object", "properties": {}}}}}
             for t in body.get("tools") or [] if isinstance(t, dict)
             and isinstance(f := t.get("function"), dict) and f.get("name")]
    if tools:
        choice = body.get("tool_choice")
        out["toolConfig"] = {"tools": tools}
        if choice == "required":
            out["toolConfig"]["toolChoice"] = {"any": {}}
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            out["toolConfig"]["toolChoice"] = {"tool": {"name": choice["function"].get("name")}}
        elif choice == "auto":
            out["toolConfig"]["toolChoice"] = {"auto": {}}
    return out


# --- the answer --------------------------------------------------------------------------------

def usage_from_bedrock(usage) -> dict | None:
    if not isinstance(usage, dict) or not isinstance(usage.get("inputTokens"), int):
        return None
    read = usage.get("cacheReadInputTokens") or 0
    written = usage.get("cacheWriteInputTokens") or 0
    prompt = usage["inputTokens"] + read + written
    completion = usage.get("outputTokens") or 0
    out = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": read}}
    if written:
        out["cache_creation_input_tokens"] = written  # chat's form has no field: the one chat_usage writes
    return out


def _tool_call(use: dict) -> dict:
    return {"id": use.get("toolUseId") or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": use.get("name") or "", "arguments": orjson.dumps(use.get("input") or {}).decode()}}


def completion_from_bedrock(parsed: dict, model_id: str) -> dict:
    content = ((parsed.get("output") or {}).get("message") or {}).get("content") or []
    text = "".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    calls = [_tool_call(b["toolUse"]) for b in content if isinstance(b, dict) and isinstance(b.get("toolUse"), dict)]
    message: dict = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    completion = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                  "model": model_id, "choices": [{"index": 0, "message": message, "logprobs": None,
                                                  "finish_reason": _FINISH.get(parsed.get("stopReason"), "stop")}]}
    usage = usage_from_bedrock(parsed.get("usage"))
    if usage is not None:
        completion["usage"] = usage
    return completion


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.split(":")[0]).lower()


class BedrockStream:
    """A Converse event stream read as OpenAI chat chunks (botocore parses the frames)."""

    __slots__ = ("_buffer", "_done", "_failure", "_head", "_tools", "end_wait", "first", "model", "opened")

    def __init__(self, opened: ProviderStream) -> None:
        self.opened = opened
        self.model = opened.model
        self.end_wait = opened.end_wait
        self.first = b""
        self._buffer = EventStreamBuffer()
        self._head = (b'data: {"id":' + orjson.dumps(f"chatcmpl-{uuid.uuid4().hex}")
                      + b',"object":"chat.completion.chunk","created":' + str(int(time.time())).encode()
                      + b',"model":' + orjson.dumps(opened.model.upstream_id) + b',"choices":')
        self._tools: dict[int, int] = {}  # content block -> tool call index
        self._failure: str | None = None
        self._done = False

    async def start(self) -> None:
        out = self._feed(self.opened.first)
        while not out and not self._done:
            piece = await self.opened.readany()
            if not piece:
                break
            out = self._feed(piece)
        if not out:
            raise UpstreamFailure(f"stream error: {self._failure or 'no content'}",
                                  status=429 if self._failure == "throttling_exception" else None)
        self.first = out

    async def readany(self) -> bytes:
        while not self._done:
            piece = await self.opened.readany()
            if not piece:
                return b""
            out = self._feed(piece)
            if out:
                return out
        return b""

    async def close(self) -> None:
        await self.opened.close()

    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        return self._head + orjson.dumps([{"index": 0, "delta": delta, "finish_reason": finish}]) + b"}\n\n"

    def _feed(self, data: bytes) -> bytes:
        self._buffer.add_data(data)
        out: list[bytes] = []
        for message in self._buffer:
            if self._done:
                break
            headers = message.headers
            if headers.get(":message-type") != "event":
                self._failure = _snake(str(headers.get(":exception-type") or "exception"))
                self._done = True
                break
            kind = headers.get(":event-type")
            try:
                event = orjson.loads(message.payload or b"{}")
            except orjson.JSONDecodeError:
                continue
            if kind == "messageStart":
                out.append(self._chunk({"role": "assistant", "content": ""}))
            elif kind == "contentBlockStart":
                use = (event.get("start") or {}).get("toolUse")
                if isinstance(use, dict):
                    index = self._tools[event.get("contentBlockIndex", 0)] = len(self._tools)
                    out.append(self._chunk({"tool_calls": [{"index": index, **_tool_call({**use, "input": {}}),
                                                            "function": {"name": use.get("name") or "",
                                                                         "arguments": ""}}]}))
            elif kind == "contentBlockDelta":
                delta = event.get("delta") or {}
                if isinstance(delta.get("text"), str):
                    out.append(self._chunk({"content": delta["text"]}))
                elif isinstance(delta.get("toolUse"), dict):
                    index = self._tools.get(event.get("contentBlockIndex", 0), 0)
                    out.append(self._chunk({"tool_calls": [{"index": index, "function": {
                        "arguments": delta["toolUse"].get("input") or ""}}]}))
            elif kind == "messageStop":
                out.append(self._chunk({}, _FINISH.get(event.get("stopReason"), "stop")))
            elif kind == "metadata":
                usage = usage_from_bedrock(event.get("usage"))
                if usage is not None:
                    out.append(self._head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n")
                out.append(b"data: [DONE]\n\n")
                self._done = True
        return b"".join(out)


# --- the protocol ------------------------------------------------------------------------------

class BedrockChat:
    """Chat requests to Amazon Bedrock's Converse API."""

    translates = True

    def path(self, model: ModelRoute, *, stream: bool) -> str:
        return f"/model/{quote(model.upstream_id, safe='')}/{'converse-stream' if stream else 'converse'}"

    def payload(self, body: dict, model: ModelRoute, *, stream: bool, drop: tuple[str, ...] = ()) -> bytes:
        return orjson.dumps(converse_request(body))

    def json_read(self, raw: bytes, parsed: dict, model: ModelRoute) -> tuple[bytes, dict]:
        if not isinstance(parsed.get("output"), dict):
            raise UpstreamFailure("no output in the answer")
        completion = completion_from_bedrock(parsed, model.upstream_id)
        return orjson.dumps(completion), completion

    async def stream_read(self, opened: ProviderStream) -> ProviderStream:
        stream = BedrockStream(opened)
        try:
            await stream.start()
        except BaseException as exc:
            await opened.close()
            if isinstance(exc, TimeoutError):
                raise UpstreamFailure("timeout before the first event", timeout=True) from exc
            if isinstance(exc, aiohttp.ClientError):
                raise UpstreamFailure(f"connection: {type(exc).__name__}") from exc
            raise
        return stream

    def refusal_read(self, exc: UpstreamClientError) -> UpstreamClientError:
        try:
            parsed = orjson.loads(exc.body)
        except orjson.JSONDecodeError:
            parsed = {}
        parsed = parsed if isinstance(parsed, dict) else {}
        kind = parsed.get("__type") or exc.code  # the transport read x-amzn-ErrorType into the code
        code = _snake(kind.rsplit("#", 1)[-1]) if isinstance(kind, str) and kind else "upstream_client_error"
        message = parsed.get("message") or parsed.get("Message") or f"The provider answered {exc.status}."
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        return UpstreamClientError(exc.status, orjson.dumps(body), "application/json", model=exc.model, code=code)
