"""Live servers for gateway tests: the simulated upstream and Switchyard itself, each a real
process on a real port, with the gateway on the test database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, *, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def http_json(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else {}


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


class Simulator:
    def __init__(self, base: str) -> None:
        self.base = base  # http://127.0.0.1:port

    @property
    def v1(self) -> str:
        return self.base + "/v1"

    def fault(self, **spec) -> None:
        status, body = http_json("POST", self.base + "/_sim/faults", spec)
        assert status == 200, body

    def reset(self) -> None:
        http_json("POST", self.base + "/_sim/reset", {})

    def stats(self) -> dict:
        return http_json("GET", self.base + "/_sim/stats")[1]


@pytest.fixture(scope="session")
def simulator_process():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apps.simulator.server", "--host", "127.0.0.1", "--port", str(port),
         "--ttft-ms", "5", "--chunks", "12"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/v1/models", proc=proc)
    yield Simulator(base)
    stop_process(proc)


@pytest.fixture
def simulator(simulator_process):
    simulator_process.reset()
    yield simulator_process
    simulator_process.reset()


def test_database_url() -> str:
    params = connection.settings_dict
    user = params["USER"] or "postgres"
    auth = user + (f":{params['PASSWORD']}" if params["PASSWORD"] else "")
    host = params["HOST"]
    if host.startswith("/"):
        return f"postgresql://{auth}@/{params['NAME']}?host={host}"
    return f"postgresql://{auth}@{host}:{params['PORT'] or 5432}/{params['NAME']}"


class GatewayProcess:
    def __init__(self, proc: subprocess.Popen, base: str, log_path: Path) -> None:
        self.proc = proc
        self.base = base
        self.log_path = log_path

    @property
    def v1(self) -> str:
        return self.base + "/v1"


def gateway_start(tmp_dir: Path, *, extra_env: dict | None = None) -> GatewayProcess:
    """Start ``uvicorn config.asgi:application`` on the test database."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "USAGE_FLUSH_INTERVAL": "0.2",
        "GATEWAY_RETRY_BACKOFF": "0.01",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    log_path = tmp_dir / f"gateway-{port}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--timeout-graceful-shutdown", "10"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz", proc=proc)
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
        for tier, phrases in DEFAULT_INDICATORS.items():
            for phrase in phrases:
                ComplexityIndicator.objects.get_or_create(phrase=phrase, tier=tier)


def wait_until(predicate, *, timeout: float = 5.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return predicate()


@pytest.fixture
def world(transactional_db, simulator, gateway_process):
    world = World(simulator)
    world.gateway = gateway_process
    world.simulator = simulator

    def sees_everything() -> bool:
        status, body = http_json("GET", gateway_process.v1 + "/models",
                                 headers={"Authorization": f"Bearer {world.key_a}"})
        return status == 200 and {"sim-mini", "sim-premium", "sim-embed"} <= {m["id"] for m in body["data"]}

    assert wait_until(sees_everything, timeout=10), "the gateway never saw the test catalog"
    return world


def request_logs(expected: int, *, timeout: float = 5.0, **filters):
    """RequestLog rows matching ``filters`` once ``expected`` of them have been flushed."""
    from apps.usage.models import RequestLog

    wait_until(lambda: RequestLog.objects.filter(**filters).count() >= expected, timeout=timeout)
    return list(RequestLog.objects.filter(**filters).order_by("created_at"))
