"""One line of a batch through the gateway's pipeline, into the JSON line of the output or error
file (OpenAI's format, keyed by ``custom_id``).

A line runs exactly as a live request with the job's key: validation, routing and fallbacks,
limits and budgets, the cache, cost (at the live price: the provider bills a line answered
live as a live request) and a usage row whose
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
from apps.gateway.pipeline.call import CACHE_NAMES, Call
from apps.gateway.pipeline.run import ChatRequest, chat, embeddings
from apps.providers.transport import UpstreamClientError
from apps.usage.feedback import FeedbackBody, UsageRow, feedback_save

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


@dataclass(frozen=True, slots=True)
class LineEval:
    """A line's eval column: what a right answer says, and how to compare (see :func:`grade`)."""

    expected: str
    match: str  # exact | contains | prefix


EVAL_MATCHES = ("exact", "contains", "prefix")
MAX_EXPECTED = 10_000


def _eval_parse(value) -> LineEval | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LineInvalid("invalid_eval", "'eval' must be an object: {\"expected\": text, \"match\"?: "
                                          "exact | contains | prefix}.")
    expected, match = value.get("expected"), value.get("match", "exact")
    if not isinstance(expected, str) or not expected.strip() or len(expected) > MAX_EXPECTED:
        raise LineInvalid("invalid_eval", f"'eval.expected' must be a text of 1 to {MAX_EXPECTED} characters.")
    if match not in EVAL_MATCHES:
        raise LineInvalid("invalid_eval", f"'eval.match' must be one of {', '.join(EVAL_MATCHES)}.")
    return LineEval(expected, match)


def _normal(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".!")


def grade(answer: str, line_eval: LineEval) -> float:
    """1.0 when the answer's text matches what the eval expects, 0.0 otherwise; compared without
    case, runs of whitespace or a final full stop."""
    got, expected = _normal(answer), _normal(line_eval.expected)
    if line_eval.match == "contains":
        return float(expected in got)
    if line_eval.match == "prefix":
        return float(got.startswith(expected))
    return float(got == expected)


@dataclass(frozen=True, slots=True)
class Line:
    custom_id: str
    body: dict
    eval: LineEval | None = None
    quality_target: str | None = None


def _parse(raw: bytes, endpoint: str) -> Line:
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
    target = item.get("quality_target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int | float)):
        raise LineInvalid("invalid_quality_target", "'quality_target' must be a number from 0 to 1.")
    line_eval = _eval_parse(item.get("eval"))
    if line_eval is not None and endpoint != "/v1/chat/completions":
        raise LineInvalid("invalid_eval", "'eval' grades chat completions only.")
    return Line(custom_id, body, line_eval, None if target is None else repr(float(target)))


def _custom_id_of(raw: bytes) -> str | None:
    try:
        value = orjson.loads(raw).get("custom_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= 512 else None


async def chat_line(runtime, key, body: dict, batch_line: tuple[str, str],
                    quality_target: str | None = None) -> tuple[Call, dict]:
    answer = await chat(runtime, ChatRequest(key, body, OPENAI_CHAT, time.perf_counter(), batch_line=batch_line,
                                             quality_target=quality_target))
    return answer.call, answer.hit.response if answer.hit is not None else answer.completion


async def _embeddings(runtime, key, body: dict, batch_line: tuple[str, str], quality_target=None) -> tuple[Call, dict]:
    call, raw = await embeddings(runtime, key, body, started=time.perf_counter(), batch_line=batch_line)
    return call, orjson.loads(raw)


async def _eval_record(runtime, key, call: Call, score: float) -> None:
    """A graded line's outcome, as ``POST /v1/feedback`` would keep it: a feedback row, and the
    learned route's score when a learned rule routed the line."""
    if call.route_recorded is not None:
        await call.route_recorded
    row = UsageRow(call.request_id, call.model.name if call.model else "", CACHE_NAMES.get(call.cache, call.cache),
                   call.cache_similarity, call.cache_entry)
    await feedback_save(runtime.cache.pool, tenant_id=key.tenant_id, api_key_id=key.id, kind="outcome",
                        body=FeedbackBody(call.request_id, score, ""), row=row, action="batch eval")
    await runtime.routers.score(tenant_id=key.tenant_id, request_id=call.request_id, model_name=row.model_used,
                                score=score)


async def line_answer(runtime, key, *, job_id: str, endpoint: str, index: int, raw: bytes) -> LineResult:
    """Answer one input line; never raises for anything the line or the upstream did."""
    line_id = _line_id(job_id, index)
    request_id = request_id_for(job_id, index)
    try:
        item = _parse(raw, endpoint)
    except LineInvalid as invalid:
        return LineResult(index, _custom_id_of(raw), True, orjson.dumps({
            "id": line_id, "custom_id": _custom_id_of(raw), "response": None,
            "error": {"code": invalid.code, "message": invalid.message}}))
    run = chat_line if endpoint == "/v1/chat/completions" else _embeddings
    status, answer = 200, None
    for attempt in range(RATE_LIMIT_RETRIES + 1):
        try:
            call, answer = await run(runtime, key, item.body, (request_id, f"batch:{endpoint}"), item.quality_target)
            request_id = call.request_id
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
    out = {"id": line_id, "custom_id": item.custom_id,
           "response": {"status_code": status, "request_id": request_id, "body": answer}, "error": None}
    content = completion_text(answer) if ok and endpoint == "/v1/chat/completions" else None
    if ok and item.eval is not None:
        score = grade(content or "", item.eval)
        out["eval"] = {"score": score}
        try:
            await _eval_record(runtime, key, call, score)
        except Exception:
            logger.exception("eval of batch line %s of %s not recorded", index, job_id)
    return LineResult(index, item.custom_id, not ok, orjson.dumps(out), content)


def line_expired(job_id: str, index: int, raw: bytes) -> bytes:
    """The error-file line of a line left unanswered when the job's completion window ended."""
    return orjson.dumps({"id": _line_id(job_id, index), "custom_id": _custom_id_of(raw), "response": None,
                         "error": {"code": "batch_expired",
                                   "message": "This line was not answered within the completion window."}})
