"""Feedback on a request, by its id: the body's checks, the usage row it refers to, and the record.

    POST /v1/cache/feedback   {"request_id", "correct": true|false, "comment"?}
    POST /v1/feedback         {"request_id", "score": 0..1 | true|false, "comment"?}

Both refer to a request by the ``x-switchyard-request-id`` its answer carried, and find it in the
caller's own usage rows only: another tenant's request id is as unknown as a made-up one. A usage
row is written off the response path within the usage buffer's flush interval, so feedback sent
the moment an answer arrives waits up to :data:`ROW_WAIT_FLUSHES` intervals for its row (an id
the gateway cannot have given, which no row will ever hold, is refused at once).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass

from apps.core.errors import BadRequest, NotFound

MAX_COMMENT = 4000
MAX_REQUEST_ID = 64
ROW_WAIT_FLUSHES = 3
ROW_WAIT_MIN = 2.0  # seconds
# The ids a request answered on the spot gets (apps.gateway.pipeline.call.request_id_new); batch
# lines' rows are written before their job's output can be read, so they are never waited for.
_LIVE_REQUEST_ID = re.compile(r"req_[0-9a-f]{16}[0-9a-f]{8,}")


@dataclass(frozen=True, slots=True)
class FeedbackBody:
    request_id: str
    score: float
    comment: str


@dataclass(frozen=True, slots=True)
class UsageRow:
    request_id: str
    model_used: str
    cache_outcome: str
    cache_similarity: float | None
    cache_entry_id: int | None


def feedback_parse(body: object, *, kind: str) -> FeedbackBody:
    """The request id, the score (1 right or good, 0 wrong or bad) and the comment, or a 400."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip():
        raise BadRequest("'request_id' is required: the x-switchyard-request-id header of the answer",
                         param="request_id")
    if len(request_id) > MAX_REQUEST_ID or not (request_id.isascii() and request_id.isprintable()):
        raise BadRequest(f"'request_id' is at most {MAX_REQUEST_ID} printable ASCII characters", param="request_id")
    if kind == "cache":
        correct = body.get("correct")
        if not isinstance(correct, bool):
            raise BadRequest("'correct' is required: true if the cached answer answered the prompt, false if not",
                             param="correct")
        score = 1.0 if correct else 0.0
    else:
        value = body.get("score")
        if isinstance(value, bool):
            score = 1.0 if value else 0.0
        elif isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1:
            score = float(value)
        else:
            raise BadRequest("'score' is required: a number from 0 (bad) to 1 (good), or true/false", param="score")
    comment = body.get("comment", "")
    if comment is None:
        comment = ""
    if not isinstance(comment, str):
        raise BadRequest("'comment' must be a string", param="comment")
    if len(comment) > MAX_COMMENT:
        raise BadRequest(f"'comment' is at most {MAX_COMMENT} characters", param="comment")
    return FeedbackBody(request_id=request_id.strip(), score=score, comment=comment.replace("\x00", ""))


async def usage_row_find(pool, *, tenant_id: int, request_id: str, wait: float) -> UsageRow:
    """The caller's own usage row for ``request_id``, waiting up to ``wait`` seconds for it to be
    written; a 404 when it never is (unknown, or another tenant's)."""
    deadline = time.monotonic() + wait
    while True:
        async with pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT request_id, model_used, cache_outcome, cache_similarity, cache_entry_id "
                "FROM usage_requestlog WHERE tenant_id = %s AND request_id = %s ORDER BY id DESC LIMIT 1",
                [tenant_id, request_id])).fetchone()
        if row is not None:
            return UsageRow(*row)
        if time.monotonic() >= deadline:
            raise NotFound(f"no request '{request_id}' for this API key's tenant", param="request_id",
                           code="request_not_found")
        await asyncio.sleep(0.1)


def row_wait(request_id: str, flush_interval: float) -> float:
    """How long a request's row may take to appear: none for an id that no live request has."""
    if _LIVE_REQUEST_ID.fullmatch(request_id) is None:
        return 0.0
    return max(ROW_WAIT_MIN, ROW_WAIT_FLUSHES * flush_interval)


async def feedback_save(pool, *, tenant_id: int, api_key_id: int | None, kind: str, body: FeedbackBody,
                        row: UsageRow, action: str) -> None:
    """Keep the feedback (a second report on the same request and kind replaces the first)."""
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO usage_feedback (tenant_id, api_key_id, request_id, kind, score, comment, model_used, "
            "cache_outcome, cache_similarity, cache_entry_id, action, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now()) "
            "ON CONFLICT (tenant_id, request_id, kind) DO UPDATE SET score = EXCLUDED.score, "
            "comment = EXCLUDED.comment, api_key_id = EXCLUDED.api_key_id, action = EXCLUDED.action, "
            "created_at = EXCLUDED.created_at",
            [tenant_id, api_key_id, row.request_id, kind, body.score, body.comment, row.model_used,
             row.cache_outcome, row.cache_similarity, row.cache_entry_id, action])
