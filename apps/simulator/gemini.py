"""The SIMULATED upstream's Gemini API, so a ``gemini`` provider can be tested over real HTTP.
The provider's base URL is the simulator's ``/v1beta``.

    POST /v1beta/models/{model}:generateContent          JSON
    POST /v1beta/models/{model}:streamGenerateContent?alt=sse
                                                         SSE, one event per word (``\\r\\n\\r\\n``
                                                         between events, as Google's servers send)
    GET  /v1beta/models                                  the simulator's models

The key goes in ``x-goog-api-key`` (or ``?key=``): none is answered 403 PERMISSION_DENIED, one
starting with ``invalid`` 400 INVALID_ARGUMENT with reason API_KEY_INVALID, as Google answers.

The body is checked as the real API checks it (contents of role ``user`` or ``model`` with
parts; a functionResponse object; a functionResponse turn right after the model's
functionCall turn, naming its functions; a functionCall sent back with its thoughtSignature);
what is wrong is a 400 INVALID_ARGUMENT. The answer is the chat endpoint's for the same
conversation (the system instruction a first message; a function's response as its JSON): the
same words, token formulas, knobs and faults.

    tools     toolConfig.functionCallingConfig mode ANY calls each allowed function once
              (functionCall parts, each with a thoughtSignature), arguments built from the
              schema as ``apps.simulator.answers.tool_input`` does
    usage     promptTokenCount; cachedContentTokenCount: the system instruction's tokens when the
              same instruction came before (an implicit cache, until ``/_sim/reset``);
              thoughtsTokenCount: twice the answer's words, at most the thinking budget, when
              thinkingConfig.thinkingBudget is above 0; candidatesTokenCount: the words
    faults    ``status`` answers Google's error shape (429 RESOURCE_EXHAUSTED with a RetryInfo
              ``retryDelay`` when ``retry_after`` is given, and no Retry-After header);
              ``content_filter`` stops the answer after three words with finishReason SAFETY;
              ``context_length`` answers 400 INVALID_ARGUMENT "The input token count exceeds
              the maximum number of tokens allowed."
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import TYPE_CHECKING

from aiohttp import web

from apps.simulator.answers import MODELS, answer_words, dumps, loads, prompt_tokens, seed, tool_input
from apps.simulator.control import GARBAGE, HEADERS, NOT_JSON, SSE_HEADERS, drop_connection, header_fault, knob
from apps.simulator.outcomes import graded

if TYPE_CHECKING:
    from apps.simulator.server import Simulator

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_PART_KINDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse")
_EVENT_END = b"\r\n\r\n"


def google_error(status: int, message: str, *, details: list | None = None) -> web.Response:
    name = _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    error: dict = {"code": status, "message": f"[simulated] {message}", "status": name}
    if details:
        error["details"] = details
    return web.Response(status=status, body=dumps({"error": error}), content_type="application/json",
                        headers=HEADERS)


def _invalid(message: str) -> web.Response:
    return google_error(400, message)


def _check(body: dict) -> str | None:
    """What the real API would refuse in ``body``, or None."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    called: list[str] = []  # the functions the previous model turn called
    for number, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role") not in ("user", "model"):
            return f"Please use a valid role: user, model (contents[{number}])."
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return f"* GenerateContentRequest.contents[{number}].parts: contents.parts must not be empty."
        responded: list[str] = []
        for part in parts:
            kinds = [k for k in _PART_KINDS if k in part] if isinstance(part, dict) else []
            if len(kinds) != 1:
                return f"* GenerateContentRequest.contents[{number}].parts: each part holds exactly one datum."
            if kinds[0] == "functionCall":
                if content["role"] != "model" or not isinstance(part["functionCall"].get("name"), str):
                    return f"contents[{number}]: a functionCall belongs to a model turn and names its function."
                if not isinstance(part.get("thoughtSignature"), str):
                    return (f"Function call is missing a thought_signature in functionCall parts "
                            f"(contents[{number}]).")
            if kinds[0] == "functionResponse":
                response = part["functionResponse"]
                if not isinstance(response.get("response"), dict) or not isinstance(response.get("name"), str):
                    return f"contents[{number}]: functionResponse needs a name and a response object."
                responded.append(response["name"])
            if kinds[0] == "inlineData":
                data = part["inlineData"]
                try:
                    base64.b64decode(data.get("data") or "", validate=True)
                except (ValueError, TypeError):
                    return f"contents[{number}]: inlineData.data is not base64."
        if responded and (content["role"] != "user" or sorted(responded) != sorted(called)):
            return ("Please ensure that function response turn comes immediately after a function call turn, "
                    "and that the number of function response parts equals the number of function call parts.")
        called = [p["functionCall"]["name"] for p in parts if "functionCall" in p] if content["role"] == "model" \
            else []
    count = (body.get("generationConfig") or {}).get("candidateCount")
    if count not in (None, 1):
        return "This simulated model serves one candidate."
    return None


