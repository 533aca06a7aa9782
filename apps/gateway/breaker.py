"""Circuit breakers: one per provider, in each gateway process.

    closed ──(CIRCUIT_FAILURES failures in a row)──> open
    open ──(CIRCUIT_COOLDOWN seconds pass)──> half-open: the next request is let through as a probe
    half-open ──(the probe answers)──> closed
    half-open ──(the probe fails)──> open for another cooldown

A failure is what the fallback chain counts as one (a 5xx, a timeout, a refused or cut
connection, a body that is not JSON or not server-sent events, refused credentials) and a stream
that breaks after its first byte. A 429 is not: a provider that is rate-limiting is alive, and its
Retry-After already says when to come back. An answer the provider refused as the client's fault
(another 4xx) proves the provider up.

While a provider's circuit is open the fallback chain skips it without waiting for a timeout;
when every provider of a request is open the client gets 503 ``upstream_unavailable`` with a
Retry-After of the nearest probe. Each process keeps its own breakers (no round-trip on the hot
path); every transition is reported through ``on_change`` so the admin can show it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(slots=True)
class Circuit:
    """One provider's breaker."""

    state: str = CLOSED
    failures: int = 0  # consecutive
    retry_at: float = 0.0  # monotonic time when an open circuit admits its probe
    probing: bool = False  # a half-open circuit's probe is in flight
    last_failure: str = ""


class Breakers:
    """The circuits of every provider this process has called."""

    def __init__(self, *, threshold: int, cooldown: float,
                 on_change: Callable[[object, Circuit], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.on_change = on_change
        self._clock = clock
        self._circuits: dict[int, Circuit] = {}
        self.reported = False  # a transition has happened (there are rows to forget at shutdown)

    def circuit(self, provider) -> Circuit:
        circuit = self._circuits.get(provider.id)
        if circuit is None:
            circuit = self._circuits[provider.id] = Circuit()
        return circuit

    def admit(self, provider) -> bool:
        """May a request go to ``provider`` now? A half-open circuit admits one probe at a time."""
        circuit = self._circuits.get(provider.id)
        if circuit is None or circuit.state == CLOSED:
            return True
        if circuit.state == OPEN:
            if self._clock() < circuit.retry_at:
                return False
            circuit.state = HALF_OPEN
            circuit.probing = True
            self._changed(provider, circuit)
            return True
        if circuit.probing:
            return False
        circuit.probing = True
        return True

    def succeeded(self, provider) -> None:
        circuit = self._circuits.get(provider.id)
        if circuit is None or (circuit.state == CLOSED and circuit.failures == 0):
            return
        was = circuit.state
        circuit.state, circuit.failures, circuit.probing = CLOSED, 0, False
        if was != CLOSED:
            self._changed(provider, circuit)

    def failed(self, provider, reason: str) -> None:
        circuit = self.circuit(provider)
        circuit.failures += 1
        circuit.last_failure = reason[:500]
        if circuit.state == HALF_OPEN or (circuit.state == CLOSED and circuit.failures >= self.threshold):
            circuit.state, circuit.probing = OPEN, False
            circuit.retry_at = self._clock() + self.cooldown
            self._changed(provider, circuit)

    def released(self, provider) -> None:
        """A probe ended with no verdict (the client left, the request was cancelled)."""
        circuit = self._circuits.get(provider.id)
        if circuit is not None and circuit.state == HALF_OPEN:
            circuit.probing = False

    def is_open(self, provider) -> bool:
        circuit = self._circuits.get(provider.id)
        return circuit is not None and circuit.state == OPEN

    def tripped(self, snapshot) -> dict[str, bool]:
        """Provider name -> whether its circuit is open or probing, for providers seen so far."""
        names = {m.provider.id: m.provider.name for m in snapshot.models.values()} if snapshot else {}
        return {names[pid]: c.state != CLOSED for pid, c in self._circuits.items() if pid in names}

    def retry_in(self, providers) -> float:
        """Seconds until the first of ``providers`` will admit a probe (0 if one admits now)."""
        now = self._clock()
        waits = [max(self.circuit(p).retry_at - now, 0.0) for p in providers]
        return min(waits, default=0.0)

    def _changed(self, provider, circuit: Circuit) -> None:
        self.reported = True
        if self.on_change is not None:
            self.on_change(provider, circuit)
