"""When each API key was last used, kept without a database write per request.

A request notes its key in memory (:meth:`KeysUsed.seen`: one dict store). The usage buffer's
flush, off the request path, asks for the keys that are :meth:`KeysUsed.due` and writes their
times in one statement (:func:`apps.tenants.services.keys_last_used_record`). A key is written
at most once per ``every`` seconds per process, so ``last_used_at`` trails the truth by at most
that much plus one flush interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LAST_USED_EVERY = 60.0  # seconds: the most often one process writes one key's last use


class KeysUsed:
    def __init__(self, *, every: float = LAST_USED_EVERY, clock: Callable[[], float] = time.time) -> None:
        self.every = every
        self._clock = clock
        self._seen: dict[int, float] = {}  # key id -> the last use not yet written (epoch seconds)
        self._written: dict[int, float] = {}  # key id -> when its last use was last written

    def seen(self, key_id: int) -> None:
        """A request used the key now."""
        self._seen[key_id] = self._clock()

    def due(self, *, everything: bool = False) -> dict[int, float]:
        """The last use of every key not written in the last ``every`` seconds (of every key
        seen, with ``everything``: at shutdown), taken out to be written; the caller hands it
        back with :meth:`retry` if the write fails."""
        if not self._seen:
            return {}
        now = self._clock()
        due = {key_id: at for key_id, at in self._seen.items()
               if everything or now - self._written.get(key_id, now - self.every) >= self.every}
        for key_id in due:
            del self._seen[key_id]
            self._written[key_id] = now
        return due

    def retry(self, used: dict[int, float]) -> None:
        """Keep ``used`` for the next round (a failed write), newer uses first."""
        for key_id, at in used.items():
            self._seen[key_id] = max(at, self._seen.get(key_id, at))
            self._written.pop(key_id, None)
