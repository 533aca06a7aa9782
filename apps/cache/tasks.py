"""Cache housekeeping on Celery: TTL eviction in small batches (no long locks), and the
per-tenant entry limit (least recently hit first). Beat runs both every minute."""

from __future__ import annotations

from celery import shared_task

from apps.cache.services import cache_enforce_limits, cache_evict_expired


@shared_task(name="cache.evict_expired")
def evict_expired(batch_size: int = 5000) -> int:
    return cache_evict_expired(batch_size=batch_size)


@shared_task(name="cache.enforce_limits")
def enforce_limits(batch_size: int = 5000) -> int:
    return cache_enforce_limits(batch_size=batch_size)
