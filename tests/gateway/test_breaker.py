"""The circuit breaker's state machine, on a clock the test moves."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from apps.core.errors import RateLimited, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from apps.providers.breaker import CLOSED, HALF_OPEN, OPEN, Breakers
from apps.providers.transport import UpstreamClientError, UpstreamFailure, with_fallbacks


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def provider(pid: int = 1):
    return SimpleNamespace(id=pid, name=f"p{pid}")


def _model(name: str, pid: int, mid: int | None = None):
    """A model of provider ``pid`` (its id ``mid``, else the provider's)."""
    return SimpleNamespace(id=mid or pid, name=name, provider=provider(pid))


def breakers(clock, changes=None) -> Breakers:
    return Breakers(threshold=3, cooldown=10, clock=clock,
                    on_change=(lambda p, c: changes.append((p.id, c.state))) if changes is not None else None)


def test_it_opens_after_the_threshold_of_failures_in_a_row():
    clock, changes = Clock(), []
    b, p = breakers(clock, changes), _model("m", 1)
    b.failed(p, "status 500")
    b.failed(p, "status 500")
    b.succeeded(p)  # a success in between starts the count again
    b.failed(p, "status 500")
    b.failed(p, "status 500")
    assert b.admit(p) and changes == []
    b.failed(p, "timeout")
    assert changes == [(1, OPEN)]
    assert not b.admit(p)
    assert b.retry_in([p]) == 10
    assert b.circuit(p).last_failure == "timeout"


def test_it_admits_one_probe_after_the_cooldown_and_closes_when_it_answers():
    clock, changes = Clock(), []
    b, p = breakers(clock, changes), _model("m", 1)
    for _ in range(3):
        b.failed(p, "status 503")
    clock.now += 9.9
    assert not b.admit(p)
    clock.now += 0.2
    assert b.admit(p), "the probe"
    assert not b.admit(p), "only one probe at a time"
    b.succeeded(p)
    assert b.circuit(p).state == CLOSED and b.admit(p)
    assert changes == [(1, OPEN), (1, HALF_OPEN), (1, CLOSED)]


def test_it_reopens_when_the_probe_fails_and_lets_another_probe_when_one_is_abandoned():
    clock = Clock()
    b, p = breakers(clock), _model("m", 1)
    for _ in range(3):
        b.failed(p, "status 500")
    clock.now += 10
    assert b.admit(p)
    b.failed(p, "status 500")
    assert b.circuit(p).state == OPEN and not b.admit(p)
    clock.now += 10
    assert b.admit(p)
    b.released(p)  # the client left before the probe had an answer
    assert b.admit(p), "a new probe may go"


def test_it_keeps_providers_apart():
    b = breakers(Clock())
    down, up = _model("down", 1), _model("up", 2)
    for _ in range(3):
        b.failed(down, "status 500")
    assert not b.admit(down) and b.admit(up)


def test_it_skips_an_open_provider_in_the_chain_and_refuses_when_all_are_open():
    clock = Clock()
    b = breakers(clock)
    down, backup = _model("down", 1), _model("backup", 2)
    calls = []

    async def call(model):
        calls.append(model.name)
        if model is down:
            raise UpstreamFailure("status 500", status=500)
        return "answer"

    async def run(chain):
        failures: list[str] = []
        result = await with_fallbacks(chain, call, retries=1, backoff=0, breakers=b, failures=failures)
        return result, failures

    (model, answer, _), failures = asyncio.run(run((down, backup)))
    assert (model.name, answer, failures) == ("backup", "answer", ["down: status 500", "down: status 500"])
    (_, _, _), failures = asyncio.run(run((down, backup)))
    assert failures == ["down: status 500"], "the third failure opens the circuit: no retry after it"
    calls.clear()
    (model, _, _), failures = asyncio.run(run((down, backup)))
    assert calls == ["backup"] and failures == ["down: circuit open"]
    with pytest.raises(UpstreamUnavailable) as caught:
        asyncio.run(run((down,)))
    assert caught.value.headers["Retry-After"] == "10"


def test_it_counts_neither_rate_limits_nor_client_errors_as_provider_failures():
    b = breakers(Clock())
    limited, refused = _model("limited", 1), _model("refused", 2)

    async def call(model):
        if model is limited:
            raise UpstreamFailure("status 429", status=429, retry_after=0)
        raise UpstreamClientError(400, b"{}", "application/json")

    for _ in range(5):
        with pytest.raises(RateLimited):
            asyncio.run(with_fallbacks((limited,), call, retries=0, backoff=0, breakers=b))
        with pytest.raises(UpstreamClientError):
            asyncio.run(with_fallbacks((refused,), call, retries=0, backoff=0, breakers=b))
    assert b.admit(limited) and b.admit(refused)


def test_it_keeps_the_models_of_one_provider_apart():
    b = breakers(Clock())
    down, up = _model("down", 1, mid=10), _model("up", 1, mid=11)
    for _ in range(3):
        b.failed(down, "status 500")
    assert not b.admit(down) and b.admit(up)
    assert b.tripped(SimpleNamespace(models={"down": down, "up": up})) == {("p1", "down"): True}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 429])
def test_it_never_counts_a_4xx_against_the_circuit(status):
    b = breakers(Clock())
    model = _model("m", 1)

    async def call(model):
        if status in (401, 403, 409, 429):  # failures the chain falls back on
            raise UpstreamFailure(f"status {status}", status=status, retry_after=0)
        raise UpstreamClientError(status, b"{}", "application/json")

    for _ in range(10):
        with pytest.raises((UpstreamClientError, RateLimited, UpstreamError)):
            asyncio.run(with_fallbacks((model,), call, retries=1, backoff=0, breakers=b))
    assert b.admit(model) and b.circuit(model).failures == 0


@pytest.mark.parametrize("failure", [
    UpstreamFailure("status 500", status=500), UpstreamFailure("status 408", status=408),
    UpstreamFailure("timeout", timeout=True), UpstreamFailure("connection: refused")])
def test_it_counts_the_providers_outages(failure):
    b = breakers(Clock())
    model = _model("m", 1)

    async def call(model):
        raise failure

    with pytest.raises((UpstreamError, UpstreamTimeout)):
        asyncio.run(with_fallbacks((model,), call, retries=2, backoff=0, breakers=b))
    assert b.is_open(model)
