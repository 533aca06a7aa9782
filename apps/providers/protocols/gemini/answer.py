"""A Gemini answer (JSON, a refusal, a stream) read back into OpenAI's chat form."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import TYPE_CHECKING

import orjson

from apps.providers.protocols.gemini.request import SIGNATURE
from apps.providers.transport import UpstreamClientError, UpstreamFailure

if TYPE_CHECKING:
    from apps.providers.transport import ModelRoute, ProviderStream

_FINISH = {
    "STOP": "stop", "MAX_TOKENS": "length",
    "SAFETY": "content_filter", "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter", "IMAGE_SAFETY": "content_filter",
}


def usage_from_gemini(meta) -> dict | None:
    """``usageMetadata`` as OpenAI's usage (None when it holds no prompt count)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("promptTokenCount"), int):
        return None
    prompt = meta["promptTokenCount"] + (meta.get("toolUsePromptTokenCount") or 0)
    thoughts = meta.get("thoughtsTokenCount") or 0
    completion = (meta.get("candidatesTokenCount") or 0) + thoughts
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": meta.get("cachedContentTokenCount") or 0},
            "completion_tokens_details": {"reasoning_tokens": thoughts}}


def _finish(reason, called: bool) -> str:
    finish = _FINISH.get(reason, "stop")
    return "tool_calls" if called and finish == "stop" else finish


