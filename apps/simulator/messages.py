"""The SIMULATED upstream's Anthropic Messages API, so a native Anthropic provider can be tested
and benchmarked over real HTTP.

    POST /v1/messages               JSON, or Anthropic's SSE events with ``stream: true``
                                    (message_start, content_block_start, ping,
                                    content_block_delta per word, content_block_stop,
                                    message_delta with usage, message_stop)
    POST /v1/messages/count_tokens  {"input_tokens": N}

Both need an ``anthropic-version`` header, as Anthropic's API does. The answer is the chat
endpoint's for the same conversation (the system prompt counts as a first message): the same
words, the same token formulas, the same knobs (``x-sim-ttft-ms``, ``x-sim-chunk-delay-ms``,
``x-sim-chunks``) and faults; a ``status`` fault answers in Anthropic's error shape (529 for
overloaded), a ``context_length`` fault Anthropic's 400 "prompt is too long".

Prompt caching, deterministic: the content up to the last block marked ``cache_control``
(system, tools, then messages, in that order) is a cache prefix of ``words * 4 // 3`` tokens.
The first request with a prefix reports them as ``cache_creation_input_tokens``, later ones as
``cache_read_input_tokens`` (until ``/_sim/reset``); ``input_tokens`` is the rest.

Tools: with ``tool_choice`` ``{"type": "tool", "name": ...}`` the answer is one ``tool_use``
block for that tool; with ``{"type": "any"}`` one for each tool, in parallel (the first only
with ``disable_parallel_tool_use``). Inputs are built from the tool's schema (strings are words
of the answer, numbers 42, booleans true), stop reason ``tool_use``; streamed as
``input_json_delta`` fragments, one content block per call.

Requests are checked as Anthropic checks them (:func:`request_problem`), so a translation that
sends what Anthropic refuses fails here too: roles, block types and their fields (image sources
base64 of png/jpeg/gif/webp or an http(s) URL), every ``tool_use`` answered by a
``tool_result`` first thing in the next user turn, ``temperature`` at most 1, tools with an
``input_schema``, a ``tool_choice`` naming a tool that exists. ``GET /_sim/last_messages`` gives
the last Messages request's body as it arrived.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from typing import TYPE_CHECKING

from aiohttp import web

from apps.simulator.answers import answer_words, dumps, loads, prompt_tokens, seed, tool_input
from apps.simulator.control import GARBAGE, HEADERS, NOT_JSON, SSE_HEADERS, drop_connection, header_fault, knob
from apps.simulator.outcomes import graded

if TYPE_CHECKING:
    from apps.simulator.server import Simulator

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                504: "timeout_error", 529: "overloaded_error"}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    body = {"type": "error", "error": {"type": kind, "message": f"[simulated] {message}"}}
    return web.Response(status=status, body=dumps(body), content_type="application/json",
                        headers={**HEADERS, **(headers or {})})


def conversation(body: dict) -> list:
    """The system prompt (as a first message) and the messages."""
    system = body.get("system")
    if isinstance(system, list):
        system = "\n".join(b.get("text", "") for b in system if isinstance(b, dict))
    head = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    return head + list(body.get("messages") or [])


def _words_of(value) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words_of(item) for item in value)
    if isinstance(value, dict):
        return sum(_words_of(item) for key, item in value.items() if key in ("text", "content", "description"))
    return 0


def cache_prefix(body: dict) -> tuple[str, int] | None:
    """The cacheable prefix (its hash and tokens), or None when nothing is marked."""
    sequence: list = []
    for name in ("system", "tools"):
        value = body.get(name)
        if isinstance(value, list):
            sequence += [(name, block) for block in value]
        elif value is not None:
            sequence.append((name, value))
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        sequence += [("message", block) for block in (content if isinstance(content, list) else [content])]
    marked = [i for i, (_, item) in enumerate(sequence) if isinstance(item, dict) and item.get("cache_control")]
    if not marked:
        return None
    prefix = sequence[: marked[-1] + 1]
    digest = hashlib.blake2b(dumps([item for _, item in prefix]), digest_size=12).hexdigest()
    return digest, _words_of([item for _, item in prefix]) * 4 // 3


def forced_tools(body: dict) -> list[dict]:
    """The tools a ``tool_choice`` of ``any`` (each, or the first) or ``tool`` forces."""
    choice = body.get("tool_choice")
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("name"), str)]
    if not isinstance(choice, dict) or not tools:
        return []
    if choice.get("type") == "any":
        return tools[:1] if choice.get("disable_parallel_tool_use") else tools
    if choice.get("type") == "tool":
        return [t for t in tools if t["name"] == choice.get("name")][:1]
    return []


_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def _block_problem(block, role: str, where: str) -> str | None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        return f"{where}: a content block needs a 'type'"
    kind = block["type"]
    if kind == "text":
        return None if isinstance(block.get("text"), str) and block["text"] else \
            f"{where}: text content blocks must be non-empty"
    if kind == "image":
        source = block.get("source") if isinstance(block.get("source"), dict) else {}
        if source.get("type") == "url" and str(source.get("url", "")).startswith(("http://", "https://")):
            return None
        if source.get("type") != "base64" or source.get("media_type") not in _IMAGE_TYPES:
            return f"{where}.source: a base64 png, jpeg, gif or webp image, or an http(s) url, is required"
        try:
            base64.b64decode(source.get("data") or "", validate=True)
        except (binascii.Error, ValueError):
            return f"{where}.source.data: not valid base64"
        return None
    if kind == "tool_use":
        if role != "assistant":
            return f"{where}: tool_use blocks belong to assistant turns"
        if not (isinstance(block.get("id"), str) and isinstance(block.get("name"), str)
                and isinstance(block.get("input"), dict)):
            return f"{where}: a tool_use block needs 'id', 'name' and an object 'input'"
    if kind == "tool_result" and role != "user":
        return f"{where}: tool_result blocks belong to user turns"
    return None


def request_problem(body: dict) -> str | None:
    """What Anthropic's API would refuse in a Messages request (the checks a translation can
    get wrong), or None."""
    temperature = body.get("temperature")
    if temperature is not None and not (isinstance(temperature, int | float) and 0 <= temperature <= 1):
        return "temperature: must be between 0 and 1"
    names = set()
    for index, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            return f"tools.{index}: a tool needs a 'name'"
        names.add(tool["name"])
        schema = tool.get("input_schema")
        if tool.get("type") in (None, "custom") and not (isinstance(schema, dict) and schema.get("type") == "object"):
            return f"tools.{index}.input_schema: an object schema is required"
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            return "tool_choice: must be {'type': 'auto' | 'any' | 'tool' | 'none'}"
        if choice["type"] == "tool" and choice.get("name") not in names:
            return "tool_choice.name: no tool of that name"
    waiting: set[str] = set()  # tool_use ids the next user turn must answer
    for index, message in enumerate(body["messages"]):
        where = f"messages.{index}"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"{where}.role: must be 'user' or 'assistant'"
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) and content else content
        if isinstance(content, str):
            blocks = [] if not content and role == "assistant" and index == len(body["messages"]) - 1 else blocks
        if not isinstance(blocks, list) or (not blocks and not isinstance(content, str)):
            return f"{where}.content: a string or a non-empty array of content blocks"
        answered = [b.get("tool_use_id") for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
        if waiting:
            if role != "user" or set(answered) != waiting:
                return (f"{where}: tool_use ids were found without tool_result blocks immediately after: "
                        f"{', '.join(sorted(waiting - set(answered)))}")
            if any(b.get("type") != "tool_result" for b in blocks[:len(answered)]):
                return f"{where}: tool_result blocks must come first in the user turn"
        elif answered:
            return f"{where}: a tool_result block answers no tool_use of the previous turn"
        for number, block in enumerate(blocks):
            problem = _block_problem(block, role, f"{where}.content.{number}")
            if problem:
                return problem
        waiting = {b["id"] for b in blocks if b.get("type") == "tool_use"}
    if waiting:
        return "messages: the last assistant turn's tool_use blocks are not answered"
    return None


class MessagesAPI:
    """The handlers, sharing the chat endpoint's :class:`Simulator` (state, knobs, faults)."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator

    async def _body(self, request: web.Request) -> tuple[dict | None, web.Response | None]:
        if not request.headers.get("anthropic-version"):
            return None, error_response(400, "anthropic-version: header is required")
        try:
            body = loads(await request.read())
        except ValueError:
            return None, error_response(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return None, error_response(400, "The request body must be a JSON object.")
        if not isinstance(body.get("model"), str) or not body["model"]:
            return None, error_response(400, "model: Field required")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return None, error_response(400, "messages: Field required")
        self.simulator.state.last_messages = body
        problem = request_problem(body)
        if problem:
            return None, error_response(400, problem)
        return body, None

    async def last(self, request: web.Request) -> web.Response:
        """``GET /_sim/last_messages``: the last Messages request's body (null before the first)."""
        return web.Response(body=dumps(self.simulator.state.last_messages), content_type="application/json",
                            headers=HEADERS)

    async def count_tokens(self, request: web.Request) -> web.Response:
        """``POST /v1/messages/count_tokens``."""
        body, error = await self._body(request)
        if error:
            return error
        return web.Response(body=dumps({"input_tokens": prompt_tokens(conversation(body))}),
                            content_type="application/json", headers=HEADERS)

    async def create(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/messages``, JSON or SSE."""
        body, error = await self._body(request)
        if error:
            return error
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return error_response(400, "max_tokens: Field required")
        model = body["model"]
        simulator = self.simulator
        simulator._enter(model)
        try:
            return await self._create(request, body, model, max_tokens)
        finally:
            simulator.state.in_flight -= 1

    def _usage(self, body: dict, turns: list, output: int) -> dict:
        total = prompt_tokens(turns)
        read = written = 0
        prefix = cache_prefix(body)
        if prefix is not None:
            digest, size = prefix
            size = min(size, total)
            cache = self.simulator.state.prompt_cache
            if digest in cache:
                read = size
            else:
                written = size
                cache.add(digest)
        return {"input_tokens": total - read - written, "cache_creation_input_tokens": written,
                "cache_read_input_tokens": read, "output_tokens": output}

    async def _create(self, request: web.Request, body: dict, model: str, max_tokens: int) -> web.StreamResponse:
        state = self.simulator.state
        config = state.config
        fault = header_fault(request) or state.take_fault(model)
        mode = fault.mode if fault is not None else None
        ttft = knob(request, "x-sim-ttft-ms", config.ttft_ms) / 1000
        delay = knob(request, "x-sim-chunk-delay-ms", config.chunk_delay_ms) / 1000
        count = max(int(knob(request, "x-sim-chunks", config.chunks)), 1)
        stop = "end_turn"
        if max_tokens < count:
            count, stop = max_tokens, "max_tokens"
        stream = bool(body.get("stream"))
        if mode == "status":
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
            return error_response(fault.status, f"injected fault: status {fault.status}", headers)
        if mode == "context_length":
            return error_response(400, "prompt is too long: the prompt's tokens exceed the model's maximum")
        if mode == "timeout":
            return await self.simulator._hang(request)
        if mode == "slow":
            ttft = fault.delay
        if ttft > 0:
            await asyncio.sleep(ttft)
        if not stream:
            if mode == "cut":
                return drop_connection(request)
            if mode == "stall":
                return await self.simulator.stall_json(request)
            if mode == "invalid_json":
                return web.Response(body=NOT_JSON, content_type="application/json", headers=HEADERS)
            if mode == "garbage":
                return web.Response(body=GARBAGE, content_type="text/plain", headers=HEADERS)

        turns = conversation(body)
        words = graded(answer_words(model, turns, count), config.outcomes, model, body.get("messages") or [])
        tools = forced_tools(body)
        ident = f"msg_sim{seed(model, repr(turns)) % 10**12:012d}"
        if tools:
            blocks = [{"type": "tool_use", "id": f"toolu_sim{seed(ident, tool['name']) % 10**10:010d}",
                       "name": tool["name"], "input": tool_input(tool.get("input_schema"), words)} for tool in tools]
            output, stop = sum(len(dumps(b["input"])) // 4 + 1 for b in blocks), "tool_use"
        else:
            blocks = [{"type": "text", "text": "".join(words)}]
            output = len(words)
        usage = self._usage(body, turns, output)
        if not stream:
            answer = {"id": ident, "type": "message", "role": "assistant", "model": model, "content": blocks,
                      "stop_reason": stop, "stop_sequence": None, "usage": usage}
            if mode == "no_usage":
                del answer["usage"]
            return web.Response(body=dumps(answer), content_type="application/json", headers=HEADERS)

        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        if mode == "garbage":
            await response.write(GARBAGE)
            return response
        if mode == "invalid_json":
            await response.write(b"event: message_start\ndata: " + NOT_JSON + b"\n\n")
            return response
        start_usage = {**usage, "output_tokens": 1}
        start = {"type": "message_start", "message": {
            "id": ident, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}}
        if mode == "no_usage":
            del start["message"]["usage"]
        # Every block's events in order: its start (the first with a ping after it), its deltas
        # (words of text, or three fragments of a tool's input), its stop.
        events: list[bytes] = []
        for number, block in enumerate(blocks):
            if block["type"] == "tool_use":
                first = {**block, "input": {}}
                pieces = _split(dumps(block["input"]).decode(), 3)
                kind, field = b"input_json_delta", b"partial_json"
            else:
                first, pieces, kind, field = {"type": "text", "text": ""}, words, b"text_delta", b"text"
            events.append(b"event: content_block_start\ndata: " + dumps(
                {"type": "content_block_start", "index": number, "content_block": first}) + b"\n\n"
                + (b'event: ping\ndata: {"type": "ping"}\n\n' if number == 0 else b""))
            head = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":' + str(number).encode()
                    + b',"delta":{"type":"' + kind + b'","' + field + b'":')
            events += [head + dumps(piece) + b"}}\n\n" for piece in pieces]
            events.append(b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
                          + str(number).encode() + b"}\n\n")
        await response.write(b"event: message_start\ndata: " + dumps(start) + b"\n\n" + events[0])
        deltas = events[1:-1]
        for index, event in enumerate(deltas):
            if mode == "cut" and index == min(3, len(deltas) - 1):
                drop_connection(request)  # mid-answer: no message_delta, no message_stop
                return response
            if mode == "stall" and index == min(3, len(deltas) - 1):
                await self.simulator._hang(request)
                return response
            if delay > 0 and index:
                await asyncio.sleep(delay)
            await response.write(event)
        end_usage = {"output_tokens": output}
        tail = (events[-1] + b"event: message_delta\ndata: " + dumps(
                    {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                     **({} if mode == "no_usage" else {"usage": end_usage})}) + b"\n\n"
                + b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        await response.write(tail)
        if mode == "linger":
            await self.simulator._hang(request)  # the stream is whole, but its response never ends
        return response


def _split(text: str, parts: int) -> list[str]:
    size = max(len(text) // parts, 1)
    return [text[i:i + size] for i in range(0, len(text), size)]


def messages_routes(app: web.Application, simulator: Simulator) -> None:
    """Add the Messages API to a simulator's application."""
    api = MessagesAPI(simulator)
    app.router.add_post("/v1/messages", api.create)
    app.router.add_post("/v1/messages/count_tokens", api.count_tokens)
    app.router.add_get("/_sim/last_messages", api.last)
