"""Writes on the cache outside the hot path: eviction and purges."""

from __future__ import annotations

from django.db import connection, transaction
from django.utils import timezone

from apps.cache import purges
from apps.cache.models import CacheEntry, CachePurge
from apps.core.deletes import delete_in_batches
from apps.tenants.models import Tenant


def cache_evict_expired(*, batch_size: int = 5000) -> int:
    """Delete expired entries, ``batch_size`` rows per statement, each its own short transaction,
    and the purge records no batch worker can still need (``purges.PURGES_KEEP``); how many
    entries went."""
    CachePurge.objects.filter(purged_at__lt=timezone.now() - purges.PURGES_KEEP).delete()
    return delete_in_batches(
        "DELETE FROM cache_cacheentry WHERE id IN (SELECT id FROM cache_cacheentry "
        "WHERE expires_at <= now() LIMIT %s FOR UPDATE SKIP LOCKED)", [], batch_size=batch_size)


def cache_enforce_limits(*, batch_size: int = 5000) -> int:
    """For tenants with a maximum entry count, drop the least recently hit entries beyond it."""
    return sum(delete_in_batches(
        "DELETE FROM cache_cacheentry WHERE id IN (SELECT id FROM cache_cacheentry WHERE tenant_id = %s "
        "ORDER BY coalesce(last_hit_at, created_at) DESC OFFSET %s LIMIT %s)", [tenant_id, limit],
        batch_size=batch_size)
        for tenant_id, limit in Tenant.objects.filter(cache_max_entries__isnull=False).values_list(
            "id", "cache_max_entries"))


@transaction.atomic
def cache_purge(*, tenant_id: int, model_name: str | None = None) -> int:
    """Delete one tenant's entries, or only those that ``model_name`` answered, and record the
    purge, which batch workers' memories heed (:mod:`apps.cache.purges`); how many rows went.

    Always one tenant: no call can reach into another tenant's cache.
    """
    with connection.cursor() as cursor:
        cursor.execute(purges.LOCK, [purges.LOCK_CLASS, purges.lock_key(tenant_id)])
    entries = CacheEntry.objects.filter(tenant_id=tenant_id)
    if model_name is not None:
        entries = entries.filter(model_name=model_name)
    count, _ = entries.delete()
    with connection.cursor() as cursor:
        cursor.execute(purges.RECORD, [tenant_id, model_name])
    return count
