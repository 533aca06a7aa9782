"""Background responses (``background: true`` on ``POST /v1/responses``): the request runs
through the pipeline in a task of the gateway process, off the request that created it.

    door      hands the pipeline the request (always as a stream, so its events can be
              replayed), and answers once it is validated, routed and within its limits: a
              ``queued`` response (or its events, with ``stream: true``); an error before then
              is the create request's own
    reader    a task relaying the pipeline's stream into a queue (cancelling it cuts the stream,
              which logs and bills what was produced)
    writer    the run itself: takes what the queue holds, numbers the events, writes them to the
              stored row with its status (``in_progress``, then the last event's), then hands
              them to the followers; writes at least every ``RESPONSES_BACKGROUND_HEARTBEAT``
              seconds, each write setting when the row goes stale (``RESPONSES_BACKGROUND_STALE``
              seconds on): a row left unwritten past it is a run whose process died (failed
              when next read)
    follow    the events after a sequence number: from the run when it is in this process (live),
              else from the stored row, read again until the response ends

A write that changes nothing means the row no longer runs (cancelled from another process, or
failed as stale): the run stops its stream. Cancelling a run of this process stops it and
writes the last event itself, so sequence numbers stay one series.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import orjson
from django.conf import settings

from apps.core.errors import GatewayError
from apps.gateway.dialects.responses.translate import response_id_of
from apps.gateway.pipeline.run import Answer, ChatRequest, chat
from apps.gateway.runtime import Runtime
from apps.providers.transport import UpstreamClientError
from apps.responses.store import response_end, response_events, response_progress

logger = logging.getLogger(__name__)

ENDS = ("completed", "incomplete", "failed", "cancelled")
_POLL_SECONDS = 0.25  # a follower of a run in another process reads its row this often
RUNS: dict[str, BackgroundRun] = {}  # response id -> its run in this process


def sse(event: dict) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _parsed(data: bytes) -> list[dict]:
    """The events of SSE bytes (comments, such as the cost, left out)."""
    events = []
    for block in data.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    event = orjson.loads(line[5:])
                    if isinstance(event, dict) and isinstance(event.get("type"), str):
                        events.append(event)
    return events


class BackgroundRun:
    """One background response running in this process."""

    def __init__(self, runtime: Runtime, *, tenant_id: int, context: list) -> None:
        self.runtime = runtime
        self.request: ChatRequest | None = None  # set by the door before the run starts
        self.tenant_id = tenant_id
        self.context = context  # the conversation it continues
        self.input_items: list = []  # its own input items, once stored
        self.accepted: asyncio.Future = asyncio.get_running_loop().create_future()  # set by the dialect
        self.stored = asyncio.Event()  # its row exists: the run may write it
        self.response_id = ""
        self.response: dict | None = None  # as it stands
        self.events: list[dict] = []  # written, in order (sequence number = index)
        self.status = "queued"
        self.changed = asyncio.Event()  # set (and replaced) when events are written or the run ends
        self.done = False
        self.cancelling = False
        self.task: asyncio.Task | None = None
        self._reader: asyncio.Task | None = None
        self._queue: asyncio.Queue = asyncio.Queue()

    def start(self) -> asyncio.Task:
        self.task = self.runtime.spawn(self._run())
        return self.task

    def accept(self, call) -> None:
        """The pipeline accepted the request (the dialect's ``routed``): the door may answer."""
        self.response_id = response_id_of(call.request_id)
        RUNS[self.response_id] = self
        if not self.accepted.done():
            self.accepted.set_result(call)

    async def cancel(self) -> dict | None:
        """Stop the run; the response as it ends (``cancelled``, unless it finished first)."""
        if not self.done and not self.cancelling:
            self.cancelling = True
            if self._reader is not None:
                self._reader.cancel()  # the write loop then writes the end
            elif self.task is not None:
                self.task.cancel()  # still waiting for the provider's first bytes
        if self.task is not None:
            await asyncio.wait({self.task})
        return self.response

    async def _run(self) -> None:
        try:
            answer = await chat(self.runtime, self.request)
        except (GatewayError, UpstreamClientError) as exc:
            if not self.accepted.done():
                self.accepted.set_exception(exc)  # the create request answers it
                return
            await self._fail(exc)
            return
        except asyncio.CancelledError:
            if not self.accepted.done():
                self.accepted.cancel()
                raise
            if self.cancelling:
                await self._end_cancelled([])
                self._finish()
                return
            await self._fail(None)
            raise
        except Exception as exc:
            if not self.accepted.done():
                self.accepted.set_exception(exc)
                return
            logger.exception("background response failed")
            await self._fail(exc)
            return
        try:
            await self.stored.wait()
            if not self.response_id or self.response is None:
                return  # the door could not store it
            self._reader = asyncio.create_task(self._read(answer))
            await self._write_loop()
        finally:
            await answer.close()
            self._finish()

    async def _read(self, answer: Answer) -> None:
        """The pipeline's answer, as events, into the queue; None at its end."""
        pieces = answer.stream.__aiter__() if answer.stream is not None else None
        try:
            if pieces is not None:
                async for data in pieces:
                    self._queue.put_nowait(_parsed(data))
            else:
                dialect = self.request.dialect
                chunks, _response = dialect.replay_events(answer.call, self.request.body, answer.hit.response)
                self._queue.put_nowait(_parsed(b"".join(chunks)))
        except asyncio.CancelledError:
            if answer.stream is not None:
                answer.stream.client_left()  # the stream is logged as cut by its client
            raise
        finally:
            if pieces is not None:
                await pieces.aclose()
            self._queue.put_nowait(None)

    async def _write_loop(self) -> None:
        heartbeat = settings.RESPONSES_BACKGROUND_HEARTBEAT
        ended = False
        while not ended:
            try:
                batch = [await asyncio.wait_for(self._queue.get(), heartbeat)]
            except TimeoutError:
                batch = []
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            ended = None in batch
            events = [event for piece in batch if piece is not None for event in piece]
            if self.cancelling:
                await self._end_cancelled(events)
                return
            if ended and not any(event.get("type") in _LAST for event in events):
                events += self._failed_events(None, events)
            if not await self._write(events):
                await self._taken_over()
                return

    async def _write(self, events: list[dict]) -> bool:
        """Number ``events``, write them with the status they leave, then hand them out."""
        context = None
        status = self.status
        # The door wrote the stream's first event (the response queued); the pipeline's own is dropped.
        events = [event for event in events if event.get("type") != "response.created"]
        for index, event in enumerate(events, len(self.events)):
            event["sequence_number"] = index
            response = event.get("response")
            if isinstance(response, dict):
                response["background"] = True
                self.response = response
                if event["type"] in _LAST and response.get("status") in ENDS:
                    status = response["status"]
                    context = self.context + self.input_items + list(response.get("output") or [])
        if status == "queued" and events:
            status = "in_progress"
        written = await response_progress(
            self.runtime.cache.pool, tenant_id=self.tenant_id, response_id=self.response_id, events=events,
            status=status, stale_seconds=settings.RESPONSES_BACKGROUND_STALE, response=self.response, context=context)
        if written:
            # Only now: a follower that sees the run ended must find every event it wrote.
            self.status = status
            self.events += events
            self._changed()
        return written

    def _failed_events(self, exc: BaseException | None, batch: list[dict] = ()) -> list[dict]:
        """The end of a run that failed: an ``error`` event (unless the stream sent one), then
        ``response.failed``, its ``error`` one of OpenAI's codes (the gateway's own leads its message)."""
        code = getattr(exc, "code", None) or "server_error"
        message = getattr(exc, "message", None) or "The background response failed."
        events = []
        if exc is not None:
            events.append({"type": "error", "code": code, "message": message, "param": None})
        else:
            sent = next((event for event in reversed([*self.events, *batch]) if event.get("type") == "error"), None)
            if sent is not None:
                code, message = sent.get("code") or "server_error", sent.get("message") or message
        kind = "rate_limit_exceeded" if code == "rate_limit_exceeded" else "server_error"
        error = {"code": kind, "message": message if code == kind else f"{code}: {message}"}
        response = {**(self.response or {}), "status": "failed", "error": error}
        events.append({"type": "response.failed", "response": response})
        return events

    async def _fail(self, exc: BaseException | None) -> None:
        """The pipeline raised after accepting the request (every model failed, say)."""
        try:
            await self.stored.wait()
            if self.response is None:
                return  # the door could not store it
            with contextlib.suppress(Exception):
                if not await self._write(self._failed_events(exc)):
                    await self._taken_over()
        finally:
            self._finish()

    async def _end_cancelled(self, events: list[dict]) -> None:
        """Written by this run: what the stream had sent, then ``response.cancelled``."""
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        while not self._queue.empty():
            piece = self._queue.get_nowait()
            events += piece or []
        response = {**(self.response or {}), "status": "cancelled"}
        events = [*events, {"type": "response.cancelled", "response": response}]
        if not await self._write(events):
            await self._taken_over()

    async def _taken_over(self) -> None:
        """The row stopped running under this run (cancelled or failed elsewhere): stop, and take
        its events and response as they were written."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        found = await response_events(self.runtime.cache.pool, tenant_id=self.tenant_id,
                                      response_id=self.response_id)
        if found is not None:
            self.status, self.events = found[0], list(found[1])
            last = self.events[-1] if self.events else {}
            if isinstance(last.get("response"), dict):
                self.response = last["response"]
        self._changed()

    def _changed(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        RUNS.pop(self.response_id, None)
        self._changed()


_LAST = frozenset({"response.completed", "response.incomplete", "response.failed", "response.cancelled"})


async def follow(runtime: Runtime, *, tenant_id: int, response_id: str, after: int) -> AsyncIterator[bytes]:
    """The events of a background response after sequence number ``after``, as SSE, until it ends."""
    run = RUNS.get(response_id)
    sent = after
    while True:
        if run is not None and run.tenant_id == tenant_id:
            changed = run.changed
            events, ended = run.events, run.done or run.status in ENDS
        else:
            found = await response_events(runtime.cache.pool, tenant_id=tenant_id, response_id=response_id)
            if found is None:
                return
            status, events, stale = found
            if stale and await stale_fail(runtime, tenant_id=tenant_id, response_id=response_id) is not None:
                continue  # its run died: read it again, ended
            ended = status in ENDS
            changed = None
        fresh = events[sent + 1:]  # an event's sequence number is its place in the series
        if fresh:
            sent = fresh[-1]["sequence_number"]
            yield b"".join(sse(event) for event in fresh)
        if ended:
            return
        if changed is not None:
            await changed.wait()
        else:
            await asyncio.sleep(_POLL_SECONDS)
            run = RUNS.get(response_id)


class Following:
    """:func:`follow` as a stream :func:`apps.gateway.asgi_io.stream_relay` sends: a client
    that leaves stops following, never the run."""

    def __init__(self, events: AsyncIterator[bytes], first: bytes = b"") -> None:
        self.events = events
        self.first = first

    def client_left(self) -> None:
        return None

    async def __aiter__(self):
        if self.first:
            yield self.first
        async for data in self.events:
            yield data


async def stale_fail(runtime: Runtime, *, tenant_id: int, response_id: str) -> dict | None:
    """Fail a background response whose run died with its process (no run here, its row not
    written again within the ``RESPONSES_BACKGROUND_STALE`` of the process that ran it); the
    response as it now stands, or None."""
    if response_id in RUNS:
        return None
    return await response_end(runtime.cache.pool, tenant_id=tenant_id, response_id=response_id, status="failed",
                              error={"code": "server_error", "message": "The gateway process running this "
                                     "background response stopped before it finished."}, stale=True)

