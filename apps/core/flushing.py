"""Background flush timers that a shutdown stops without losing what a flush has taken."""

from __future__ import annotations

import asyncio
import contextlib


async def flush_timer_stop(task: asyncio.Task, flush_lock: asyncio.Lock) -> None:
    """Cancel a timer task whose flushes hold ``flush_lock``, only between two flushes.

    Cancelled half-way, a flush would drop what it had taken from its buffer (a write still
    queued for a thread is cancelled with it); holding the lock, the task is asleep or waiting
    for the lock, before it takes anything. The caller then flushes what is left itself."""
    async with flush_lock:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
