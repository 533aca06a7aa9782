"""The SIMULATED upstream's Responses API, so a provider serving OpenAI's ``/v1/responses``
natively can be tested and benchmarked over real HTTP.

    POST /v1/responses      a ``response`` object, or with ``stream: true`` the typed events
                            (response.created, response.in_progress, output_item.added,
                            content_part.added, output_text.delta per word, output_text.done,
                            content_part.done, output_item.done; for a tool call
                            function_call_arguments.delta / .done; response.completed with
                            usage, or response.incomplete when ``max_output_tokens`` cut it),
                            each with its ``sequence_number``
    GET  /_sim/last_responses   the last Responses request's body as it arrived

The answer is the chat endpoint's for the same conversation (``instructions`` as a first
system message, then the ``input`` items' text): the same words, token formulas, knobs
(``x-sim-ttft-ms``, ``x-sim-chunk-delay-ms``, ``x-sim-chunks``) and faults (``status``,
``timeout``, ``slow``, ``cut``, ``invalid_json``, ``no_usage``). A ``tool_choice`` of
``"required"`` calls each function tool (the first only with ``parallel_tool_calls: false``),
``{"type": "function", "name": ...}`` that one. ``reasoning.effort`` adds 8 reasoning tokens to
the output; a ``prompt_cache_key`` seen before reports half the prompt as cached.
``previous_response_id`` is refused: this upstream stores nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiohttp import web

from apps.simulator.answers import answer_words, dumps, loads, prompt_tokens, seed, tool_input
from apps.simulator.control import HEADERS, NOT_JSON, SSE_HEADERS, drop_connection, header_fault, knob

if TYPE_CHECKING:
    from apps.simulator.server import Simulator

_REASONING_TOKENS = 8


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": f"[simulated] {message}", "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=dumps(body), content_type="application/json", headers=HEADERS)


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text") or "" for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def conversation(body: dict) -> list[dict]:
    """The request as chat messages: instructions, then each input item's text."""
    turns = [{"role": "system", "content": body["instructions"]}] if isinstance(body.get("instructions"), str) else []
    items = body.get("input")
    if isinstance(items, str):
        return [*turns, {"role": "user", "content": items}]
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            turns.append({"role": item.get("role"), "content": _text(item.get("content"))})
        elif kind == "function_call":
            turns.append({"role": "assistant", "content": str(item.get("arguments") or "")})
        elif kind == "function_call_output":
            turns.append({"role": "tool", "content": _text(item.get("output"))})
    return turns


def _forced(body: dict) -> list[dict]:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"
             and isinstance(t.get("name"), str)]
    choice = body.get("tool_choice")
    if choice == "required":
        return tools if body.get("parallel_tool_calls") is not False else tools[:1]
    if isinstance(choice, dict) and choice.get("type") == "function":
        return [t for t in tools if t["name"] == choice.get("name")][:1]
    return []


def _problem(body: dict) -> tuple[str, str] | None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model", "Missing required parameter: 'model'."
    items = body.get("input")
    if not isinstance(items, str | list) or not items:
        return "input", "Missing required parameter: 'input'."
    if isinstance(items, list) and not all(isinstance(item, dict) for item in items):
        return "input", "Invalid 'input': expected an array of items."
    if body.get("previous_response_id") is not None:
        return "previous_response_id", "Previous response not found: this upstream stores nothing."
    return None