def _part_text(part: dict) -> str:
    if "text" in part:
        return part["text"]
    if "functionResponse" in part:
        return dumps(part["functionResponse"].get("response")).decode()
    if "functionCall" in part:
        return part["functionCall"].get("name") or ""
    return ""


def conversation(body: dict) -> list[dict]:
    """The request as the chat formulas read it: the system instruction, then each turn's text."""
    system = " ".join(_part_text(p) for p in (body.get("systemInstruction") or {}).get("parts") or [])
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "assistant" if c["role"] == "model" else "user",
                    "content": " ".join(_part_text(p) for p in c["parts"])} for c in body["contents"]]


def _forced(body: dict) -> list[dict]:
    """The functions mode ANY makes the model call."""
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if config.get("mode") != "ANY":
        return []
    declared = [d for tool in body.get("tools") or [] for d in tool.get("functionDeclarations") or []
                if isinstance(d, dict) and isinstance(d.get("name"), str)]
    allowed = config.get("allowedFunctionNames")
    return [d for d in declared if not allowed or d["name"] in allowed]


class GeminiAPI:
    """The handlers, sharing the chat endpoint's :class:`Simulator` (state, knobs, faults)."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator

    @staticmethod
    def _refused(request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key") or ""
        if not key:
            return google_error(403, "Method doesn't allow unregistered callers (callers without established "
                                     "identity). Please use API Key or other form of API consumer identity to call "
                                     "this API.")
        if key.startswith("invalid"):
            return google_error(400, "API key not valid. Please pass a valid API key.", details=[
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com"}])
        return None

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1beta/models``."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        models = [{"name": f"models/{m}", "displayName": m,
                   "supportedGenerationMethods": ["generateContent", "countTokens"]} for m in MODELS]
        return web.json_response({"models": models}, headers=HEADERS)

    async def generate(self, request: web.Request, refuse=None) -> web.StreamResponse:
        """``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent``
        (``refuse``: another check of the caller's credential, Vertex AI's token)."""
        model, _, method = request.match_info["target"].partition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return google_error(404, f"Method {method or '(none)'} is not found.")
        refused = (refuse or self._refused)(request)
        if refused is not None:
            return refused
        stream = method == "streamGenerateContent"
        if stream and request.query.get("alt") != "sse":
            return _invalid("This simulated API streams only server-sent events: add ?alt=sse.")
        try:
            body = loads(await request.read())
        except ValueError:
            return _invalid("Invalid JSON payload received.")
        if not isinstance(body, dict):
            return _invalid("Invalid JSON payload received: the body must be an object.")
        problem = _check(body)
        if problem is not None:
            return _invalid(problem)
        simulator = self.simulator
        simulator._enter(model)
        try:
            return await self._generate(request, body, model, stream)
        finally:
            simulator.state.in_flight -= 1

    def _usage(self, body: dict, turns: list[dict], output: int, *, thinking: int) -> dict:
        prompt = prompt_tokens(turns)
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": output}
        system = turns[0] if turns and turns[0]["role"] == "system" else None
        if system is not None:
            digest = "gemini:" + hashlib.blake2b(system["content"].encode(), digest_size=12).hexdigest()
            cache = self.simulator.state.prompt_cache
            if digest in cache:
                usage["cachedContentTokenCount"] = min(prompt_tokens([system]), prompt)
            cache.add(digest)
        if thinking:
            usage["thoughtsTokenCount"] = thinking
        usage["totalTokenCount"] = prompt + output + thinking
        return usage

    async def _generate(self, request: web.Request, body: dict, model: str, stream: bool) -> web.StreamResponse:
        state = self.simulator.state
        config = state.config
        fault = header_fault(request) or state.take_fault(model)
        mode = fault.mode if fault is not None else None
        ttft = knob(request, "x-sim-ttft-ms", config.ttft_ms) / 1000
        delay = knob(request, "x-sim-chunk-delay-ms", config.chunk_delay_ms) / 1000
        count = max(int(knob(request, "x-sim-chunks", config.chunks)), 1)
        generation = body.get("generationConfig") or {}
        finish = "STOP"
        limit = generation.get("maxOutputTokens")
        if isinstance(limit, int) and 0 < limit < count:
            count, finish = limit, "MAX_TOKENS"
        if mode == "status":
            details = None
            if fault.status == 429 and fault.retry_after is not None:
                details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{fault.retry_after:g}s"}]
            return google_error(fault.status, f"injected fault: status {fault.status}", details=details)
        if mode == "context_length":
            return google_error(400, "The input token count exceeds the maximum number of tokens allowed.")
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
        words = graded(answer_words(model, turns, count), config.outcomes, model, turns)
        if mode == "content_filter":
            words, finish = words[:3], "SAFETY"
        budget = (generation.get("thinkingConfig") or {}).get("thinkingBudget")
        thinking = min(budget, 2 * len(words)) if isinstance(budget, int) and budget > 0 else 0
        ident = f"sim{seed(model, repr(turns)) % 10**12:012d}"
        calls = _forced(body)
        if calls:
            parts = [{"functionCall": {"name": d["name"], "args": tool_input(
                d.get("parametersJsonSchema") or d.get("parameters"), words)},
                "thoughtSignature": base64.b64encode(f"sim-signature:{ident}:{d['name']}".encode()).decode()}
                for d in calls]
            output = sum(len(dumps(p["functionCall"]["args"])) // 4 + 1 for p in parts)
            chunks = [parts]
        else:
            output = len(words)
            chunks = [[{"text": word}] for word in words]
        usage = self._usage(body, turns, output, thinking=thinking)
        frame = {"modelVersion": model, "responseId": ident}
        if not stream:
            candidate = {"content": {"parts": [p for chunk in chunks for p in chunk] if calls
                                     else [{"text": "".join(words)}], "role": "model"},
                         "finishReason": finish, "index": 0}
            answer = {"candidates": [candidate], **frame}
            if mode != "no_usage":
                answer["usageMetadata"] = usage
            return web.Response(body=dumps(answer), content_type="application/json", headers=HEADERS)

        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        if mode == "garbage":
            await response.write(GARBAGE)
            return response
        if mode == "invalid_json":
            await response.write(b"data: " + NOT_JSON + _EVENT_END)
            return response
        partial = {"promptTokenCount": usage["promptTokenCount"], "totalTokenCount": usage["promptTokenCount"]}
        for index, parts in enumerate(chunks):
            last = index == len(chunks) - 1
            if mode == "cut" and index == min(3, len(chunks) - 1):
                drop_connection(request)  # mid-answer: no finishing chunk
                return response
            if mode == "stall" and index == min(3, len(chunks) - 1):
                await self.simulator._hang(request)
                return response
            if delay > 0 and index:
                await asyncio.sleep(delay)
            candidate = {"content": {"parts": parts, "role": "model"}, "index": 0}
            event = {"candidates": [candidate], **frame}
            if last:
                candidate["finishReason"] = finish
            if mode != "no_usage":
                event["usageMetadata"] = usage if last else partial
            await response.write(b"data: " + dumps(event) + _EVENT_END)
        if mode == "linger":
            await self.simulator._hang(request)  # the stream is whole, but its response never ends
        return response


def gemini_routes(app: web.Application, simulator: Simulator) -> None:
    """Add the Gemini API to a simulator's application."""
    api = GeminiAPI(simulator)
    app.router.add_post("/v1beta/models/{target}", api.generate)
    app.router.add_get("/v1beta/models", api.models)
