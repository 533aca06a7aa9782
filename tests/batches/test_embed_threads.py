"""A worker running batch jobs gives the local embedder ``BATCH_EMBED_THREADS`` threads: every
cacheable line is embedded, and the worker has no callers waiting on its event loop."""

from __future__ import annotations

import pytest

from apps.gateway import runtime as runtime_module
from tests.batch_executor import with_batch_executor


@pytest.mark.django_db(transaction=True)
def test_it_gives_the_batch_worker_s_embedder_its_own_thread_count(settings, monkeypatch):
    settings.BATCH_EMBED_THREADS = 3
    settings.CACHE_EMBED_THREADS = 1
    settings.CACHE_LOCAL_EMBEDDER = False  # the thread count is what is checked, not the model's load
    monkeypatch.setattr(runtime_module, "_LOCAL_EMBEDDERS", {})

    async def threads(executor):
        return executor.runtime.batcher.embedder.threads

    assert with_batch_executor(threads) == 3
    assert runtime_module.Runtime().embed_threads == 1  # a web process keeps CACHE_EMBED_THREADS