def _tool_call(part: dict, key: str) -> dict:
    call = part["functionCall"]
    name = call.get("name") or ""
    ident = "call_" + hashlib.blake2b(f"{key}:{name}".encode(), digest_size=12).hexdigest()
    if isinstance(part.get("thoughtSignature"), str):
        ident += SIGNATURE + part["thoughtSignature"]
    return {"id": ident, "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(call.get("args") or {}).decode()}}


def _candidate(candidate: dict, key: str, first_call: int = 0) -> tuple[str, list[dict]]:
    """A candidate's text (thoughts left out) and tool calls; ``key`` makes the calls' ids."""
    texts: list[str] = []
    calls: list[dict] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if not isinstance(part, dict) or part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            calls.append(_tool_call(part, f"{key}:{first_call + len(calls)}"))
    return "".join(texts), calls


def _response_id(parsed: dict) -> str:
    ident = parsed.get("responseId")
    return ident if isinstance(ident, str) and ident else uuid.uuid4().hex


def completion_from_gemini(parsed: dict, model_id: str) -> dict:
    """A ``generateContent`` answer with candidates as a chat.completion."""
    response_id = _response_id(parsed)
    choices = []
    for position, candidate in enumerate(parsed.get("candidates") or []):
        index = candidate.get("index", position)
        text, calls = _candidate(candidate, f"{response_id}:{index}")
        message: dict = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = calls
        choices.append({"index": index, "message": message, "logprobs": None,
                        "finish_reason": _finish(candidate.get("finishReason"), bool(calls))})
    completion = {"id": f"chatcmpl-{response_id}", "object": "chat.completion", "created": int(time.time()),
                  "model": parsed.get("modelVersion") or model_id, "choices": choices}
    usage = usage_from_gemini(parsed.get("usageMetadata"))
    if usage is not None:
        completion["usage"] = usage
    return completion


def blocked(model: ModelRoute, reason: str) -> UpstreamClientError:
    message = f"The provider blocked the prompt ({reason})."
    body = {"error": {"message": message, "type": "invalid_request_error", "param": "messages",
                      "code": "content_filter"}}
    return UpstreamClientError(400, orjson.dumps(body), "application/json", model=model, code="content_filter")


def refusal_from_gemini(exc: UpstreamClientError) -> UpstreamClientError:
    """A Gemini error body as OpenAI's, its status (``INVALID_ARGUMENT``) in lower case as the code."""
    try:
        parsed = orjson.loads(exc.body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    error = error if isinstance(error, dict) else {}
    status = error.get("status")
    code = status.lower() if isinstance(status, str) and status.isidentifier() else exc.code
    message = error.get("message") if isinstance(error.get("message"), str) else f"The provider answered {exc.status}."
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return UpstreamClientError(exc.status, orjson.dumps(body), "application/json", model=exc.model, code=code)


class GeminiStream:
    """A Gemini SSE stream read as OpenAI chat chunks: the transport's opened stream wrapped,
    each read translated (Gemini sends whole events, one JSON object each)."""

    __slots__ = ("_carry", "_done", "_failure", "_finished", "_head", "_model_id", "_response_id", "_started",
                 "_tools", "_usage", "end_wait", "first", "model", "opened")

    def __init__(self, opened: ProviderStream, model_id: str) -> None:
        self.opened = opened
        self.model = opened.model
        self.end_wait = opened.end_wait
        self.first = b""
        self._model_id = model_id
        self._carry = b""
        self._head: bytes | None = None
        self._response_id = ""
        self._started: set[int] = set()  # candidates whose role has been sent
        self._finished: set[int] = set()
        self._tools: dict[int, int] = {}  # tool calls sent, per candidate
        self._usage: dict | None = None
        self._failure: dict | None = None
        self._done = False

    async def start(self) -> None:
        """Translate up to the first chunk that yields something (a failure here can still fall back)."""
        out = self._feed(self.opened.first)
        while not out and not self._done:
            piece = await self.opened.readany()
            if not piece:
                break
            out = self._feed(piece)
        if not out:
            failure = self._failure or {}
            code = failure.get("code") if isinstance(failure.get("code"), int) else None
            raise UpstreamFailure(f"stream error: {failure.get('status') or 'no content'}", status=code)
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

    def _feed(self, data: bytes) -> bytes:
        buffer = self._carry + data if self._carry else data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        cut = buffer.rfind(b"\n\n")
        if cut < 0:
            self._carry = buffer
            return b""
        events, self._carry = buffer[:cut], buffer[cut + 2:]
        out: list[bytes] = []
        for event in events.split(b"\n\n"):
            if self._done:
                break
            data_lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
            if not data_lines:
                continue
            try:
                chunk = orjson.loads(b"\n".join(data_lines))
            except orjson.JSONDecodeError:
                continue  # checked on the first event; a later bad one is skipped
            if not isinstance(chunk, dict):
                continue
            if isinstance(chunk.get("error"), dict) and not chunk.get("candidates"):
                self._failure = chunk["error"]
                self._done = True  # the stream ends here, unfinished
                break
            out.append(self._translate(chunk))
        return b"".join(out)

    def _translate(self, chunk: dict) -> bytes:
        if self._head is None:
            self._response_id = _response_id(chunk)
            self._head = (b'data: {"id":' + orjson.dumps(f"chatcmpl-{self._response_id}")
                          + b',"object":"chat.completion.chunk","created":' + str(int(time.time())).encode()
                          + b',"model":' + orjson.dumps(chunk.get("modelVersion") or self._model_id)
                          + b',"choices":')
        head = self._head
        if isinstance(chunk.get("usageMetadata"), dict):
            self._usage = chunk["usageMetadata"]
        pieces: list[bytes] = []
        finished: list[tuple[int, str]] = []
        for position, candidate in enumerate(chunk.get("candidates") or []):
            index = candidate.get("index", position)
            sent = self._tools.get(index, 0)
            text, calls = _candidate(candidate, f"{self._response_id}:{index}", sent)
            delta: dict = {}
            if index not in self._started:
                self._started.add(index)
                delta = {"role": "assistant", "content": ""}
            if text:
                delta["content"] = text
            if calls:
                delta["tool_calls"] = [{"index": sent + n, **call} for n, call in enumerate(calls)]
                self._tools[index] = sent + len(calls)
            if delta:
                pieces.append(head + orjson.dumps([{"index": index, "delta": delta, "finish_reason": None}])
                              + b"}\n\n")
            if candidate.get("finishReason"):
                finished.append((index, _finish(candidate["finishReason"], self._tools.get(index, 0) > 0)))
        if chunk.get("candidates") is None and (chunk.get("promptFeedback") or {}).get("blockReason"):
            self._started.add(0)
            pieces.append(head + b'[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n')
            finished.append((0, "content_filter"))
        for index, reason in finished:
            self._finished.add(index)
            pieces.append(head + orjson.dumps([{"index": index, "delta": {}, "finish_reason": reason}]) + b"}\n\n")
        if finished and self._finished >= self._started:
            usage = usage_from_gemini(self._usage)
            if usage is not None:
                pieces.append(head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n")
            pieces.append(b"data: [DONE]\n\n")
            self._done = True
        return b"".join(pieces)
