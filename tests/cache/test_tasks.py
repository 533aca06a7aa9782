"""Cache housekeeping, run by a real Celery worker."""

from __future__ import annotations

import time
from datetime import timedelta

from django.utils import timezone

from apps.cache.models import CacheEntry
from apps.cache.services import cache_enforce_limits
from apps.cache.tasks import evict_expired


def _entry(tenant, n: int, *, expires_in: float, last_hit_minutes_ago: float | None = None) -> CacheEntry:
    now = timezone.now()
    return CacheEntry.objects.create(
        tenant=tenant, request_hash=f"{n:064d}", prompt_text=f"prompt {n}", response={"choices": []},
        expires_at=now + timedelta(seconds=expires_in),
        last_hit_at=now - timedelta(minutes=last_hit_minutes_ago) if last_hit_minutes_ago is not None else None,
    )


def test_it_evicts_expired_entries_with_a_real_worker(celery_worker, tenant_a, tenant_b):
    for n in range(30):
        _entry(tenant_a if n % 2 else tenant_b, n, expires_in=-60)
    alive = _entry(tenant_a, 999, expires_in=3600)
    evict_expired.delay(batch_size=7)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and CacheEntry.objects.count() > 1:
        assert celery_worker.poll() is None, "the worker died"
        time.sleep(0.2)
    assert list(CacheEntry.objects.all()) == [alive]


def test_it_keeps_each_tenants_most_recently_hit_entries(db, tenant_a, tenant_b):
    tenant_a.cache_max_entries = 3
    tenant_a.save()
    for n in range(6):
        _entry(tenant_a, n, expires_in=3600, last_hit_minutes_ago=n)  # entry 0 is the most recently hit
    for n in range(10, 16):
        _entry(tenant_b, n, expires_in=3600, last_hit_minutes_ago=1)
    assert cache_enforce_limits(batch_size=2) == 3
    kept = sorted(CacheEntry.objects.filter(tenant=tenant_a).values_list("prompt_text", flat=True))
    assert kept == ["prompt 0", "prompt 1", "prompt 2"]
    assert CacheEntry.objects.filter(tenant=tenant_b).count() == 6
