"""One line of a batch through the gateway's pipeline, into the JSON line of the output or error
file (OpenAI's format, keyed by ``custom_id``).

A line runs exactly as a live request with the job's key: validation, routing and fallbacks,
limits and budgets, the cache, cost (at the model's batch discount) and a usage row whose
``request_id`` is ``<job id>-<line index>`` and whose ``endpoint`` is ``batch:<endpoint>``.

    {"id": "batch_req_...", "custom_id": "...", "response": {"status_code": 200, "request_id", "body"},
     "error": null}                                               -> output file
    {"id": ..., "custom_id": ..., "response": {"status_code": 4xx/5xx, "request_id", "body": {"error"}},
     "error": null}                                               -> error file (the request failed)
    {"id": ..., "custom_id": ... or null, "response": null,
     "error": {"code", "message"}}                                -> error file (the line is malformed)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import orjson

from apps.core.completions import completion_text
from apps.core.errors import BudgetExceeded, GatewayError, RateLimited
from apps.gateway.dialects.openai import OPENAI_CHAT
from apps.gateway.pipeline.run import ChatRequest, chat, embeddings
from apps.providers.transport import UpstreamClientError

RATE_LIMIT_RETRIES = 8
_MAX_RETRY_WAIT = 30.0


@dataclass(slots=True)
class LineResult:
    index: int
    custom_id: str | None
    is_error: bool
    line: bytes
    content: str | None = None  # a chat answer's text (map-reduce keeps it)


class LineInvalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


logger = logging.getLogger(__name__)


def request_id_for(job_id: str, index: int) -> str:
    return f"{job_id}-{index}"


def _line_id(job_id: str, index: int) -> str:
    return f"batch_req_{job_id.split('_', 1)[-1]}_{index}"


def _parse(raw: bytes, endpoint: str) -> tuple[str, dict]:
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LineInvalid("invalid_json", f"The line is not valid JSON: {exc}.") from exc
    if not isinstance(item, dict):
        raise LineInvalid("invalid_request", "The line must be a JSON object.")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
        raise LineInvalid("invalid_custom_id", "'custom_id' must be a string of 1 to 512 characters.")
    if item.get("method", "POST") != "POST":
        raise LineInvalid("invalid_method", "'method' must be POST.")
    if item.get("url") != endpoint:
        raise LineInvalid("invalid_url", f"'url' must be the batch's endpoint, {endpoint}.")
    body = item.get("body")
    if not isinstance(body, dict):
        raise LineInvalid("invalid_body", "'body' must be a JSON object.")
    if body.get("stream"):
        raise LineInvalid("invalid_body", "'stream' is not available in a batch.")
    return custom_id, body


def _custom_id_of(raw: bytes) -> str | None:
    try:
        value = orjson.loads(raw).get("custom_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= 512 else None


async def chat_line(runtime, key, body: dict, batch_line: tuple[str, str]) -> tuple[str, dict]:
    answer = await chat(runtime, ChatRequest(key, body, OPENAI_CHAT, time.perf_counter(), batch_line=batch_line))
    return answer.call.request_id, answer.hit.response if answer.hit is not None else answer.completion


async def _embeddings(runtime, key, body: dict, batch_line: tuple[str, str]) -> tuple[str, dict]:
    call, raw = await embeddings(runtime, key, body, started=time.perf_counter(), batch_line=batch_line)
    return call.request_id, orjson.loads(raw)


async def line_answer(runtime, key, *, job_id: str, endpoint: str, index: int, raw: bytes) -> LineResult:
    """Answer one input line; never raises for anything the line or the upstream did."""
    line_id = _line_id(job_id, index)
    request_id = request_id_for(job_id, index)
    try:
        custom_id, body = _parse(raw, endpoint)
    except LineInvalid as invalid:
        return LineResult(index, _custom_id_of(raw), True, orjson.dumps({
            "id": line_id, "custom_id": _custom_id_of(raw), "response": None,
            "error": {"code": invalid.code, "message": invalid.message}}))
    run = chat_line if endpoint == "/v1/chat/completions" else _embeddings
    status, answer = 200, None
    for attempt in range(RATE_LIMIT_RETRIES + 1):
        try:
            request_id, answer = await run(runtime, key, body, (request_id, f"batch:{endpoint}"))
            status = 200
            break
        except BudgetExceeded as error:
            status, answer = error.status, error.body()
            break
        except RateLimited as error:
            # A rate limit is a reason to wait, not to fail a batch line (a budget is).
            status, answer = error.status, error.body()
            if attempt < RATE_LIMIT_RETRIES:
                wait = float(error.headers.get("Retry-After") or 1)
                await asyncio.sleep(min(max(wait, 0.5), _MAX_RETRY_WAIT))
        except GatewayError as error:
            status, answer = error.status, error.body()
            break
        except UpstreamClientError as error:
            try:
                answer = orjson.loads(error.body)
            except orjson.JSONDecodeError:
                answer = {"error": {"message": error.body.decode(errors="replace")[:2000], "type": "upstream_error",
                                    "param": None, "code": None}}
            status = error.status
            break
        except Exception:
            # A fault of the gateway's own: the line fails with the reason logged, never vanishes
            # from the job's counts and files.
            logger.exception("batch line %s of %s failed inside the gateway", index, job_id)
            status, answer = 500, GatewayError().body()
            break
    ok = status == 200
    line = orjson.dumps({"id": line_id, "custom_id": custom_id,
                         "response": {"status_code": status, "request_id": request_id, "body": answer},
                         "error": None})
    content = completion_text(answer) if ok and endpoint == "/v1/chat/completions" else None
    return LineResult(index, custom_id, not ok, line, content)


def line_expired(job_id: str, index: int, raw: bytes) -> bytes:
    """The error-file line of a line left unanswered when the job's completion window ended."""
    return orjson.dumps({"id": _line_id(job_id, index), "custom_id": _custom_id_of(raw), "response": None,
                         "error": {"code": "batch_expired",
                                   "message": "This line was not answered within the completion window."}})
