"""A worker running batch jobs gives the local embedder ``BATCH_EMBED_THREADS`` threads: every
cacheable line is embedded, and the worker has no callers waiting on its event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.db import connections

from apps.gateway import runtime as runtime_module
from apps.gateway.batch_executor import GatewayBatchExecutor


@pytest.mark.django_db(transaction=True)
def test_it_gives_the_batch_worker_s_embedder_its_own_thread_count(settings, monkeypatch):
    settings.BATCH_EMBED_THREADS = 3
    settings.CACHE_EMBED_THREADS = 1
    settings.CACHE_LOCAL_EMBEDDER = False  # the thread count is what is checked, not the model's load
    monkeypatch.setattr(runtime_module, "_LOCAL_EMBEDDERS", {})

    async def open_and_close():
        executor = GatewayBatchExecutor()
        await executor.open()
        try:
            return executor.runtime.batcher.embedder.threads
        finally:
            # The runtime's two database threads each close their connection (one call each),
            # so that the test database can be dropped.
            barrier = threading.Barrier(2)

            def close_connections():
                barrier.wait(10)
                connections.close_all()

            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(executor.runtime._db_executor, close_connections)
                                   for _ in range(2)))
            await executor.close()

    assert asyncio.run(open_and_close()) == 3
    assert runtime_module.Runtime().embed_threads == 1  # a web process keeps CACHE_EMBED_THREADS
