"""Google's Gemini API (``generateContent``), translated to and from OpenAI's chat form.

    request   POST {base}/models/{id}:generateContent, or :streamGenerateContent?alt=sse;
              the key in ``x-goog-api-key``; the base is https://generativelanguage.googleapis.com/v1beta
    messages  system and developer -> systemInstruction; user -> contents (role "user"),
              assistant -> role "model"; text, images (data: URLs as inlineData, other URLs as
              fileData), audio and files; tool calls -> functionCall parts, tool results ->
              functionResponse parts (the name found from the call's id)
    tools     functions -> functionDeclarations (the JSON schema as parametersJsonSchema);
              tool_choice none / auto / required / a named function -> functionCallingConfig
              NONE / AUTO / ANY / ANY with allowedFunctionNames
    settings  temperature, top_p, max(_completion)_tokens, stop, n, seed, presence and frequency
              penalties, response_format (JSON, JSON schema) -> generationConfig;
              reasoning_effort -> thinkingConfig.thinkingBudget
    answer    each candidate -> a choice: its text parts (thoughts left out) -> content, its
              functionCall parts -> tool_calls; finishReason STOP / MAX_TOKENS / SAFETY (and the
              other blocks) -> stop (tool_calls when it called) / length / content_filter; a
              prompt blocked outright (promptFeedback.blockReason, no candidate) -> a 400 refusal
              with code ``content_filter``
    usage     promptTokenCount (+ toolUsePromptTokenCount) -> prompt_tokens, with
              cachedContentTokenCount as prompt_tokens_details.cached_tokens (priced as cached
              input); candidatesTokenCount + thoughtsTokenCount -> completion_tokens, with
              thoughtsTokenCount as completion_tokens_details.reasoning_tokens (priced as output)
    stream    each SSE chunk -> OpenAI chat chunks; the finishing chunk -> the finish_reason
              chunk, then the usage chunk and ``data: [DONE]``
    errors    {"error": {"code", "message", "status"}} -> OpenAI's shape with the status in
              lower case as its code (``invalid_argument``); 429 RESOURCE_EXHAUSTED's RetryInfo
              delay and a 400 API_KEY_INVALID are read by the transport (retried as a rate limit;
              our credential, not the client's request)

Gemini's thought signatures (which a model that thought before calling a function needs back
with the call) travel inside the tool call's id, so a client that sends the call back as it
came returns the signature too.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import time
import uuid
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote_to_bytes, urlsplit

import aiohttp
import orjson

from apps.providers.transport import UpstreamClientError, UpstreamFailure

if TYPE_CHECKING:
    from apps.providers.transport import ModelRoute, ProviderStream

GEMINI_KIND = "gemini"
_SIGNATURE = "__thought__"  # a tool call's id: call_<hex>[__thought__<signature>]
_FINISH = {
    "STOP": "stop", "MAX_TOKENS": "length",
    "SAFETY": "content_filter", "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter", "IMAGE_SAFETY": "content_filter",
}
_THINKING_BUDGET = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576}


# --- the request -------------------------------------------------------------------------------

def _media_part(url: str, default_mime: str) -> dict:
    """A data: URL as inlineData (base64), any other URL as fileData."""
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        mime = header[5:].split(";")[0] or default_mime
        if ";base64" not in header:
            data = base64.b64encode(unquote_to_bytes(data)).decode()
        return {"inlineData": {"mimeType": mime, "data": data}}
    mime = mimetypes.guess_type(urlsplit(url).path)[0] or default_mime
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _parts(content) -> list[dict]:
    """An OpenAI message content as Gemini parts."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if isinstance(text, str) and text:
                parts.append({"text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url:
                parts.append(_media_part(url, "image/jpeg"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format') or 'wav'}",
                                         "data": audio.get("data") or ""}})
        elif kind == "file":
            data = (part.get("file") or {}).get("file_data")
            if isinstance(data, str) and data:
                parts.append(_media_part(data, "application/pdf"))
    return parts


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content or [] if isinstance(p, dict) and p.get("type") == "text")


