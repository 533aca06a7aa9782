"""Live servers for gateway tests: the simulated upstream and Switchyard itself, each a real
process on a real port, with the gateway on the test database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.live import (
    DEADLINE,
    REPO,
    Simulator,
    database_url_for_tests,
    free_port,
    http_json,
    stop_process,
    wait_http,
    wait_until,
)

__all__ = ["REPO", "Simulator", "database_url_for_tests", "free_port", "http_json", "stop_process", "wait_http",
           "wait_until"]


class GatewayProcess:
    def __init__(self, proc: subprocess.Popen, base: str, log_path: Path) -> None:
        self.proc = proc
        self.base = base
        self.log_path = log_path

    @property
    def v1(self) -> str:
        return self.base + "/v1"


def gateway_start(tmp_dir: Path, *, extra_env: dict | None = None, grace: int = 10) -> GatewayProcess:
    """Start ``uvicorn config.asgi:application`` on the test database, sending Celery tasks to
    the broker the tests' workers listen on; ``grace``: seconds in-flight requests get after SIGTERM."""
    from django.conf import settings

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_tests(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        # Frequent flushes: each test waits for the last rows to be written (usage_quiet).
        "USAGE_FLUSH_INTERVAL": "0.05",
        "GATEWAY_RETRY_BACKOFF": "0.01",
        # One gateway serves many tests, some of which make every upstream fail on purpose: its
        # breakers must not carry one test's outage into the next (tests/gateway/test_faults.py
        # starts its own gateway with a low threshold).
        "CIRCUIT_FAILURES": "1000",
        # No timed reload: a change reaches the gateway by its message alone, so a test that
        # sees the change proves the message path, not a timer.
        "GATEWAY_CONFIG_REFRESH": "3600",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    log_path = tmp_dir / f"gateway-{port}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--timeout-graceful-shutdown", str(grace)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", proc=proc)
    except RuntimeError:
        stop_process(proc)  # a gateway left running would hold the test database
        raise
    return GatewayProcess(proc, base, log_path)


def gateway_stop(gateway: GatewayProcess) -> None:
    stop_process(gateway.proc, timeout=20)


@pytest.fixture(scope="session")
def gateway_process(django_db_setup, django_db_blocker, tmp_path_factory):
    gateway = gateway_start(tmp_path_factory.mktemp("gateway"))
    yield gateway
    gateway_stop(gateway)


class World:
    """Two tenants, their keys, a simulated provider with three chat models and an embedding
    model, and global rules routing ``auto`` by complexity, all committed to the database."""

    def __init__(self, simulator: Simulator) -> None:
        from django.db import transaction

        # One transaction: one commit instead of dozens, and every gateway reloads its config only
        # once it can read the whole world (each write's change message is sent on commit, or is
        # a NOTIFY delivered at commit).
        with transaction.atomic():
            self._build(simulator)

    def _build(self, simulator: Simulator) -> None:
        from apps.catalog.models import Model, Provider
        from apps.core.demo import DEFAULT_INDICATORS
        from apps.routing.models import ComplexityIndicator, RoutingFallback, RoutingRule
        from apps.tenants.services import key_create, tenant_create

        self.tenant_a = tenant_create(name="Acme", slug="acme")
        self.tenant_b = tenant_create(name="Globex", slug="globex")
        self.key_a = key_create(tenant=self.tenant_a, name="a").secret
        self.key_b = key_create(tenant=self.tenant_b, name="b").secret
        self.provider = Provider.objects.create(name="sim", kind=Provider.Kind.SIMULATED, base_url=simulator.v1,
                                                timeout_seconds=5.0)
        prices = {
            "sim-mini": ("0.15", "0.075", "0.60", Model.Tier.SIMPLE),
            "sim-standard": ("2.50", "1.25", "10.00", Model.Tier.MODERATE),
            "sim-premium": ("15.00", "7.50", "60.00", Model.Tier.COMPLEX),
        }
        self.models = {}
        for name, (inp, cached, out, tier) in prices.items():
            self.models[name] = Model.objects.create(
                name=name, upstream_id=name, provider=self.provider, tier=tier,
                input_price_per_million=Decimal(inp), cached_input_price_per_million=Decimal(cached),
                output_price_per_million=Decimal(out), max_output_tokens=4096,
            )
        self.models["sim-embed"] = Model.objects.create(
            name="sim-embed", upstream_id="sim-embed", provider=self.provider, mode=Model.Mode.EMBEDDING,
            input_price_per_million=Decimal("0.02"),
        )
        for tier, target, fallback, priority in (
            ("simple", "sim-mini", "sim-standard", 10),
            ("moderate", "sim-standard", "sim-premium", 20),
            ("complex", "sim-premium", "sim-standard", 30),
        ):
            rule = RoutingRule.objects.create(name=f"auto {tier}", match_model="auto", match_tier=tier,
                                              target=self.models[target], priority=priority)
            RoutingFallback.objects.create(rule=rule, model=self.models[fallback], position=0)
        # One INSERT for the classifier's phrases (a bulk insert sends no change message of its
        # own; the writes above send theirs at the same commit).
        ComplexityIndicator.objects.bulk_create(
            [ComplexityIndicator(phrase=phrase, tier=tier) for tier, phrases in DEFAULT_INDICATORS.items()
             for phrase in phrases], ignore_conflicts=True)


@pytest.fixture
def world(transactional_db, simulator, gateway_process):
    world = World(simulator)
    world.gateway = gateway_process
    world.simulator = simulator

    def sees_everything() -> bool:
        status, body = http_json("GET", gateway_process.v1 + "/models",
                                 headers={"Authorization": f"Bearer {world.key_a}"})
        return status == 200 and {"sim-mini", "sim-premium", "sim-embed"} <= {m["id"] for m in body["data"]}

    assert wait_until(sees_everything), "the gateway never saw the test catalog"
    yield world
    usage_quiet()


def usage_quiet(*, settle: float = 0.25, timeout: float = 10.0) -> None:
    """Wait until no gateway is still writing usage rows.

    The test database is truncated after each test; a gateway's flush (a COPY that takes locks
    on the referenced tables) racing that TRUNCATE can deadlock it. Rows stop arriving once
    every answered request is flushed, a few flush intervals after the last request (``settle`` is
    five of the test gateways' intervals).
    """
    from apps.usage.models import RequestLog

    deadline = time.monotonic() + timeout
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = RequestLog.objects.count()
        if count != last:
            last, stable_since = count, time.monotonic()
        elif time.monotonic() - stable_since >= settle:
            return
        time.sleep(0.05)


def request_logs(expected: int, *, timeout: float = DEADLINE, **filters):
    """RequestLog rows matching ``filters`` once ``expected`` of them have been flushed."""
    from apps.usage.models import RequestLog

    wait_until(lambda: RequestLog.objects.filter(**filters).count() >= expected, timeout=timeout)
    return list(RequestLog.objects.filter(**filters).order_by("created_at"))


def cache_stats(world, key) -> dict:
    import httpx

    return httpx.get(world.gateway.v1 + "/cache/stats", headers={"Authorization": f"Bearer {key}"}).json()


@pytest.fixture
def semantic(world):
    """The world, once the gateway's embedding model has loaded (semantic lookups run)."""
    assert wait_until(lambda: cache_stats(world, world.key_a).get("semantic_ready"), timeout=120, interval=0.5), \
        "the embedding model never loaded"
    return world
