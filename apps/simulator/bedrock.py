"""The SIMULATED upstream's Amazon Bedrock Converse API, so a ``bedrock`` provider can be tested
over real HTTP. The provider's base URL is the simulator's root.

    POST /model/{model}/converse          JSON
    POST /model/{model}/converse-stream   AWS's binary event stream (messageStart,
                                          contentBlockStart for a tool, contentBlockDelta per word
                                          or argument fragment, contentBlockStop, messageStop,
                                          metadata with the usage)

Every request must be signed with AWS Signature Version 4 for the service ``bedrock``: the
simulator checks the signature with botocore, for any access key whose secret is
``SIMULATED_SECRET``. No signature is a 403 MissingAuthenticationTokenException, an access key
starting with ``invalid`` a 403 UnrecognizedClientException, a wrong signature a 403
InvalidSignatureException, in Bedrock's shape (``{"message"}``, the type in
``x-amzn-ErrorType``). A toolResult must answer the toolUse of the turn before it (400
ValidationException otherwise). The answer is the chat endpoint's for the same conversation
(the system prompt a first message), with the same knobs and faults; a ``status`` fault answers
Bedrock's error for that status (429 ThrottlingException), ``content_filter`` stops the answer
with stopReason ``guardrail_intervened``, ``context_length`` answers a 400 ValidationException
"Input is too long for requested model.".

Prompt caching, as the Messages simulator does it: the content up to the last ``cachePoint``
block (system, then messages) is a cache prefix; the first request with it reports the prefix's
tokens as ``cacheWriteInputTokens``, later ones as ``cacheReadInputTokens`` (until
``/_sim/reset``), and ``inputTokens`` is the rest.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import re
import struct
from typing import TYPE_CHECKING

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from apps.simulator.answers import answer_words, dumps, loads, prompt_tokens, seed, tool_input
from apps.simulator.control import HEADERS, drop_connection, header_fault, knob
from apps.simulator.outcomes import graded

if TYPE_CHECKING:
    from apps.simulator.server import Simulator

SIMULATED_SECRET = "simulated-secret"  # noqa: S105  # nosec B105: the simulator's documented test secret
_ERRORS = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
           429: "ThrottlingException", 500: "InternalServerException", 503: "ServiceUnavailableException"}
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([a-z0-9-]+)/bedrock/aws4_request, "
                   r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})")
STREAM_HEADERS = {**HEADERS, "Content-Type": "application/vnd.amazon.eventstream"}


def aws_error(status: int, kind: str, message: str) -> web.Response:
    return web.Response(status=status, body=dumps({"message": f"[simulated] {message}"}),
                        content_type="application/json", headers={**HEADERS, "x-amzn-ErrorType": kind})


def frame(event_type: str, payload: dict, *, message_type: str = "event") -> bytes:
    """One message of AWS's event stream: prelude, CRC, string headers, JSON payload, CRC."""
    kind_header = ":exception-type" if message_type == "exception" else ":event-type"
    headers = b""
    for name, value in ((kind_header, event_type), (":content-type", "application/json"),
                        (":message-type", message_type)):
        headers += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
    body = dumps(payload)
    prelude = struct.pack(">II", 16 + len(headers) + len(body), len(headers))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + headers + body
    return message + struct.pack(">I", binascii.crc32(message))


def _signature_problem(request: web.Request, body: bytes) -> web.Response | None:
    authorization = request.headers.get("Authorization", "")
    match = _AUTH.fullmatch(authorization)
    if match is None:
        return aws_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    access, _day, region, signed, signature = match.groups()
    if access.startswith("invalid"):
        return aws_error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    headers = {name: request.headers.get(name, "") for name in signed.split(";") if name != "host"}
    aws = AWSRequest(method=request.method, url=f"{request.scheme}://{request.host}{request.raw_path}", data=body,
                     headers=headers)
    aws.context["timestamp"] = request.headers.get("X-Amz-Date", "")
    auth = SigV4Auth(Credentials(access, SIMULATED_SECRET, request.headers.get("X-Amz-Security-Token")),
                     "bedrock", region)
    expected = auth.signature(auth.string_to_sign(aws, auth.canonical_request(aws)), aws)
    if not hmac.compare_digest(expected, signature):
        return aws_error(403, "InvalidSignatureException",
                         "The request signature we calculated does not match the signature you provided.")
    return None


def _text(block: dict) -> str:
    if isinstance(block.get("text"), str):
        return block["text"]
    if isinstance(block.get("toolResult"), dict):
        return dumps(block["toolResult"].get("content")).decode()
    if isinstance(block.get("toolUse"), dict):
        return block["toolUse"].get("name") or ""
    return ""


def cache_point_prefix(body: dict) -> tuple[str, int] | None:
    """The content up to the last ``cachePoint`` (its hash and tokens), or None when none is set."""
    sequence = [b for b in body.get("system") or [] if isinstance(b, dict)]
    for message in body.get("messages") or []:
        sequence += [b for b in message.get("content") or [] if isinstance(b, dict)]
    marked = [i for i, block in enumerate(sequence) if "cachePoint" in block]
    if not marked:
        return None
    prefix = sequence[: marked[-1]]
    digest = hashlib.blake2b(dumps(prefix), digest_size=12).hexdigest()
    return digest, sum(len(_text(b).split()) for b in prefix) * 4 // 3


