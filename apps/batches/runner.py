"""Runs one job on a Celery worker, in an event loop, through the gateway's pipeline (reached
through the job's executor, :mod:`apps.batches.executor`).

    claim the lease  -> validating: count the input's lines (streamed)
                     -> in_progress: read the input in chunks from the cursor, skip lines already
                        answered, run up to BATCH_TENANT_CONCURRENCY lines at once; answered lines
                        are committed every half second with the job's counts and cursor
                     -> finalizing: (map-reduce) reduce; write the output and error files
                     -> completed | cancelled | expired | failed

A job whose lines can all go to one provider's Batch API (:meth:`JobRunner.upstream`) is
submitted there instead of ``process``, its estimated cost first reserved against its budgets:
the run that submits it and each of beat's polls afterwards (``batches.poll_upstream``) is one
short run that lets go of the job, until the provider's batch has ended, its lines are recorded,
the reservation is settled to their cost and the job finishes.

A heartbeat renews the lease every second and reads the job's status: a cancel stops the lines
in flight within about a second, the end of the completion window expires the job. Memory stays
bounded whatever the job's size: one chunk of input lines, the lines in flight and at most a
half second of answers. A worker killed at any point loses only its uncommitted answers: the
lease runs out, beat's resumer queues the job again, and the next worker resumes at the cursor,
skipping lines already committed, so every line is answered exactly once in the output.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections, connections
from django.db.models import F
from django.utils import timezone

from apps.batches.executor import NOTHING_SENT, AnsweredLine, BatchExecutor, executor_create
from apps.batches.leases import (
    LeaseLost,
    job_claim,
    job_files_write,
    job_heartbeat,
    job_release,
    job_status_set,
    lines_record,
    upstream_batch_save,
    upstream_begin,
    upstream_update,
)
from apps.batches.live import progress_publish
from apps.batches.models import BatchJob, File
from apps.batches.reduce import reduce_run
from apps.batches.selectors import lines_answered, map_answers
from apps.batches.storage import lines_check, lines_read, lines_take
from apps.core.errors import GatewayError

logger = logging.getLogger(__name__)

FLUSH_EVERY = 0.5
FLUSH_ROWS = 200
HEARTBEAT_EVERY = 1.0
PUBLISH_EVERY = 0.5
UPSTREAM_WINDOW = 24 * 3600  # the completion window a provider's Batch API answers within
Status = BatchJob.Status


def _in_thread(fn, *args, **kwargs):
    close_old_connections()
    return fn(*args, **kwargs)


def _once(fn, *args, **kwargs):
    """``fn`` on a short-lived thread, whose database connection is closed before it ends."""
    try:
        return _in_thread(fn, *args, **kwargs)
    finally:
        _close_connections()


def _close_connections() -> None:
    connections.close_all()


@dataclass(slots=True)
class Chunk:
    start: tuple[int, int]  # (line index, byte offset) of its first line
    remaining: int


class JobRunner:
    def __init__(self, job: BatchJob, token: str, executor: BatchExecutor) -> None:
        self.job = job
        self.token = token
        self.executor = executor
        self.executor_open = False
        # Quick writes (heartbeats, answered lines) and slow reads and writes of whole files run
        # on separate threads, so a long file write never holds up the lease's renewal.
        self.db_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-db")
        self.io_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-io")
        self.stop_reason: str | None = None  # cancel | expire | lost
        self.in_flight: set[asyncio.Task] = set()
        self.results: list[tuple[AnsweredLine, Chunk]] = []
        self.chunks: deque[Chunk] = deque()
        self.end = (job.cursor_line, job.cursor_offset)
        self.flush_lock = asyncio.Lock()
        self.flush_wake = asyncio.Event()
        self.completed, self.failed, self.total = job.completed, job.failed, job.total
        self.status = job.status
        self.published = 0.0
        self.reduce_task: asyncio.Task | None = None

    async def db(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.db_executor, functools.partial(_in_thread, fn, *args, **kwargs))

    async def io(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.io_executor, functools.partial(_in_thread, fn, *args, **kwargs))

    # --- control -------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        logger.info("batch job stopping", extra={"job": self.job.pk, "reason": reason})
        for task in list(self.in_flight):
            task.cancel()
        if self.reduce_task is not None and reason != "expire":
            self.reduce_task.cancel()

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            try:
                status, expires_at = await self.db(job_heartbeat, job_id=self.job.pk, token=self.token)
            except LeaseLost:
                self.stop("lost")
                return
            except Exception:
                logger.exception("batch heartbeat failed; retrying")
                continue
            if status == Status.CANCELLING:
                self.stop("cancel")
            elif expires_at is not None and timezone.now() >= expires_at and status in (
                    Status.VALIDATING, Status.IN_PROGRESS):
                self.stop("expire")

    async def publish(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.published < PUBLISH_EVERY:
            return
        self.published = now
        total = self.total
        done = self.completed + self.failed
        await progress_publish(self.job.tenant_id, {
            "id": self.job.pk, "kind": self.job.kind, "status": self.status, "total": total,
            "completed": self.completed, "failed": self.failed,
            "percent": round(100.0 * done / total, 1) if total else 0.0})

    async def set_status(self, status: str, **fields) -> None:
        await self.db(job_status_set, job_id=self.job.pk, token=self.token, status=status, **fields)
        self.status = status
        await self.publish(force=True)

    # --- stages --------------------------------------------------------------------------

    async def run(self) -> str:
        beat = asyncio.ensure_future(self.heartbeat())
        try:
            return await self._run()
        except LeaseLost:
            self.stop("lost")
            return "lease_lost"
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            if self.executor_open:
                await self.executor.close()
            for executor in (self.db_executor, self.io_executor):
                executor.submit(_close_connections)
                executor.shutdown(wait=True)

    async def _run(self) -> str:
        job = self.job
        if job.status == Status.CANCELLING:
            await self.finish(Status.CANCELLED)
            return "cancelled"
        if job.expires_at is not None and timezone.now() >= job.expires_at and job.status in (
                Status.VALIDATING, Status.IN_PROGRESS):
            self.stop_reason = "expire"
        elif job.status == Status.VALIDATING and not await self.validate():
            return "failed"
        if self.stop_reason is None and self.status == Status.IN_PROGRESS and job.kind == BatchJob.Kind.BATCH:
            outcome = await self.upstream()
            if outcome is not None:
                return outcome
        if self.stop_reason is None and self.status == Status.IN_PROGRESS:
            if not await self.pipeline_open():
                return "failed"
            await self.process()
        reason = self.stop_reason
        if reason == "lost":
            return "lease_lost"
        if reason == "cancel":
            await self.finish(Status.CANCELLED)
            return "cancelled"
        if reason == "expire":
            await self.finish(Status.EXPIRED, expire=True)
            return "expired"
        await self.set_status(Status.FINALIZING)
        result = None
        if job.kind == BatchJob.Kind.MAP_REDUCE:
            if not self.executor_open and not await self.pipeline_open():  # resumed while finalizing
                return "failed"
            result = await self.reduce()
            if result is None:
                return self.stop_reason or "failed"
        await self.finish(Status.COMPLETED, result=result)
        return "completed"

    async def upstream(self) -> str | None:
        """The job through its provider's Batch API: submit it (the batch id saved before any
        wait), or poll it and, once the provider's batch ended, record its lines and finish.
        None: the job runs live instead."""
        job = self.job
        name = await self.db(lambda: job.input_file.storage_name)
        upstream, key_loaded = job.upstream, False
        if not upstream:
            # A provider's Batch API promises answers within 24 hours: a job due sooner runs live.
            window = (job.expires_at - job.created_at).total_seconds() if job.expires_at else 0
            if job.done or job.cursor_line or window < UPSTREAM_WINDOW:
                return None
            plan = await self.db(self.executor.upstream_plan, endpoint=job.endpoint, storage_name=name)
            if plan is None:
                return None
            if not await self.db(self.executor.key_load, job.api_key_id):
                await self.fail("api_key_unusable", "The API key that created this job is deleted, revoked or "
                                "expired; its lines cannot run.")
                return "failed"
            key_loaded = True
            upstream = await self.db(upstream_begin, job_id=job.pk, token=self.token, upstream=plan)
            if upstream is None:
                return None
        if "budget" not in upstream and not job.upstream_batch_id:
            # The job's estimated cost is held against its budgets before anything is sent.
            if not key_loaded and not await self.db(self.executor.key_load, job.api_key_id):
                await self.fail("api_key_unusable", "The API key that created this job is deleted, revoked or "
                                "expired; its lines cannot run.")
                return "failed"
            key_loaded = True
            budget = await self.db(self.executor.upstream_reserve, job_id=job.pk, storage_name=name,
                                   upstream=upstream)
            upstream = await self.db(upstream_update, job_id=job.pk, token=self.token, budget=budget)
        if not job.upstream_batch_id:
            try:
                batch_id = await self.db(self.executor.upstream_submit, job_id=job.pk, storage_name=name,
                                         upstream=upstream)
            except GatewayError as refusal:  # the provider refused the batch: its lines fail, once
                upstream = await self.db(upstream_update, job_id=job.pk, token=self.token, provider_refusal={
                    "code": refusal.code, "message": refusal.message})
                batch_id = NOTHING_SENT
            await self.db(upstream_batch_save, job_id=job.pk, token=self.token, batch_id=batch_id)
            job.upstream_batch_id = batch_id
            logger.info("batch job %s: submitted to its provider as %s", job.pk, batch_id)
            if batch_id != NOTHING_SENT:
                return "submitted"
        result = await self.db(self.executor.upstream_poll, storage_name=name, job={
            "id": job.pk, "tenant_id": job.tenant_id, "api_key_id": job.api_key_id, "endpoint": job.endpoint,
            "upstream": upstream, "upstream_batch_id": job.upstream_batch_id})
        if result is None:
            return "waiting"
        answered = await self.db(lines_answered, job.pk, 0, self.total)
        lines = [line for line in result.lines if line[0] not in answered]
        if lines:
            await self.db(lines_record, job_id=job.pk, token=self.token, lines=lines, cursor=None,
                          also=result.rows_write if not answered else None)
        self.failed += sum(1 for line in lines if line[2])
        self.completed += sum(1 for line in lines if not line[2])
        if (upstream.get("budget") or {}).get("request_id") and not upstream.get("settled"):
            # Settled once the rows are recorded; a worker killed between the settlement and
            # its mark settles again (counting the job twice: refusing early, never overspending).
            if not key_loaded:
                await self.db(self.executor.key_load, job.api_key_id)
            await self.db(self.executor.upstream_settle, job_id=job.pk, upstream=upstream)
            await self.db(upstream_update, job_id=job.pk, token=self.token, settled=True)
        await self.set_status(Status.FINALIZING)
        if result.errors:
            await self.db(lambda: BatchJob.objects.filter(pk=job.pk, lease_token=self.token).update(
                errors=result.errors))
        await self.finish(Status.COMPLETED)
        return "completed"

    async def pipeline_open(self) -> bool:
        """The job's key and what answering its lines takes on this worker (the executor's)."""
        if not await self.db(self.executor.key_load, self.job.api_key_id):
            await self.fail("api_key_unusable", "The API key that created this job is deleted, revoked or "
                            "expired; its lines cannot run.")
            return False
        await self.executor.open()
        self.executor_open = True
        return True

    async def fail(self, code: str, message: str, *, line: int | None = None) -> None:
        errors = {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": line}]}
        await self.set_status(Status.FAILED, errors=errors)

    async def validate(self) -> bool:
        name = await self.db(lambda: self.job.input_file.storage_name if _file_exists(self.job) else None)
        duplicate = None
        try:
            total, duplicate = await self.io(lines_check, name) if name else (None, None)
        except FileNotFoundError:
            total = None
        if total is None:
            await self.fail("input_file_not_found", "The input file is gone.")
            return False
        if total == 0:
            await self.fail("empty_file", "The input file has no lines.")
            return False
        if total > settings.BATCH_MAX_LINES:
            await self.fail("too_many_lines", f"The input file has {total} lines; the limit is "
                            f"{settings.BATCH_MAX_LINES}.")
            return False
        if duplicate is not None:
            custom_id, index = duplicate
            await self.fail("duplicate_custom_id", f"The custom_id {custom_id!r} appears more than once; each "
                            "line needs its own.", line=index + 1)
            return False
        self.total = total
        await self.set_status(Status.IN_PROGRESS, total=total)
        return True

    async def process(self) -> None:
        job = self.job
        limit = asyncio.Semaphore(settings.BATCH_TENANT_CONCURRENCY)
        window = settings.BATCH_TENANT_CONCURRENCY * 2
        name = await self.db(lambda: job.input_file.storage_name)
        reader = lines_read(name, offset=job.cursor_offset, first_index=job.cursor_line)
        flusher = asyncio.ensure_future(self.flush_periodically())
        try:
            while self.stop_reason is None:
                taken = await self.io(lines_take, reader, settings.BATCH_CHUNK_LINES)
                if not taken:
                    break
                first, last = taken[0][0], taken[-1][0]
                answered = await self.db(lines_answered, job.pk, first, last)
                chunk = Chunk(start=(first, taken[0][1]), remaining=len(taken) - len(answered))
                self.chunks.append(chunk)
                self.end = (last + 1, taken[-1][1] + len(taken[-1][2]))
                for index, _offset, raw in taken:
                    if index in answered:
                        continue
                    while len(self.in_flight) >= window and self.stop_reason is None:
                        await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
                    if self.stop_reason is not None:
                        break
                    task = asyncio.ensure_future(self.line(limit, chunk, index, raw))
                    self.in_flight.add(task)
                    task.add_done_callback(self.in_flight.discard)
                del taken
            if self.in_flight:
                await asyncio.gather(*self.in_flight, return_exceptions=True)
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self.io(reader.close)
        if self.stop_reason != "lost":
            await self.flush()

    async def line(self, limit: asyncio.Semaphore, chunk: Chunk, index: int, raw: bytes) -> None:
        async with limit:
            if self.stop_reason is not None:
                return
            result = await self.executor.line_answer(job_id=self.job.pk, endpoint=self.job.endpoint,
                                                     index=index, raw=raw)
        self.results.append((result, chunk))
        if len(self.results) >= FLUSH_ROWS:
            self.flush_wake.set()

    async def flush_periodically(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.flush_wake.wait(), timeout=FLUSH_EVERY)
            except TimeoutError:
                pass
            self.flush_wake.clear()
            try:
                await self.flush()
            except LeaseLost:
                self.stop("lost")
                return

    async def flush(self) -> None:
        async with self.flush_lock:
            taken, self.results = self.results, []
            for _result, chunk in taken:
                chunk.remaining -= 1
            moved = False
            while self.chunks and self.chunks[0].remaining <= 0:
                self.chunks.popleft()
                moved = True
            if not taken and not moved:
                return
            cursor = (self.chunks[0].start if self.chunks else self.end) if moved else None
            lines = [(r.index, r.custom_id, r.is_error, r.line) for r, _chunk in taken]
            await self.db(lines_record, job_id=self.job.pk, token=self.token, lines=lines, cursor=cursor)
            failed = sum(1 for line in lines if line[2])
            self.completed += len(lines) - failed
            self.failed += failed
        await self.publish()

    async def reduce(self) -> dict | None:
        answers = await self.db(map_answers, self.job.pk)
        if not answers:
            await self.fail("no_map_answers", "Every map call failed; there is nothing to reduce (see the error file).")
            return None
        self.reduce_task = asyncio.ensure_future(reduce_run(
            self.executor, job_id=self.job.pk, params=self.job.params, texts=answers,
            concurrency=settings.BATCH_TENANT_CONCURRENCY))
        try:
            return await self.reduce_task
        except asyncio.CancelledError:
            if self.stop_reason == "cancel":
                await self.finish(Status.CANCELLED)
                return None
            raise
        except GatewayError as error:
            await self.fail(error.code, f"The reduce step failed: {error.message}")
            return None

    async def finish(self, status: str, *, result: dict | None = None, expire: bool = False) -> None:
        job = self.job
        expired = [0]

        def counted(lines):
            for line in lines:
                expired[0] += 1
                yield line

        extra = counted(_expired_lines(job, self.executor)) if expire else ()
        output, error = await self.io(job_files_write, job, extra_errors=extra)
        fields = {"output_file_id": output.pk if output else None, "error_file_id": error.pk if error else None}
        if result is not None:
            fields["result"] = result
        if expired[0]:
            # Lines left unanswered count as failed: each has its line in the error file.
            self.failed += expired[0]
            fields["failed"] = F("failed") + expired[0]
        await self.set_status(status, **fields)


def _file_exists(job: BatchJob) -> bool:
    return File.objects.filter(pk=job.input_file_id).exists()


def _expired_lines(job: BatchJob, executor: BatchExecutor):
    """Error lines for every line not answered when the job expired (read from the cursor on)."""
    job.refresh_from_db(fields=["cursor_line", "cursor_offset"])
    name = job.input_file.storage_name
    reader = lines_read(name, offset=job.cursor_offset, first_index=job.cursor_line)
    try:
        while True:
            taken = lines_take(reader, 2000)
            if not taken:
                return
            answered = lines_answered(job.pk, taken[0][0], taken[-1][0])
            for index, _offset, raw in taken:
                if index not in answered:
                    yield executor.line_expired(job_id=job.pk, index=index, raw=raw)
    finally:
        reader.close()


async def job_run(job_id: str) -> str:
    """Run (or resume) a job on this worker: the outcome, or why it did not run here."""
    token = secrets.token_hex(16)
    job, why = await asyncio.to_thread(_once, job_claim, job_id=job_id, token=token)
    if job is None:
        return why
    # Names the lease in this worker's log, so an operator (or a test) can tell which worker
    # holds a job from the job's row.
    logger.info("batch job %s: running under lease %s", job_id, token[:8])
    runner = JobRunner(job, token, executor_create())
    try:
        return await runner.run()
    finally:
        await asyncio.to_thread(_once, job_release, job_id=job_id, token=token)
