"""What a batch job needs from the gateway, declared here so that batches never imports it.

The runner reads a job's lines, keeps its lease and writes its files; answering a line (or a
reduce prompt) runs the gateway's pipeline with the job's key, as a live request would. The
gateway provides that as a class named by ``settings.BATCH_EXECUTOR`` and loaded by
:func:`executor_create`, as Django loads ``EMAIL_BACKEND``: the dependency points from the
gateway to batches, never back.

    executor = executor_create()
    executor.key_load(api_key_id)        (sync, on the runner's database thread) -> usable?
    await executor.open()                the worker's own runtime: snapshot, upstream sessions,
                                         limits, cache, usage buffer
    await executor.line_answer(...)      one input line -> its output or error line
    await executor.chat(body, ...)       one reduce prompt -> the answer's text
    await executor.close()
"""

from __future__ import annotations

from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string

# What ``upstream_submit`` returns when no line goes to the provider (the budget refused the
# job, or the provider can take none of its lines): the job's lines are recorded at once.
NOTHING_SENT = "none"


class AnsweredLine(Protocol):
    """One answered input line, ready for the output (or error) file."""

    index: int
    custom_id: str | None
    is_error: bool
    line: bytes


class BatchExecutor(Protocol):
    """Answers a job's lines and reduce prompts with the job's key."""

    def key_load(self, api_key_id: int | None) -> bool:
        """Load the job's key (sync: call from a thread); False when it is deleted, revoked or expired."""

    async def open(self) -> None:
        """Start what answering needs (after :meth:`key_load` returned True)."""

    async def close(self) -> None:
        """Stop what :meth:`open` started: flush usage, close upstream sessions."""

    async def line_answer(self, *, job_id: str, endpoint: str, index: int, raw: bytes) -> AnsweredLine:
        """Answer one input line; never raises for anything the line or the upstream did."""

    async def chat(self, body: dict, *, request_id: str) -> str:
        """The answer's text to one chat request; raises the gateway's error when it fails."""

    def chat_context_windows(self) -> dict[str, int]:
        """The context window of every chat model a request may name or be routed to."""

    def line_expired(self, *, job_id: str, index: int, raw: bytes) -> bytes:
        """The error-file line of a line left unanswered when the completion window ended."""

    def upstream_plan(self, *, endpoint: str, storage_name: str) -> dict | None:
        """Where the job's lines can go as one provider batch (JSON-able), or None to run them live."""

    def upstream_reserve(self, *, job_id: str, storage_name: str, upstream: dict) -> dict:
        """Reserve the job's estimated cost against its key's and tenant's budgets (the loaded
        key's): what to keep on the job as ``upstream["budget"]`` (JSON-able), which says when
        the budget refused the job. Giving back a reservation this job made before is harmless."""

    def upstream_submit(self, *, job_id: str, storage_name: str, upstream: dict) -> str:
        """Submit the job to the provider named by ``upstream``; the provider's batch id. A batch
        already created for the job is returned rather than created again. A ``GatewayError``:
        the provider refused the batch (recorded as ``upstream["provider_refusal"]``, and every
        line then fails); any other exception is retried by the next run."""

    def upstream_poll(self, *, job: dict, storage_name: str) -> UpstreamResult | None:
        """None while the provider's batch runs; then the job's lines (each as
        :class:`AnsweredLine` fields) and a ``rows_write()`` for their usage rows, to call in the
        transaction that records the lines."""

    def upstream_settle(self, *, job_id: str, upstream: dict) -> None:
        """Settle the job's budget reservation to what its recorded usage rows cost."""


class UpstreamResult(Protocol):
    """A finished provider batch, mapped back to the job's lines."""

    lines: list[tuple[int, str | None, bool, bytes]]
    errors: dict | None

    def rows_write(self) -> None:
        """Write the lines' usage rows (inside the caller's transaction)."""


def executor_create() -> BatchExecutor:
    """A new executor of the class ``settings.BATCH_EXECUTOR`` names."""
    return import_string(settings.BATCH_EXECUTOR)()