class ResponsesAPI:
    """The handlers, sharing the chat endpoint's :class:`Simulator` (state, knobs, faults)."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.last: dict | None = None

    async def last_body(self, request: web.Request) -> web.Response:
        """``GET /_sim/last_responses``: the last Responses request's body (null before the first)."""
        return web.Response(body=dumps(self.last), content_type="application/json", headers=HEADERS)

    async def create(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/responses``, JSON or SSE."""
        try:
            body = loads(await request.read())
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        self.last = body
        problem = _problem(body)
        if problem is not None:
            return _error(400, problem[1], param=problem[0])
        simulator = self.simulator
        simulator._enter(body["model"])
        try:
            return await self._create(request, body)
        finally:
            simulator.state.in_flight -= 1

    def _usage(self, body: dict, turns: list, output: int) -> dict:
        prompt = prompt_tokens(turns)
        cached = 0
        key = body.get("prompt_cache_key")
        if isinstance(key, str):
            cache = self.simulator.state.prompt_cache
            if f"responses:{key}" in cache:
                cached = prompt // 2
            cache.add(f"responses:{key}")
        reasoning = _REASONING_TOKENS if isinstance(body.get("reasoning"), dict) and body["reasoning"].get(
            "effort") not in (None, "none") else 0
        output += reasoning
        return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
                "output_tokens": output, "output_tokens_details": {"reasoning_tokens": reasoning},
                "total_tokens": prompt + output}

    async def _create(self, request: web.Request, body: dict) -> web.StreamResponse:
        state = self.simulator.state
        config = state.config
        model = body["model"]
        fault = header_fault(request) or state.take_fault(model)
        mode = fault.mode if fault is not None else None
        ttft = knob(request, "x-sim-ttft-ms", config.ttft_ms) / 1000
        delay = knob(request, "x-sim-chunk-delay-ms", config.chunk_delay_ms) / 1000
        count = max(int(knob(request, "x-sim-chunks", config.chunks)), 1)
        limit = body.get("max_output_tokens")
        cut = isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < count
        if cut:
            count = limit
        stream = bool(body.get("stream"))
        if mode == "status":
            return _error(fault.status, f"injected fault: status {fault.status}", code="simulated_fault")
        if mode == "timeout":
            return await self.simulator._hang(request)
        if mode == "slow":
            ttft = fault.delay
        if ttft > 0:
            await asyncio.sleep(ttft)
        if not stream and mode == "cut":
            return drop_connection(request)
        if not stream and mode == "invalid_json":
            return web.Response(body=NOT_JSON, content_type="application/json", headers=HEADERS)

        turns = conversation(body)
        words = answer_words(model, turns, count)
        ident = f"{seed(model, repr(turns), str(time.monotonic_ns())) % 10**16:016d}"
        tools = _forced(body)
        if tools:
            items = [{"id": f"fc_sim{ident}_{n}", "type": "function_call", "status": "completed",
                      "call_id": f"call_sim{ident}_{n}", "name": tool["name"],
                      "arguments": dumps(tool_input(tool.get("parameters"), words)).decode()}
                     for n, tool in enumerate(tools)]
            output = sum(len(item["arguments"]) // 4 + 1 for item in items)
            cut = False
        else:
            items = [{"id": f"msg_sim{ident}", "type": "message", "status": "completed", "role": "assistant",
                      "content": [{"type": "output_text", "text": "".join(words), "annotations": [],
                                   "logprobs": []}]}]
            output = len(words)
        shell = _shell(body, f"resp_sim{ident}")
        usage = None if mode == "no_usage" else self._usage(body, turns, output)
        final = {**shell, "status": "incomplete" if cut else "completed",
                 "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                 "output": items, "usage": usage}
        if not stream:
            return web.Response(body=dumps(final), content_type="application/json", headers=HEADERS)

        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        sequence = iter(range(1 << 30))

        def event(kind: str, fields: dict) -> bytes:
            return (b"event: " + kind.encode() + b"\ndata: "
                    + dumps({"type": kind, **fields, "sequence_number": next(sequence)}) + b"\n\n")

        head = event("response.created", {"response": shell}) + event("response.in_progress", {"response": shell})
        if mode == "invalid_json":
            await response.write(head + b"event: response.output_text.delta\ndata: " + NOT_JSON + b"\n\n")
            return response
        pieces: list[bytes] = []
        for index, item in enumerate(items):
            where = {"item_id": item["id"], "output_index": index}
            if item["type"] == "message":
                opened = {**item, "status": "in_progress", "content": []}
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                pieces.append(event("response.output_item.added", {"output_index": index, "item": opened})
                              + event("response.content_part.added", {**where, "content_index": 0, "part": part}))
                pieces += [event("response.output_text.delta", {**where, "content_index": 0, "delta": word,
                                                                "logprobs": []}) for word in words]
                text = item["content"][0]
                pieces.append(event("response.output_text.done", {**where, "content_index": 0,
                                                                  "text": text["text"], "logprobs": []})
                              + event("response.content_part.done", {**where, "content_index": 0, "part": text}))
            else:
                opened = {**item, "status": "in_progress", "arguments": ""}
                pieces.append(event("response.output_item.added", {"output_index": index, "item": opened}))
                arguments = item["arguments"]
                size = max(len(arguments) // 3, 1)
                pieces += [event("response.function_call_arguments.delta", {**where, "delta": arguments[i:i + size]})
                           for i in range(0, len(arguments), size)]
                pieces.append(event("response.function_call_arguments.done", {**where, "name": item["name"],
                                                                              "arguments": arguments}))
            pieces.append(event("response.output_item.done", {"output_index": index, "item": item}))
        pieces.append(event("response.incomplete" if cut else "response.completed", {"response": final}))
        await response.write(head + pieces[0])
        rest = pieces[1:]
        for index, piece in enumerate(rest):
            if mode == "cut" and index == min(3, len(rest) - 1):
                drop_connection(request)  # mid-answer: no response.completed
                return response
            if delay > 0 and index:
                await asyncio.sleep(delay)
            await response.write(piece)
        return response


def _shell(body: dict, response_id: str) -> dict:
    return {"id": response_id, "object": "response", "created_at": int(time.time()), "status": "in_progress",
            "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "model": body["model"], "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
            "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
            "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [], "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "usage": None, "user": body.get("user"), "metadata": body.get("metadata") or {}}


def responses_routes(app: web.Application, simulator: Simulator) -> None:
    """Add the Responses API to a simulator's application."""
    api = ResponsesAPI(simulator)
    app.router.add_post("/v1/responses", api.create)
    app.router.add_get("/_sim/last_responses", api.last_body)
