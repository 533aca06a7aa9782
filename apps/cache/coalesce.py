"""Concurrent calls gathered into one run: the cache store sends the lookups and saves of many
requests in flight as one SQL statement each, as :class:`apps.cache.embedder.MicroBatcher`
sends their texts to the model as one batch.

With fewer than ``max_inflight`` runs under way an item goes at once (with whatever arrived in
the same turn of the event loop); every item that arrives while the runs are busy goes with
the next run as soon as one ends. One request alone waits for nothing; under load the runs grow
by themselves to what arrived during one run (at most ``max_items``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """``await submit(item)`` is ``run([item, ...])``'s result for that item.

    ``run`` answers a list of items with a list of results in the same order. When it raises,
    every item of that run gets the exception."""

    def __init__(self, run: Callable[[list[Item]], Awaitable[Sequence[Result]]], *, max_items: int = 256,
                 max_inflight: int = 1) -> None:
        self.run = run
        self.max_items = max_items
        self.max_inflight = max_inflight
        self._pending: list[tuple[Item, asyncio.Future]] = []
        self._scheduled: asyncio.Handle | None = None
        self._inflight = 0
        self._running: set[asyncio.Task] = set()
        self.sizes: list[int] = []  # recent run sizes, for tests and benchmarks

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((item, future))
        if self._inflight < self.max_inflight and self._scheduled is None:
            self._scheduled = loop.call_soon(self._dispatch)
        return await future

    async def drain(self) -> None:
        """Wait until every item submitted so far has its answer."""
        while self._pending or self._running:
            if self._running:
                await asyncio.wait(list(self._running))
            else:
                await asyncio.sleep(0)

    def _dispatch(self) -> None:
        self._scheduled = None
        while self._pending and self._inflight < self.max_inflight:
            batch, self._pending = self._pending[:self.max_items], self._pending[self.max_items:]
            self._inflight += 1
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)  # keep a reference until it ends
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        self.sizes.append(len(batch))
        del self.sizes[:-1000]
        # Every caller may have gone (cancelled); the run still goes, as a write must.
        try:
            results = await self.run([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._inflight -= 1
            if self._pending and self._scheduled is None:
                self._dispatch()  # what arrived meanwhile goes now, together