def _check(body: dict) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    used: set[str] = set()
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{number}.role: user or assistant"
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return f"messages.{number}.content: at least one block is required"
        if number and messages[number - 1].get("role") == message["role"]:
            return "A conversation must alternate between user and assistant roles."
        answered = {b["toolResult"].get("toolUseId") for b in content if isinstance(b.get("toolResult"), dict)}
        if answered and answered != used:
            return (f"The toolResult blocks at messages.{number}.content do not match the toolUse blocks "
                    "of the previous turn.")
        used = {b["toolUse"].get("toolUseId") for b in content if isinstance(b.get("toolUse"), dict)}
    return None


class ConverseAPI:
    """The handlers, sharing the chat endpoint's :class:`Simulator` (state, knobs, faults)."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator

    async def converse(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        problem = _signature_problem(request, raw)
        if problem is not None:
            return problem
        try:
            body = loads(raw)
        except ValueError:
            return aws_error(400, "SerializationException", "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return aws_error(400, "ValidationException", "The request body must be an object.")
        wrong = _check(body)
        if wrong is not None:
            return aws_error(400, "ValidationException", wrong)
        model = request.match_info["model"]
        self.simulator._enter(model)
        try:
            return await self._converse(request, body, model, request.path.endswith("-stream"))
        finally:
            self.simulator.state.in_flight -= 1

    async def _converse(self, request: web.Request, body: dict, model: str, stream: bool) -> web.StreamResponse:
        state = self.simulator.state
        fault = header_fault(request) or state.take_fault(model)
        mode = fault.mode if fault is not None else None
        ttft = knob(request, "x-sim-ttft-ms", state.config.ttft_ms) / 1000
        count = max(int(knob(request, "x-sim-chunks", state.config.chunks)), 1)
        stop = "end_turn"
        limit = (body.get("inferenceConfig") or {}).get("maxTokens")
        if isinstance(limit, int) and 0 < limit < count:
            count, stop = limit, "max_tokens"
        if mode == "status":
            default = "InternalServerException" if fault.status >= 500 else "ValidationException"
            kind = _ERRORS.get(fault.status, default)
            return aws_error(fault.status, kind, f"injected fault: status {fault.status}")
        if mode == "context_length":
            return aws_error(400, "ValidationException", "Input is too long for requested model.")
        if mode == "timeout":
            return await self.simulator._hang(request)
        if ttft > 0:
            await asyncio.sleep(ttft)
        if mode == "cut" and not stream:
            return drop_connection(request)
        system = " ".join(b.get("text") or "" for b in body.get("system") or [] if isinstance(b, dict))
        turns = ([{"role": "system", "content": system}] if system else []) + [
            {"role": m["role"], "content": " ".join(_text(b) for b in m["content"] if isinstance(b, dict))}
            for m in body["messages"]]
        words = graded(answer_words(model, turns, count), state.config.outcomes, model, turns)
        if mode == "content_filter":
            words, stop = words[:3], "guardrail_intervened"
        tools = [t["toolSpec"] for t in (body.get("toolConfig") or {}).get("tools") or []
                 if isinstance(t, dict) and isinstance(t.get("toolSpec"), dict)]
        choice = (body.get("toolConfig") or {}).get("toolChoice") or {}
        forced = tools[:1] if "any" in choice else [t for t in tools if t.get("name") == (choice.get("tool") or {})
                                                    .get("name")][:1]
        ident = f"{seed(model, repr(turns)) % 10**10:010d}"
        if forced:
            spec = forced[0]
            use = {"toolUseId": f"tooluse_sim{ident}", "name": spec["name"],
                   "input": tool_input((spec.get("inputSchema") or {}).get("json"), words)}
            content, stop, output = [{"toolUse": use}], "tool_use", len(dumps(use["input"])) // 4 + 1
        else:
            content, output = [{"text": "".join(words)}], len(words)
        p_tokens = prompt_tokens(turns)
        usage = {"inputTokens": p_tokens, "outputTokens": output, "totalTokens": p_tokens + output}
        prefix = cache_point_prefix(body)
        if prefix is not None:
            digest, size = prefix
            size = min(size, p_tokens)
            kind = "cacheReadInputTokens" if digest in state.prompt_cache else "cacheWriteInputTokens"
            state.prompt_cache.add(digest)
            usage.update({"inputTokens": p_tokens - size, kind: size})
        if not stream:
            answer = {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop,
                      "usage": usage, "metrics": {"latencyMs": int(ttft * 1000)}}
            return web.Response(body=dumps(answer), content_type="application/json", headers=HEADERS)

        response = web.StreamResponse(headers=STREAM_HEADERS)
        await response.prepare(request)
        out = [frame("messageStart", {"role": "assistant"})]
        if forced:
            arguments = dumps(use["input"]).decode()
            half = len(arguments) // 2
            out.append(frame("contentBlockStart", {"contentBlockIndex": 0, "start": {
                "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}))
            out += [frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}})
                    for piece in (arguments[:half], arguments[half:])]
        else:
            out += [frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word}}) for word in words]
        for index, piece in enumerate(out):
            if mode == "cut" and index == 4:
                drop_connection(request)
                return response
            await response.write(piece)
        await response.write(frame("contentBlockStop", {"contentBlockIndex": 0})
                             + frame("messageStop", {"stopReason": stop})
                             + frame("metadata", {"usage": usage, "metrics": {"latencyMs": int(ttft * 1000)}}))
        return response


def bedrock_routes(app: web.Application, simulator: Simulator) -> None:
    """Add Bedrock's Converse API to a simulator's application."""
    api = ConverseAPI(simulator)
    app.router.add_post("/model/{model}/converse", api.converse)
    app.router.add_post("/model/{model}/converse-stream", api.converse)