def _arguments(raw) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        value = orjson.loads(raw or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {"arguments": raw}
    return value if isinstance(value, dict) else {"value": value}


def _response_object(content) -> dict:
    """A tool result as functionResponse.response, which must be an object."""
    text = _text(content)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def _add(contents: list[dict], role: str, parts: list[dict]) -> None:
    """Parts appended to the conversation, merged into the last turn when it has the same role."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _conversation(messages: list) -> tuple[list[dict], list[dict]]:
    """The system instruction's parts and the contents."""
    system: list[dict] = []
    contents: list[dict] = []
    names: dict[str, str] = {}  # a tool call's id -> its function's name
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_parts(content))
        elif role == "user":
            _add(contents, "user", _parts(content))
        elif role == "assistant":
            parts = _parts(content)
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                name = function.get("name") or ""
                ident = call.get("id") or ""
                names[ident] = name
                part: dict = {"functionCall": {"name": name, "args": _arguments(function.get("arguments"))}}
                _head, _, signature = ident.partition(_SIGNATURE)
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            _add(contents, "model", parts)
        elif role in ("tool", "function"):
            name = names.get(message.get("tool_call_id") or "") or message.get("name") or ""
            _add(contents, "user", [{"functionResponse": {"name": name, "response": _response_object(content)}}])
    return system, contents


def _tools(body: dict) -> tuple[list[dict], dict | None]:
    declarations = []
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not function.get("name"):
            continue
        declaration = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        if isinstance(function.get("parameters"), dict):
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    tools = [{"functionDeclarations": declarations}] if declarations else []
    choice = body.get("tool_choice")
    config: dict | None = None
    if choice == "none":
        config = {"mode": "NONE"}
    elif choice == "auto":
        config = {"mode": "AUTO"}
    elif choice == "required":
        config = {"mode": "ANY"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        config = {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
    return tools, ({"functionCallingConfig": config} if config and declarations else None)


def _generation_config(body: dict) -> dict:
    config: dict = {}
    for name, gemini in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
                         ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"),
                         ("n", "candidateCount")):
        if body.get(name) is not None:
            config[gemini] = body[name]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_object":
            config["responseMimeType"] = "application/json"
        elif response_format.get("type") == "json_schema":
            config["responseMimeType"] = "application/json"
            schema = (response_format.get("json_schema") or {}).get("schema")
            if isinstance(schema, dict):
                config["responseJsonSchema"] = schema
    effort = body.get("reasoning_effort")
    if effort in _THINKING_BUDGET:
        config["thinkingConfig"] = {"thinkingBudget": _THINKING_BUDGET[effort]}
    return config


def gemini_request(body: dict) -> dict:
    """An OpenAI chat body as a ``generateContent`` body."""
    system, contents = _conversation(body.get("messages") or [])
    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    tools, tool_config = _tools(body)
    if tools:
        out["tools"] = tools
    if tool_config:
        out["toolConfig"] = tool_config
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    return out


# --- the answer --------------------------------------------------------------------------------

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
        ident += _SIGNATURE + part["thoughtSignature"]
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


def _blocked(model: ModelRoute, reason: str) -> UpstreamClientError:
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


# --- the stream --------------------------------------------------------------------------------

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


# --- the protocol ------------------------------------------------------------------------------

def _model_path(upstream_id: str) -> str:
    name = upstream_id.removeprefix("models/")
    return "/models/" + quote(name, safe="-._~")


class GeminiChat:
    """Chat requests to a Gemini API provider."""

    translates = True

    def path(self, model: ModelRoute, *, stream: bool) -> str:
        if stream:
            return _model_path(model.upstream_id) + ":streamGenerateContent?alt=sse"
        return _model_path(model.upstream_id) + ":generateContent"

    def payload(self, body: dict, model: ModelRoute, *, stream: bool, drop: tuple[str, ...] = ()) -> bytes:
        return orjson.dumps(gemini_request(body))

    def json_read(self, raw: bytes, parsed: dict, model: ModelRoute) -> tuple[bytes, dict]:
        if not parsed.get("candidates"):
            reason = (parsed.get("promptFeedback") or {}).get("blockReason")
            if reason:
                raise _blocked(model, str(reason))
            raise UpstreamFailure("no candidates in the answer")
        completion = completion_from_gemini(parsed, model.upstream_id)
        return orjson.dumps(completion), completion

    async def stream_read(self, opened: ProviderStream) -> ProviderStream:
        stream = GeminiStream(opened, opened.model.upstream_id)
        try:
            await stream.start()
        except BaseException as exc:
            await opened.close()
            if isinstance(exc, TimeoutError):
                raise UpstreamFailure("timeout before the first chunk", timeout=True) from exc
            if isinstance(exc, aiohttp.ClientError):
                raise UpstreamFailure(f"connection: {type(exc).__name__}") from exc
            raise
        return stream

    def refusal_read(self, exc: UpstreamClientError) -> UpstreamClientError:
        return refusal_from_gemini(exc)
