"""Circuit breakers: one per model of a provider (a deployment), in each gateway process.

    closed ──(CIRCUIT_FAILURES failures in a row)──> open
    open ──(CIRCUIT_COOLDOWN seconds pass)──> half-open: the next request is let through as a probe
    half-open ──(the probe answers)──> closed
    half-open ──(the probe fails)──> open for another cooldown

A circuit is keyed by the provider, the model and the deployment: a model that fails
(overloaded, or broken by one tenant's requests) pauses only itself, never the provider's other
models, nor other tenants' requests to them; and one deployment of a pooled model (a region, a
key) pauses only itself, never the model's other deployments on the same provider.

A failure is what proves the provider down: a 5xx or a 408, a timeout, a refused or cut
connection, a body that is not JSON or not server-sent events, and a stream that breaks after
its first byte (:attr:`apps.providers.transport.UpstreamFailure.outage`). No 4xx is one, whoever
sent the request: a 429 is the provider's rate limit (it is alive, its Retry-After says when to
come back, and the chain falls back meanwhile), a 401 or 403 says our credential is wrong (the
chain falls back; pausing would not mend it), and any other 4xx (400, 404, 413, 422, ...) is the
request's fault and proves the provider up. Were they counted, any tenant could open a circuit
for everyone by sending requests the provider refuses.

While a circuit is open the fallback chain skips its model without waiting for a timeout; when
every model of a request is open the client gets 503 ``upstream_unavailable`` with a
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
    """One model's breaker."""

    state: str = CLOSED
    failures: int = 0  # consecutive
    retry_at: float = 0.0  # monotonic time when an open circuit admits its probe
    probing: bool = False  # a half-open circuit's probe is in flight
    last_failure: str = ""


def _key(model) -> tuple[int, int, int]:
    return model.provider.id, model.id, getattr(model, "deployment_id", None) or 0


class Breakers:
    """The circuits of every model this process has called, by provider and model; each method
    takes the model (anything with ``id``, ``name`` and a ``provider`` with ``id`` and ``name``)."""

    def __init__(self, *, threshold: int, cooldown: float,
                 on_change: Callable[[object, Circuit], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.on_change = on_change
        self._clock = clock
        self._circuits: dict[tuple[int, int, int], Circuit] = {}
        self.reported = False  # a transition has happened (there are rows to forget at shutdown)

    def circuit(self, model) -> Circuit:
        circuit = self._circuits.get(_key(model))
        if circuit is None:
            circuit = self._circuits[_key(model)] = Circuit()
        return circuit

    def admit(self, model) -> bool:
        """May a request go to ``model`` now? A half-open circuit admits one probe at a time."""
        circuit = self._circuits.get(_key(model))
        if circuit is None or circuit.state == CLOSED:
            return True
        if circuit.state == OPEN:
            if self._clock() < circuit.retry_at:
                return False
            circuit.state = HALF_OPEN
            circuit.probing = True
            self._changed(model, circuit)
            return True
        if circuit.probing:
            return False
        circuit.probing = True
        return True

    def succeeded(self, model) -> None:
        circuit = self._circuits.get(_key(model))
        if circuit is None or (circuit.state == CLOSED and circuit.failures == 0):
            return
        was = circuit.state
        circuit.state, circuit.failures, circuit.probing = CLOSED, 0, False
        if was != CLOSED:
            self._changed(model, circuit)

    def failed(self, model, reason: str) -> None:
        """``model``'s provider failed it (an outage: never a 4xx)."""
        circuit = self.circuit(model)
        circuit.failures += 1
        circuit.last_failure = reason[:500]
        if circuit.state == HALF_OPEN or (circuit.state == CLOSED and circuit.failures >= self.threshold):
            circuit.state, circuit.probing = OPEN, False
            circuit.retry_at = self._clock() + self.cooldown
            self._changed(model, circuit)

    def released(self, model) -> None:
        """A probe ended with no verdict (the client left, the request was cancelled, the
        provider answered a 429 or refused our credential)."""
        circuit = self._circuits.get(_key(model))
        if circuit is not None and circuit.state == HALF_OPEN:
            circuit.probing = False

    def is_open(self, model) -> bool:
        circuit = self._circuits.get(_key(model))
        return circuit is not None and circuit.state == OPEN

    def tripped(self, snapshot) -> dict[tuple[str, str], bool]:
        """(provider name, model name) -> whether its circuit (or one of its deployments' on that
        provider) is open or probing, for the models of the snapshot seen so far."""
        names = {}
        for m in snapshot.models.values() if snapshot else ():
            for served in (m, *getattr(m, "deployments", ())):
                names[_key(served)] = (served.provider.name, m.name)
        tripped: dict[tuple[str, str], bool] = {}
        for key, circuit in self._circuits.items():
            if key in names:
                tripped[names[key]] = tripped.get(names[key], False) or circuit.state != CLOSED
        return tripped

    def retry_in(self, models) -> float:
        """Seconds until the first of ``models`` will admit a probe (0 if one admits now)."""
        now = self._clock()
        waits = [max(self.circuit(m).retry_at - now, 0.0) for m in models]
        return min(waits, default=0.0)

    def _changed(self, model, circuit: Circuit) -> None:
        self.reported = True
        if self.on_change is not None:
            self.on_change(model, circuit)
