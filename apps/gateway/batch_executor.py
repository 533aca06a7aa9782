"""The gateway's side of :mod:`apps.batches.executor`: a batch job's lines run through the
pipeline, on a runtime of the worker's own (snapshot, upstream sessions, limits, cache, usage
buffer), as a web process has. ``settings.BATCH_EXECUTOR`` names :class:`GatewayBatchExecutor`.
"""

from __future__ import annotations

import time

from django.conf import settings

from apps.core.completions import completion_text
from apps.gateway.doors.batch_lines import LineResult, chat_line, line_answer, line_expired
from apps.gateway.runtime import Runtime
from apps.gateway.snapshot import KeyInfo, key_info_load
from apps.gateway.upstream_batches import (
    UpstreamResult,
    job_cost,
    upstream_estimate,
    upstream_plan,
    upstream_poll,
    upstream_submit,
)
from apps.gateway.upstream_batches.spend import spend_reserve, spend_settle
from apps.tenants.models import ApiKey


class GatewayBatchExecutor:
    """Answers one job's lines with the job's key (see :class:`apps.batches.executor.BatchExecutor`)."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.key: KeyInfo | None = None

    def key_load(self, api_key_id: int | None) -> bool:
        prefix = ApiKey.objects.filter(pk=api_key_id).values_list("prefix", flat=True).first() if api_key_id else None
        self.key = key_info_load(prefix) if prefix else None
        return self.key is not None and self.key.is_usable(time.time())

    async def open(self) -> None:
        # A job saves a cache entry per line; they are written (into the HNSW index) after the
        # job, which no longer waits on the index (docs/batches.md).
        self.runtime = Runtime(embed_threads=settings.BATCH_EMBED_THREADS, cache_index_later=True)
        await self.runtime.start()

    async def close(self) -> None:
        if self.runtime is None:
            return
        runtime, self.runtime = self.runtime, None
        await runtime.stop()
        runtime._db_executor.shutdown(wait=False)

    async def line_answer(self, *, job_id: str, endpoint: str, index: int, raw: bytes) -> LineResult:
        return await line_answer(self.runtime, self.key, job_id=job_id, endpoint=endpoint, index=index, raw=raw)

    async def chat(self, body: dict, *, request_id: str) -> str:
        _call, answer = await chat_line(self.runtime, self.key, body, (request_id, "batch:/v1/chat/completions"))
        return completion_text(answer)

    def chat_context_windows(self) -> dict[str, int]:
        return {name: model.context_window for name, model in self.runtime.snapshot.models.items()
                if model.mode == "chat"}

    def line_expired(self, *, job_id: str, index: int, raw: bytes) -> bytes:
        return line_expired(job_id, index, raw)

    def upstream_plan(self, *, endpoint: str, storage_name: str) -> dict | None:
        return upstream_plan(endpoint=endpoint, storage_name=storage_name)

    def upstream_reserve(self, *, job_id: str, storage_name: str, upstream: dict) -> dict:
        estimate = upstream_estimate(storage_name=storage_name, upstream=upstream)
        return spend_reserve(job_id=job_id, key=self.key, estimate=estimate)

    def upstream_submit(self, *, job_id: str, storage_name: str, upstream: dict) -> str:
        return upstream_submit(job_id=job_id, storage_name=storage_name, upstream=upstream)

    def upstream_poll(self, *, job: dict, storage_name: str) -> UpstreamResult | None:
        return upstream_poll(job=job, storage_name=storage_name)

    def upstream_settle(self, *, job_id: str, upstream: dict) -> None:
        if self.key is not None:  # a deleted key's reservation is given back when its lease ends
            spend_settle(key=self.key, budget=upstream["budget"], cost=job_cost(job_id))
