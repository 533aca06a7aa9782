"""A batch worker's cache entries waiting in memory to be written (``CacheStore(index_later=True)``),
and the purges that drop them before they are (:mod:`apps.cache.purges`). No I/O: the store reads
the purge records and hands them here."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from apps.cache.purges import PurgeTimes

if TYPE_CHECKING:
    from apps.cache.store import CachedAnswer

    # The INSERT's parameters (tenant, namespace and request hash first), the answer, its expiry timestamp.
    Waiting = tuple[list, CachedAnswer, float]


class WaitingEntries:
    """Entries by (tenant, namespace, request hash); their tenants, a time no later than the
    oldest's creation (the purges that can cover them are those of these tenants since then),
    and the latest purges read."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, str, str], Waiting] = {}
        self.tenants: set[int] = set()
        self.since: datetime | None = None
        self.purges = PurgeTimes()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: tuple[int, str, str]) -> Waiting | None:
        return self.entries.get(key)

    def add(self, params: list, answer: CachedAnswer, expires: float) -> None:
        if self.since is None or answer.created_at < self.since:
            self.since = answer.created_at
        self.entries[params[0], params[1], params[2]] = (params, answer, expires)
        self.tenants.add(params[0])

    def snapshot(self) -> tuple[list[Waiting], datetime | None]:
        """The entries to write now, and since when purges can cover them."""
        return list(self.entries.values()), self.since

    def uncovered(self, waiting: list[Waiting], purges: Iterable) -> list[list]:
        """The INSERT parameters of those of ``waiting`` that none of ``purges`` (rows of
        ``apps.cache.purges.SINCE``) or of those read before covers."""
        self.purges.learn(purges)
        return [params for params, answer, _expires in waiting
                if not self.purges.covers(params[0], answer.model_name, answer.created_at)]

    def drop_covered(self, purges: Iterable) -> int:
        """Drop the entries a purge later than those read before covers; how many went."""
        if not self.purges.learn(purges):
            return 0  # those read before dropped what they cover already
        gone = [key for key, (_params, answer, _expires) in self.entries.items()
                if self.purges.covers(key[0], answer.model_name, answer.created_at)]
        for key in gone:
            del self.entries[key]
        self._forget_if_none()
        return len(gone)

    def remove(self, waiting: list[Waiting]) -> None:
        """Remove these (written, or dropped), but an entry saved again meanwhile under the same key."""
        for params, _answer, _expires in waiting:
            key = (params[0], params[1], params[2])
            if self.entries.get(key, (None,))[0] is params:
                del self.entries[key]
        self._forget_if_none()

    def _forget_if_none(self) -> None:
        if not self.entries:
            self.tenants, self.since, self.purges = set(), None, PurgeTimes()
