"""The usage buffer writes every row, in bulk, even when a reference has gone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from apps.usage.buffer import UsageBuffer
from apps.usage.models import RequestLog
from tests.live import await_until


def _row(tenant, n: int, **extra) -> dict:
    return {"tenant_id": tenant.pk, "request_id": f"req-{n}", "input_tokens": n, "cost": Decimal("0.000001"),
            "created_at": datetime.now(UTC), **extra}


@pytest.mark.django_db(transaction=True)
def test_it_flushes_buffered_rows_in_bulk(tenant_a):
    async def run():
        buffer = UsageBuffer(interval=60, max_rows=10_000)
        for n in range(250):
            buffer.append(_row(tenant_a, n))
        assert len(buffer) == 250
        written = await buffer.flush()
        return written, len(buffer)

    written, left = asyncio.run(run())
    assert (written, left) == (250, 0)
    assert RequestLog.objects.filter(tenant=tenant_a).count() == 250


@pytest.mark.django_db(transaction=True)
def test_it_flushes_by_size_without_waiting_for_the_timer(tenant_a):
    async def run():
        buffer = UsageBuffer(interval=60, max_rows=20)
        buffer.start()
        for n in range(20):
            buffer.append(_row(tenant_a, n))
        await await_until(lambda: buffer.written == 20)  # the timer would take a minute
        await buffer.close()
        return buffer.written

    assert asyncio.run(run()) == 20


@pytest.mark.django_db(transaction=True)
def test_it_keeps_rows_whose_model_was_deleted(tenant_a, cheap_model, key_a):
    model_id = cheap_model.pk
    price_id = cheap_model.prices.get().pk
    cheap_model.delete()

    async def run():
        buffer = UsageBuffer()
        buffer.append(_row(tenant_a, 1, model_id=model_id, price_id=price_id, api_key_id=key_a.api_key.pk))
        buffer.append(_row(tenant_a, 2, api_key_id=key_a.api_key.pk))
        await buffer.close()

    asyncio.run(run())
    rows = {row.request_id: row for row in RequestLog.objects.filter(tenant=tenant_a)}
    assert set(rows) == {"req-1", "req-2"}
    assert rows["req-1"].model_id is None
    assert rows["req-2"].api_key_id == key_a.api_key.pk


@pytest.mark.django_db(transaction=True)
def test_it_flushes_what_is_left_on_close(tenant_a):
    async def run():
        buffer = UsageBuffer(interval=60, max_rows=10_000)
        buffer.start()
        for n in range(7):
            buffer.append(_row(tenant_a, n))
        await buffer.close()

    asyncio.run(run())
    assert RequestLog.objects.filter(tenant=tenant_a).count() == 7


@pytest.mark.django_db(transaction=True)
def test_it_writes_a_row_holding_a_nul_character_without_it_and_the_rest_of_the_batch(tenant_a):
    # A client can put NUL in the model it asks for; Postgres text cannot hold it.
    async def run():
        buffer = UsageBuffer()
        buffer.append(_row(tenant_a, 1, requested_model="sim\x00mini"))
        buffer.append(_row(tenant_a, 2, requested_model="sim-mini"))
        written = await buffer.flush()
        return written, len(buffer)

    assert asyncio.run(run()) == (2, 0)
    rows = {row.request_id: row.requested_model for row in RequestLog.objects.filter(tenant=tenant_a)}
    assert rows == {"req-1": "simmini", "req-2": "sim-mini"}


@pytest.mark.django_db(transaction=True)
def test_it_loses_no_row_when_closed_while_a_flush_waits_for_a_thread(tenant_a):
    """A server stopping right after the timer's flush began: that batch is written, not dropped
    with the flush task (its write may still be queued for a worker thread)."""
    import concurrent.futures
    import threading

    async def run():
        loop = asyncio.get_running_loop()
        threads = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        loop.set_default_executor(threads)  # the flush's write runs here
        busy = threading.Event()
        loop.run_in_executor(None, busy.wait, 10)  # the only thread is taken: the write queues
        buffer = UsageBuffer(interval=60, max_rows=5)
        buffer.start()
        for n in range(5):
            buffer.append(_row(tenant_a, n))  # the fifth wakes the flush task
        # The flush has taken the rows and waits for the thread.
        assert await await_until(lambda: len(buffer) == 0, interval=0.01)
        closing = asyncio.ensure_future(buffer.close())
        await asyncio.sleep(0.2)
        busy.set()
        await asyncio.wait_for(closing, 10)
        return buffer.written

    assert asyncio.run(run()) == 5
    assert RequestLog.objects.filter(tenant=tenant_a).count() == 5
