"""Deployment pools: which of a model's deployments a request tries, and in what order.

A model with deployments (``ModelInfo.deployments``) is expanded, where the chain is tried, into
its deployments in the order its strategy gives; a model without any stays itself, untouched.

    weighted        random, each deployment in proportion to its weight
    least_busy      fewest requests in flight (JSON calls and open streams)
    lowest_latency  lowest moving average of the time to the first byte (a stream) or to the
                    whole answer (JSON)
    most_headroom   the largest share of its rate limits left: the provider's own
                    ``x-ratelimit-remaining-requests/-tokens`` headers (refilling at the limit's
                    pace since seen), and the deployment's RPM against the requests sent to it
                    this minute

Ties, under every strategy, are broken at random by weight. Whatever the strategy:

- a deployment that answered 429 cools down for its ``Retry-After`` (or ``POOL_COOLDOWN``)
  and is left out until then: the request moves to the model's next deployment at once
  (no retry on the one that refused), then to the chain's next model;
- a deployment that has had its RPM of requests this minute goes after the others.

:class:`Pools` holds this process's view, with no I/O and an injected clock (wall time, since
cooldowns are shared). With Redis, :mod:`apps.providers.pool_sync` exchanges it with every other
gateway process a few times a second, off the request path; without Redis it is the whole truth.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

WEIGHTED, LEAST_BUSY, LOWEST_LATENCY, MOST_HEADROOM = "weighted", "least_busy", "lowest_latency", "most_headroom"
STRATEGIES = (WEIGHTED, LEAST_BUSY, LOWEST_LATENCY, MOST_HEADROOM)
HEADERS_FRESH = 60.0  # seconds a provider's x-ratelimit-remaining-* headers are believed


@dataclass(slots=True)
class DeploymentState:
    """One deployment as this process sees it."""

    in_flight: int = 0  # this process's requests to it now
    others_in_flight: int = 0  # every other process's, as of the last exchange
    cooling_until: float = 0.0  # wall time (seconds) before which it is left out
    cooled_pushed: float = 0.0  # the cooldown last sent to the other processes
    latency_ms: float | None = None  # moving average
    latency_count: int = 0  # samples not yet sent to the other processes
    latency_sum: float = 0.0
    minute: int = 0  # the minute ``sent``, ``sent_shared`` and ``sent_unpushed`` count in
    sent: int = 0  # requests sent this minute, every process's as of the last exchange plus ours since
    sent_unpushed: int = 0
    remaining_requests: int | None = None  # the provider's headers, as last seen
    remaining_tokens: int | None = None
    requests_peak: int = 0  # the highest remaining-requests seen: the limit when no RPM is set
    tokens_peak: int = 0
    headers_at: float = 0.0  # wall time the headers were seen
    headers_pushed: bool = True
    sent_since_headers: int = 0


class Pools:
    """Every deployment's state in this process, by deployment id; each method takes a model
    or deployment as the snapshot has it (``apps.gateway.snapshot.ModelInfo``)."""

    def __init__(self, *, cooldown: float = 60.0, alpha: float = 0.2, clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random) -> None:
        self.cooldown = cooldown
        self.alpha = alpha  # weight of a new latency sample in the moving average
        self._clock = clock
        self._rng = rng
        self.states: dict[int, DeploymentState] = {}
        self.on_cool: Callable[[], None] | None = None  # a cooldown to share now (pool_sync wakes up)

    def state(self, deployment) -> DeploymentState:
        state = self.states.get(deployment.deployment_id)
        if state is None:
            state = self.states[deployment.deployment_id] = DeploymentState()
        return state

    # --- the order ---------------------------------------------------------------------------
    def expand(self, chain: Iterable) -> tuple:
        """The chain with each pooled model replaced by its deployments that are not cooling
        down, in its strategy's order (a model with none left contributes nothing)."""
        out = []
        for model in chain:
            if model.deployments:
                out.extend(self.order(model))
            else:
                out.append(model)
        return tuple(out)

    def order(self, model) -> list:
        """``model``'s deployments to try, best first; those cooling down are left out."""
        now = self._clock()
        minute = int(now // 60)
        rng = self._rng
        strategy = model.strategy
        ranked = []
        for deployment in model.deployments:
            state = self.states.get(deployment.deployment_id)
            if state is None:
                state = self.state(deployment)
            elif state.cooling_until > now:
                continue
            # Random by weight (Efraimidis-Spirakis): the weighted strategy's whole order, and the
            # others' tie-break. A larger key goes first.
            tie = rng() ** (1.0 / deployment.weight)
            full = deployment.rpm is not None and state.minute == minute and state.sent >= deployment.rpm
            if strategy == LEAST_BUSY:
                score = -(state.in_flight + state.others_in_flight)
            elif strategy == LOWEST_LATENCY:
                # Never measured: tried first, so that it gets a figure.
                score = -(state.latency_ms or 0.0)
            elif strategy == MOST_HEADROOM:
                score = self.headroom(deployment, state, now)
            else:
                score = 0.0
            ranked.append((not full, score, tie, deployment))
        ranked.sort(key=_rank, reverse=True)
        return [entry[3] for entry in ranked]

    def headroom(self, deployment, state: DeploymentState, now: float) -> float:
        """The share (0 to 1) of the deployment's tightest rate limit left: requests by its RPM
        and by the provider's remaining-requests header, tokens by the remaining-tokens header
        (against its TPM, else the highest value the header has shown). 1 when nothing is known.

        A header's figure is taken to refill at the limit's pace since it was seen (a full
        limit a minute), so that a deployment left alone after a busy minute is not judged by
        its last, stale figure for long."""
        shares = []
        minute = int(now // 60)
        if deployment.rpm:
            used = state.sent if state.minute == minute else 0
            shares.append((deployment.rpm - used) / deployment.rpm)
        age = now - state.headers_at
        if age < HEADERS_FRESH:
            if state.remaining_requests is not None:
                limit = deployment.rpm or state.requests_peak
                if limit:
                    left = state.remaining_requests - state.sent_since_headers + limit * age / 60
                    shares.append(min(left, limit) / limit)
            if state.remaining_tokens is not None:
                limit = deployment.tpm or state.tokens_peak
                if limit:
                    shares.append(min(state.remaining_tokens + limit * age / 60, limit) / limit)
        return min(shares) if shares else 1.0

    def retry_in(self, chain: Iterable) -> float:
        """Seconds until the first deployment of ``chain``'s pooled models stops cooling down."""
        now = self._clock()
        ends = [self.state(d).cooling_until - now for m in chain for d in m.deployments]
        return max(min(ends, default=0.0), 0.0)

    # --- what happens to a request -------------------------------------------------------------
    def sent(self, deployment) -> None:
        """A request goes to ``deployment`` now."""
        state = self.state(deployment)
        state.in_flight += 1
        minute = int(self._clock() // 60)
        if state.minute != minute:
            state.minute, state.sent = minute, 0
        state.sent += 1
        state.sent_unpushed += 1
        state.sent_since_headers += 1

    def done(self, deployment) -> None:
        """A request to ``deployment`` is over (a JSON answer read, a stream closed, a failure)."""
        state = self.state(deployment)
        state.in_flight = max(state.in_flight - 1, 0)

    def measured(self, deployment, latency_ms: float) -> None:
        """``deployment`` answered in ``latency_ms``: its first byte (a stream) or the whole
        answer (JSON)."""
        state = self.state(deployment)
        state.latency_ms = latency_ms if state.latency_ms is None else (
            state.latency_ms + self.alpha * (latency_ms - state.latency_ms))
        state.latency_count += 1
        state.latency_sum += latency_ms

    def cool(self, deployment, retry_after: float | None) -> None:
        """``deployment`` answered 429: leave it out for ``retry_after`` seconds (or the default)."""
        seconds = retry_after if retry_after is not None and retry_after > 0 else self.cooldown
        state = self.state(deployment)
        state.cooling_until = max(state.cooling_until, self._clock() + seconds)
        if self.on_cool is not None:
            self.on_cool()

    def headers_seen(self, deployment, headers: Mapping[str, str]) -> None:
        """The provider's ``x-ratelimit-remaining-requests`` / ``-tokens`` on an answer."""
        requests = _int(headers.get("x-ratelimit-remaining-requests"))
        tokens = _int(headers.get("x-ratelimit-remaining-tokens"))
        if requests is None and tokens is None:
            return
        state = self.state(deployment)
        state.remaining_requests, state.remaining_tokens = requests, tokens
        state.requests_peak = max(state.requests_peak, requests or 0)
        state.tokens_peak = max(state.tokens_peak, tokens or 0)
        state.headers_at = self._clock()
        state.headers_pushed = False
        state.sent_since_headers = 0

    def cooling(self, deployment) -> float:
        """Seconds ``deployment`` still cools down for (0: it does not)."""
        return max(self.state(deployment).cooling_until - self._clock(), 0.0)


def _rank(entry: tuple) -> tuple:
    return entry[0], entry[1], entry[2]


def _int(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None
