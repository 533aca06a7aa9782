"""A SIMULATED OpenAI-compatible upstream, for the demo, the tests and the benchmarks.

It is not a model. It answers deterministically from the request so that everything runs
with no internet, and marks every response with ``x-simulated-upstream: true``.

Endpoints
    POST /v1/chat/completions   JSON, or SSE with ``stream: true``; usage in both (in a stream,
                                a final ``choices: []`` chunk only with
                                ``stream_options.include_usage``); ``max_tokens`` /
                                ``max_completion_tokens`` cap the answer (finish_reason "length")
    POST /v1/embeddings         unit vectors seeded by the text (``dimensions`` honoured;
                                ``encoding_format: base64`` as the openai SDK asks by default)
    GET  /v1/models             sim-mini, sim-standard, sim-premium, sim-embed
    POST /v1/messages           Anthropic's Messages API, JSON or SSE (``apps.simulator.messages``)
    POST /v1/responses          OpenAI's Responses API, JSON or typed SSE events
                                (``apps.simulator.responses``)
    POST /openai/deployments/{deployment}/chat/completions?api-version=...
    POST /openai/v1/chat/completions
                                Azure OpenAI (``apps.simulator.azure``): the chat answer with
                                Azure's content-filter results, an ``api-key`` header required
    POST /v1beta/models/{model}:generateContent, :streamGenerateContent?alt=sse
                                Google's Gemini API (``apps.simulator.gemini``), an
                                ``x-goog-api-key`` header required
    POST /v1/projects/{project}/locations/{location}/publishers/google/models/{model}
         :generateContent, :streamGenerateContent?alt=sse
                                Vertex AI (``apps.simulator.vertex``): the Gemini API's answers,
                                an OAuth access token from ``POST /token`` required
    POST /model/{model}/converse, /model/{model}/converse-stream
                                Amazon Bedrock's Converse API (``apps.simulator.bedrock``), signed
                                with AWS SigV4
    POST /v1/files, /v1/batches; GET /v1/batches/{id}, /v1/files/{id}/content
                                OpenAI's Files and Batch API (``apps.simulator.batches``): a batch
                                runs its lines through this server after ``--batch-delay-ms``
    POST /v1/messages/batches; GET /v1/messages/batches/{id}, .../results
                                Anthropic's Message Batches (``apps.simulator.message_batches``),
                                likewise

    A ``tool_choice`` that forces a tool (``"required"`` or ``{"type": "function", ...}``)
    answers with one call of it (finish_reason "tool_calls"), its arguments built from the
    tool's schema as ``apps.simulator.answers.tool_input`` does. ``"required"`` with several
    tools calls each of them once, in parallel (only the first with ``parallel_tool_calls:
    false``).

Formulas (content, token counts, embeddings): ``apps.simulator.answers``.

Knobs (command line; per request through headers)
    --ttft-ms / x-sim-ttft-ms                 delay before the first byte (default 20)
    --chunk-delay-ms / x-sim-chunk-delay-ms   delay between stream chunks (default 0)
    --chunks / x-sim-chunks                   words in an answer (default 20)
    --embedding-dims                          embedding length unless ``dimensions`` is sent (384)
    --rpm                                     chat requests each model takes per wall-clock minute
                                              (default 0: no limit); over it, 429 with Retry-After
                                              to the minute's end; answers carry
                                              ``x-ratelimit-limit-requests`` / ``-remaining-requests``
    Embeddings answer without any delay.

Faults (``apps.simulator.control``; control API; the gateway cannot set headers on its upstream calls)
    POST   /_sim/faults  {"model": "<id>" | "*", "mode": "status" | "timeout" | "cut" |
                          "garbage" | "invalid_json" | "no_usage" | "linger" |
                          "content_filter" | "context_length", "status": 500, "count": 1
                          (-1 = until cleared), "retry_after": seconds,
                          "delay": seconds (for "slow")}
                          queues a fault for the next matching chat or embeddings requests
                          (the oldest matching fault first)
    DELETE /_sim/faults  clear them
    GET    /_sim/stats   {"requests", "by_model", "in_flight", "max_in_flight", "faults",
                          and with --rpm "per_minute" (requests taken by model and minute),
                          "rate_limited"}
    POST   /_sim/reset   zero the stats and clear the faults
    Header ``x-sim-fault: <mode>[:<status>]`` injects a fault into one direct request.

    Modes
        status        that HTTP status with an OpenAI error body (and ``Retry-After`` if given)
        timeout       no answer until the client disconnects or the server shuts down (at most
                      an hour)
        slow          the answer as usual, but its first byte after ``delay`` seconds (default 5)
        stall         a stream sends its role chunk and three words, then nothing more with the
                      connection open (as ``timeout`` does); otherwise the headers and the start
                      of a JSON body, then nothing more
        cut           a stream sends its role chunk and three words, then the connection is
                      closed without the final chunk or ``[DONE]``; otherwise the connection is
                      closed with no response at all
        garbage       a stream sends junk bytes that are not server-sent events; otherwise a 200
                      ``text/plain`` body of junk (embeddings: as ``invalid_json``)
        invalid_json  a 200 whose body is not JSON; a stream sends one event whose data is not
                      JSON, then ``[DONE]``
        no_usage      a normal answer without any usage (JSON or stream), like some providers
        content_filter  Azure's 400 with code ``content_filter`` (its prompt filtered); on the
                      Gemini API, an answer stopped by finishReason SAFETY after three words
        context_length  the provider's refusal of a prompt too long for the model's context
                      window: OpenAI's (and Azure's) 400 with code ``context_length_exceeded``,
                      Anthropic's 400 "prompt is too long", Gemini's 400 INVALID_ARGUMENT "input
                      token count exceeds", Bedrock's ValidationException "Input is too long"
        linger        a stream sends its whole answer (through ``[DONE]`` or ``message_stop``)
                      but never ends the response, leaving the connection open (as ``timeout``
                      does); a JSON answer is as usual
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import struct
import sys
import time
from pathlib import Path

from aiohttp import web

from apps.simulator.answers import (
    MODELS,
    answer_words,
    dumps,
    embedding_vector,
    input_tokens,
    loads,
    prompt_tokens,
    seed,
    tool_input,
)
from apps.simulator.azure import (
    AZURE_FIRST_CHUNK,
    FILTER_RESULTS,
    PROMPT_FILTER_RESULTS,
    azure_routes,
    content_filter_response,
)
from apps.simulator.batches import BatchStore, batch_routes
from apps.simulator.bedrock import bedrock_routes
from apps.simulator.control import (
    GARBAGE,
    HEADERS,
    NOT_JSON,
    SSE_HEADERS,
    TIMEOUT_FAULT_SECONDS,
    Fault,
    SimulatorConfig,
    SimulatorState,
    drop_connection,
    fault_from_body,
    header_fault,
    knob,
)
from apps.simulator.gemini import gemini_routes
from apps.simulator.message_batches import message_batch_routes
from apps.simulator.messages import messages_routes
from apps.simulator.outcomes import graded, outcomes_load
from apps.simulator.responses import responses_routes
from apps.simulator.vertex import vertex_routes


def _error(status: int, message: str, *, code: str | None = None, param: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "api_error"
    if status == 429:
        kind = "rate_limit_error"
    body = {"error": {"message": f"[simulated] {message}", "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=dumps(body), content_type="application/json",
                        headers={**HEADERS, **(headers or {})})


async def _read_json(request: web.Request) -> tuple[dict, None] | tuple[None, web.Response]:
    raw = await request.read()
    try:
        body = loads(raw)
    except ValueError:
        return None, _error(400, "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return None, _error(400, "The request body must be a JSON object.")
    return body, None


def _fault_status(fault: Fault) -> web.Response:
    headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
    return _error(fault.status, f"injected fault: status {fault.status}", code="simulated_fault", headers=headers)


def _forced_functions(body: dict) -> list[dict]:
    """The functions a ``tool_choice`` forces: every tool for ``"required"`` (the first only
    when parallel calls are off), the named one for ``{"type": "function", ...}``."""
    choice = body.get("tool_choice")
    functions = [t.get("function") for t in body.get("tools") or [] if isinstance(t, dict)]
    functions = [f for f in functions if isinstance(f, dict) and isinstance(f.get("name"), str)]
    if not functions:
        return []
    if choice == "required":
        return functions if body.get("parallel_tool_calls") is not False else functions[:1]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return [f for f in functions if f["name"] == choice["function"].get("name")][:1]
    return []


class Simulator:
    """The request handlers of one simulated upstream, sharing one ``SimulatorState``."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.state = SimulatorState(config=config)
        self.batches = BatchStore(delay_ms=config.batch_delay_ms, default_delay_ms=config.batch_delay_ms)

    async def on_shutdown(self, app: web.Application) -> None:
        """Let requests held by a ``timeout`` fault end so that the server stops at once."""
        self.state.stopping = True

    async def _hang(self, request: web.Request) -> web.Response:
        """Answer nothing until the client has gone, the server stops, or an hour has passed."""
        deadline = time.monotonic() + TIMEOUT_FAULT_SECONDS
        while time.monotonic() < deadline and not self.state.stopping:
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            await asyncio.sleep(0.05)
        return web.Response(status=504, headers=HEADERS)

    async def stall_json(self, request: web.Request) -> web.StreamResponse:
        """Headers and the start of a JSON body, then silence with the connection left open."""
        response = web.StreamResponse(headers=HEADERS)
        response.content_type = "application/json"
        response.content_length = 4096
        await response.prepare(request)
        await response.write(b'{"id": "chatcmpl-stalled", "object": "chat.completion", "choices": [')
        await self._hang(request)
        return response

    # --- control API -------------------------------------------------------------------
    async def faults_add(self, request: web.Request) -> web.Response:
        """``POST /_sim/faults``: queue a fault."""
        body, error = await _read_json(request)
        if error:
            return error
        fault = fault_from_body(body)
        if isinstance(fault, str):
            return _error(400, fault)
        self.state.faults.append(fault)
        return web.json_response({"queued": len(self.state.faults)}, headers=HEADERS)

    async def faults_clear(self, request: web.Request) -> web.Response:
        """``DELETE /_sim/faults``: clear every queued fault."""
        self.state.faults.clear()
        return web.json_response({"queued": 0}, headers=HEADERS)

    async def stats(self, request: web.Request) -> web.Response:
        """``GET /_sim/stats``: requests served (in total and by model) and concurrency."""
        s = self.state
        stats = {"requests": s.requests, "by_model": s.by_model, "in_flight": s.in_flight,
                 "max_in_flight": s.max_in_flight, "faults": len(s.faults)}
        if s.config.rpm:
            stats |= {"per_minute": s.per_minute, "rate_limited": s.rate_limited}
        return web.json_response(stats, headers=HEADERS)

    async def reset(self, request: web.Request) -> web.Response:
        """``POST /_sim/reset``: zero the counters and clear the faults."""
        s = self.state
        s.faults.clear()
        s.prompt_cache.clear()
        s.last_messages = None
        s.requests = 0
        s.by_model = {}
        s.per_minute = {}
        s.rate_limited = {}
        s.max_in_flight = s.in_flight
        s.service_accounts.clear()
        s.access_tokens.clear()
        self.batches.reset()
        return web.json_response({"reset": True}, headers=HEADERS)

    # --- OpenAI API --------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``."""
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "switchyard-simulator"} for m in MODELS]
        return web.json_response({"object": "list", "data": data}, headers=HEADERS)

    def _enter(self, model: str) -> None:
        s = self.state
        s.requests += 1
        s.by_model[model] = s.by_model.get(model, 0) + 1
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``, JSON or SSE."""
        body, error = await _read_json(request)
        if error:
            return error
        return await self.chat_answer(request, body)

    async def chat_answer(self, request: web.Request, body: dict, *, azure: bool = False) -> web.StreamResponse:
        """The answer to a chat body (``azure``: with Azure OpenAI's content-filter results)."""
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            return _error(400, "'model' is required.", param="model")
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' must be a non-empty array.", param="messages")
        self._enter(model)
        try:
            return await self._chat(request, body, model, messages, azure=azure)
        finally:
            self.state.in_flight -= 1

    async def _chat(self, request: web.Request, body: dict, model: str, messages: list, *,
                    azure: bool = False) -> web.StreamResponse:
        config = self.state.config
        fault = header_fault(request) or self.state.take_fault(model)
        mode = fault.mode if fault is not None else None
        ttft = knob(request, "x-sim-ttft-ms", config.ttft_ms) / 1000
        delay = knob(request, "x-sim-chunk-delay-ms", config.chunk_delay_ms) / 1000
        count = max(int(knob(request, "x-sim-chunks", config.chunks)), 1)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < count:
            count, finish = limit, "length"
        stream = bool(body.get("stream"))

        if mode == "status":
            return _fault_status(fault)
        if mode == "content_filter":
            return content_filter_response()
        if mode == "context_length":
            return _error(400, "This model's maximum context length is exceeded by your messages. Please reduce "
                          "the length of the messages.", code="context_length_exceeded", param="messages")
        if mode == "timeout":
            return await self._hang(request)
        if mode == "slow":
            ttft = fault.delay
        headers, sse_headers = HEADERS, SSE_HEADERS
        if config.rpm:
            now = time.time()
            left = self.state.rate_take(model, config.rpm, now)
            limits = {"x-ratelimit-limit-requests": str(config.rpm),
                      "x-ratelimit-remaining-requests": str(max(left, 0))}
            if left < 0:
                return _error(429, f"simulated rate limit: {config.rpm} requests per minute for {model}",
                              headers={**limits, "Retry-After": str(max(int(60 - now % 60) + 1, 1))})
            headers, sse_headers = {**HEADERS, **limits}, {**SSE_HEADERS, **limits}
        if ttft > 0:
            await asyncio.sleep(ttft)
        if not stream:
            if mode == "cut":
                return drop_connection(request)
            if mode == "stall":
                return await self.stall_json(request)
            if mode == "invalid_json":
                return web.Response(body=NOT_JSON, content_type="application/json", headers=HEADERS)
            if mode == "garbage":
                return web.Response(body=GARBAGE, content_type="text/plain", headers=HEADERS)

        words = graded(answer_words(model, messages, count), config.outcomes, model, messages)
        p_tokens = prompt_tokens(messages)
        usage = {"prompt_tokens": p_tokens, "completion_tokens": len(words), "total_tokens": p_tokens + len(words),
                 "prompt_tokens_details": {"cached_tokens": 0}}
        ident = f"chatcmpl-sim{seed(model, repr(messages)) % 10**12:012d}"
        created = int(time.time())
        tools = _forced_functions(body)
        if tools:
            return await self._tool_calls(request, body, tools, words, ident, created, model, usage, stream)
        if not stream:
            answer = {
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": "switchyard-simulated",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                             "logprobs": None, "finish_reason": finish}],
                "usage": usage,
            }
            if azure:
                answer["prompt_filter_results"] = PROMPT_FILTER_RESULTS
                answer["choices"][0]["content_filter_results"] = FILTER_RESULTS
            if mode == "no_usage":
                del answer["usage"]
            return web.Response(body=dumps(answer), content_type="application/json", headers=headers)

        response = web.StreamResponse(headers=sse_headers)
        await response.prepare(request)
        if mode == "garbage":
            await response.write(GARBAGE)
            return response
        if mode == "invalid_json":
            await response.write(b"data: " + NOT_JSON + b"\n\ndata: [DONE]\n\n")
            return response
        head = (b'{"id":"' + ident.encode() + b'","object":"chat.completion.chunk","created":'
                + str(created).encode() + b',"model":' + dumps(model)
                + b',"system_fingerprint":"switchyard-simulated","choices":[')
        if azure:  # Azure's first chunk: the prompt's filter results, with no choice
            await response.write(AZURE_FIRST_CHUNK)
        await response.write(b"data: " + head + b'{"index":0,"delta":{"role":"assistant","content":""},'
                             b'"finish_reason":null}]}\n\n')
        for index, word in enumerate(words):
            if mode == "cut" and index == min(3, len(words) - 1):
                drop_connection(request)  # mid-answer: no final chunk, no [DONE]
                return response
            if mode == "stall" and index == min(3, len(words) - 1):
                await self._hang(request)  # mid-answer: silence, the connection left open
                return response
            if delay > 0 and index:
                await asyncio.sleep(delay)
            await response.write(b"data: " + head + b'{"index":0,"delta":{"content":' + dumps(word)
                                 + b'},"finish_reason":null}]}\n\n')
        tail = b"data: " + head + b'{"index":0,"delta":{},"finish_reason":"' + finish.encode() + b'"}]}\n\n'
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") and mode != "no_usage":
            tail += b"data: " + head + b'],"usage":' + dumps(usage) + b"}\n\n"
        await response.write(tail + b"data: [DONE]\n\n")
        if mode == "linger":
            await self._hang(request)  # the stream is whole, but its response never ends
        return response

    async def _tool_calls(self, request, body, tools: list[dict], words, ident, created, model, usage, stream):
        """Forced tool calls instead of text (JSON, or a stream of argument fragments)."""
        calls = [{"id": f"call_sim{seed(ident, tool['name']) % 10**10:010d}", "type": "function",
                  "function": {"name": tool["name"], "arguments": dumps(tool_input(tool.get("parameters"),
                                                                                   words)).decode()}}
                 for tool in tools]
        usage = {**usage, "completion_tokens": sum(len(c["function"]["arguments"]) // 4 + 1 for c in calls)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not stream:
            answer = {"id": ident, "object": "chat.completion", "created": created, "model": model,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": calls},
                                   "logprobs": None, "finish_reason": "tool_calls"}], "usage": usage}
            return web.Response(body=dumps(answer), content_type="application/json", headers=HEADERS)
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        deltas: list[dict] = []
        for index, call in enumerate(calls):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            first = {"role": "assistant", "content": None} if index == 0 else {}
            deltas += [{**first, "tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                 "function": {"name": call["function"]["name"], "arguments": ""}}]},
                       {"tool_calls": [{"index": index, "function": {"arguments": arguments[:half]}}]},
                       {"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]}]
        out = b"".join(b"data: " + dumps({**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]})
                       + b"\n\n" for d in deltas)
        out += b"data: " + dumps({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        out += b"\n\n"
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            out += b"data: " + dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
        await response.write(out + b"data: [DONE]\n\n")
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        """``POST /v1/embeddings``, float lists or base64 little-endian float32."""
        body, error = await _read_json(request)
        if error:
            return error
        return await self.embeddings_answer(request, body)

    async def embeddings_answer(self, request: web.Request, body: dict) -> web.Response:
        """The answer to an embeddings body."""
        model = body.get("model")
        value = body.get("input")
        if not isinstance(model, str) or not model:
            return _error(400, "'model' is required.", param="model")
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            texts = value
        else:
            return _error(400, "'input' must be a string or an array of strings.", param="input")
        dims = body.get("dimensions")
        if dims is None:
            dims = self.state.config.embedding_dims
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 8192:
            return _error(400, "'dimensions' must be an integer from 1 to 8192.", param="dimensions")
        self._enter(model)
        try:
            fault = header_fault(request) or self.state.take_fault(model)
            mode = fault.mode if fault is not None else None
            if mode == "status":
                return _fault_status(fault)
            if mode == "timeout":
                return await self._hang(request)
            if mode == "cut":
                return drop_connection(request)
            if mode in ("invalid_json", "garbage"):
                return web.Response(body=NOT_JSON, content_type="application/json", headers=HEADERS)
            as_base64 = body.get("encoding_format") == "base64"
            data = []
            tokens = 0
            for index, text in enumerate(texts):
                vector = embedding_vector(text, dims)
                tokens += input_tokens(text)
                encoded = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
                data.append({"object": "embedding", "index": index, "embedding": encoded})
            answer: dict = {"object": "list", "data": data, "model": model}
            if mode != "no_usage":
                answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
            return web.Response(body=dumps(answer), content_type="application/json", headers=HEADERS)
        finally:
            self.state.in_flight -= 1


SIMULATOR = web.AppKey("simulator", Simulator)


def build_app(config: SimulatorConfig | None = None) -> web.Application:
    """The aiohttp application (used by ``run`` and by tests that host it themselves).

    ``app[SIMULATOR].state`` holds the faults and counters of this server.
    """
    simulator = Simulator(config or SimulatorConfig())
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SIMULATOR] = simulator
    app.on_shutdown.append(simulator.on_shutdown)
    app.router.add_post("/v1/chat/completions", simulator.chat)
    app.router.add_post("/v1/embeddings", simulator.embeddings)
    app.router.add_get("/v1/models", simulator.models)
    messages_routes(app, simulator)
    responses_routes(app, simulator)
    azure_routes(app, simulator)
    gemini_routes(app, simulator)
    vertex_routes(app, simulator)
    bedrock_routes(app, simulator)
    batch_routes(app, simulator.batches)
    message_batch_routes(app, simulator.batches)
    app.router.add_post("/_sim/faults", simulator.faults_add)
    app.router.add_delete("/_sim/faults", simulator.faults_clear)
    app.router.add_get("/_sim/stats", simulator.stats)
    app.router.add_post("/_sim/reset", simulator.reset)
    return app


def run(host: str, port: int, config: SimulatorConfig) -> None:
    """Serve until interrupted (SIGINT/SIGTERM), on uvloop when it is installed."""
    try:
        import uvloop  # optional: the asyncio loop serves where it is missing

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    print(f"SIMULATED upstream (not a real model provider) on http://{host}:{port}/v1", flush=True)
    web.run_app(build_app(config), host=host, port=port, access_log=None, print=None, backlog=2048,
                shutdown_timeout=1.0, loop=loop)


def parser() -> argparse.ArgumentParser:
    """Command-line options, shared in spirit with ``manage.py simulate_upstream``."""
    p = argparse.ArgumentParser(description="Switchyard's SIMULATED OpenAI-compatible upstream.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--ttft-ms", type=float, default=SimulatorConfig.ttft_ms)
    p.add_argument("--chunk-delay-ms", type=float, default=SimulatorConfig.chunk_delay_ms)
    p.add_argument("--chunks", type=int, default=SimulatorConfig.chunks)
    p.add_argument("--embedding-dims", type=int, default=SimulatorConfig.embedding_dims)
    p.add_argument("--rpm", type=int, default=SimulatorConfig.rpm)
    p.add_argument("--batch-delay-ms", type=float, default=SimulatorConfig.batch_delay_ms,
                   help="how long a submitted batch (POST /v1/batches) waits before it runs")
    p.add_argument("--outcomes", type=Path, nargs="*", default=[],
                   help="CSV files of known outcomes (prompt, then one True/False column per model)")
    p.add_argument("--outcome-model", action="append", default=[], metavar="NAME=COLUMN",
                   help="answer as NAME the way COLUMN of the outcomes says (repeatable)")
    return p


def main(argv: list[str] | None = None) -> None:
    """``python -m apps.simulator.server --port N [--ttft-ms ...]``."""
    args = parser().parse_args(argv)
    run(args.host, args.port, SimulatorConfig(ttft_ms=args.ttft_ms, chunk_delay_ms=args.chunk_delay_ms,
                                              chunks=args.chunks, embedding_dims=args.embedding_dims, rpm=args.rpm,
                                              batch_delay_ms=args.batch_delay_ms,
                                              outcomes=outcomes_load(args.outcomes, args.outcome_model)))


if __name__ == "__main__":
    main(sys.argv[1:])
