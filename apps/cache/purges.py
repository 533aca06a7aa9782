"""Purges that reach a batch worker's memory.

A batch worker's store (``CacheStore(index_later=True)``) keeps a job's new entries in memory and
writes them later. A purge deletes rows, and those entries are not rows yet: so each purge of a
tenant's cache, or of one model's entries in it (``CacheStore.clear``,
``apps.cache.services.cache_purge``), also writes a ``CachePurge`` record in its transaction, and
the store drops the waiting entries a record covers (its tenant, and its model when it names one,
created at or before it):

- before serving an exact hit from memory, having read its tenants' records at most every
  ``REFRESH_EVERY`` seconds (a purge reaches memory hits about that late, without a query per
  lookup), and
- when it writes, from the records read inside the write's own transaction.

A write and a purge of the same tenant exclude each other with a transaction-level advisory lock,
exclusive for the purge and shared for a write (which takes its tenants' in ascending order, so
that no two wait on each other in a circle)::

    purge                                       a worker's write (CacheStore.unsaved_write)
    BEGIN                                       BEGIN
    lock the tenant (exclusive)                 lock each of its tenants (shared)
    DELETE the entries                          read their records since the oldest entry
    INSERT the record (clock_timestamp())       INSERT the entries no record covers
    COMMIT                                      COMMIT

A purge that comes during a write waits for it, and its DELETE then sees the written rows; a
write that comes during a purge waits for it, and then reads its record. A write goes in
transactions of ``apps.cache.store.UNSAVED_WRITE_CHUNK`` entries, so that a purge waits for one at
most, not for a whole job's entries (tens of seconds for 20,000, most of it their HNSW inserts).

A web process's save (``CacheStore.save``, after the upstream answered a miss) takes its tenant's
lock the same way, shared, and inserts only if no record of its tenant, or of its model there,
is as late as when the request asked, in one statement: the database function
``cache_save_allowed`` (migration ``cache 0009``) takes the lock, then reads the records with a
snapshot of its own, taken after the wait. So a purge that came while the upstream was answering
keeps that answer out, as it keeps a worker's. The comparison crosses two clocks (the gateway's
for the request, the database's for the record), as a worker's does; hosts kept in step by NTP
differ by milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

REFRESH_EVERY = 1.0  # seconds between reads of the records by a store serving hits from memory
# A job's entries wait at most as long as the job runs, which ends with its completion window (7
# days at most); a record is needed no longer.
PURGES_KEEP = timedelta(days=8)

LOCK_CLASS = 0x5CA7  # the advisory locks' first key, "cache purge"; the second is the tenant's
# (The function cache_save_allowed, migration cache 0009, takes the same lock: 23719 is 0x5CA7.)
LOCK = "SELECT pg_advisory_xact_lock(%s, %s)"
LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(%s, key) FROM unnest(%s::int[]) AS key"
RECORD = "INSERT INTO cache_cachepurge (tenant_id, model_name, purged_at) VALUES (%s, %s, clock_timestamp())"
# The latest purge per tenant and model name (NULL: the whole tenant), of these tenants, since then.
SINCE = ("SELECT tenant_id, model_name, max(purged_at) FROM cache_cachepurge WHERE tenant_id = ANY(%s) "
         "AND purged_at >= %s GROUP BY tenant_id, model_name")


def lock_key(tenant_id: int) -> int:
    """The second key of a tenant's lock, an int4: tenants 2^31 apart share one, which only makes
    one wait for the other."""
    return tenant_id % 2**31


def lock_keys(tenant_ids: Iterable[int]) -> list[int]:
    """The keys of these tenants' locks, in the order a write takes them."""
    return sorted({lock_key(tenant_id) for tenant_id in tenant_ids})


class PurgeTimes:
    """The latest purge a store has read per tenant and per tenant's model."""

    def __init__(self) -> None:
        self.latest: dict[tuple[int, str | None], datetime] = {}

    def learn(self, rows: Iterable[tuple[int, str | None, datetime]]) -> bool:
        """Take (tenant, model name or None, purged at) rows; whether any was later than known."""
        later = False
        for tenant_id, model_name, purged_at in rows:
            known = self.latest.get((tenant_id, model_name))
            if known is None or purged_at > known:
                self.latest[tenant_id, model_name] = purged_at
                later = True
        return later

    def covers(self, tenant_id: int, model_name: str, created_at: datetime) -> bool:
        """Whether a purge known here deleted an entry of this tenant and model made then."""
        if not self.latest:
            return False
        whole = self.latest.get((tenant_id, None))
        if whole is not None and created_at <= whole:
            return True
        model = self.latest.get((tenant_id, model_name))
        return model is not None and created_at <= model
