"""Upstream faults, one by one: each ends in a fallback or a clear OpenAI-style error (an error
event once a stream has started), the request's row says what happened, the provider's circuit
breaker counts it, and no upstream call, connection or task is left behind."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest

from tests.gateway.conftest import World, gateway_start, gateway_stop, request_logs, usage_quiet, wait_until
from tests.live import free_port

# The flaky providers' timeout: long enough for a loaded machine's healthy answer, short enough
# for the tests that wait it out; a slow fault answers well after it.
TIMEOUT = 2.0
SLOW = 2 * TIMEOUT
# An open circuit's cooldown: requests meant to meet the open circuit must reach it within this,
# however slow the machine; the tests that wait for it to pass wait this long.
COOLDOWN = 5.0
FAULTS = {
    # name: (simulator fault, status without a fallback, error code without one)
    "status_500": ({"mode": "status", "status": 500}, 502, "upstream_error"),
    "status_429": ({"mode": "status", "status": 429, "retry_after": 0.2}, 429, "upstream_rate_limited"),
    "refused": (None, 502, "upstream_error"),
    "slow_first_byte": ({"mode": "slow", "delay": SLOW}, 504, "upstream_timeout"),
    "stall": ({"mode": "stall"}, 504, "upstream_timeout"),
    "cut": ({"mode": "cut"}, 502, "upstream_error"),
    "invalid_json": ({"mode": "invalid_json"}, 502, "upstream_error"),
    "garbage": ({"mode": "garbage"}, 502, "upstream_error"),
}
# What the row's upstream_failures says of each fault, for a JSON request and for a stream.
REASONS = {
    "status_500": ("status 500", "status 500"),
    "status_429": ("status 429", "status 429"),
    "refused": ("connection: UpstreamConnectError", "connection: UpstreamConnectError"),
    "slow_first_byte": ("timeout", "timeout before the first byte"),
    "stall": ("timeout", "The upstream stream failed mid-way (ReadTimeout)"),
    "cut": ("connection: UpstreamDisconnected", "The upstream stream"),
    "invalid_json": ("invalid JSON from upstream", "invalid JSON in the stream"),
    "garbage": ("invalid JSON from upstream", "stream is not server-sent events"),
}
# Faults that strike after a stream's first byte: no fallback is possible any more.
MID_STREAM = {"stall": (504, "upstream_timeout"), "cut": (502, "upstream_stream_cut")}


@pytest.fixture(scope="module")
def fault_gateway(django_db_setup, django_db_blocker, tmp_path_factory):
    gateway = gateway_start(tmp_path_factory.mktemp("faults"),
                            extra_env={"CIRCUIT_FAILURES": "3", "CIRCUIT_COOLDOWN": str(COOLDOWN)})
    gateway.idle_tasks = _metric(gateway, "switchyard_event_loop_tasks")
    yield gateway
    gateway_stop(gateway)


class FaultWorld:
    """Beside the usual world: a provider ``flaky`` (model ``flaky``, falling back to ``steady`` on
    another provider, and ``lonely`` with no fallback), and a provider nobody listens on."""

    def __init__(self, world: World) -> None:
        from apps.catalog.models import Model, Provider
        from apps.routing.models import RoutingFallback, RoutingRule

        self.world = world
        closed = f"http://127.0.0.1:{free_port()}/v1"
        flaky = Provider.objects.create(name="flaky", kind=Provider.Kind.SIMULATED,
                                        base_url=world.simulator.v1, timeout_seconds=TIMEOUT)
        steady = Provider.objects.create(name="steady", kind=Provider.Kind.SIMULATED,
                                         base_url=world.simulator.v1, timeout_seconds=5)
        gone = Provider.objects.create(name="gone", kind=Provider.Kind.OPENAI, base_url=closed,
                                       timeout_seconds=TIMEOUT)
        self.providers = {"flaky": flaky, "steady": steady, "gone": gone}

        def model(name: str, upstream: str, provider) -> Model:
            return Model.objects.create(name=name, upstream_id=upstream, provider=provider, max_output_tokens=4096,
                                        input_price_per_million=Decimal("1"), output_price_per_million=Decimal("2"))

        target = model("steady", "sim-premium", steady)
        for name, upstream, provider in (("flaky", "sim-mini", flaky), ("lonely", "sim-standard", flaky),
                                         ("gone", "sim-mini", gone), ("gone-alone", "sim-mini", gone)):
            created = model(name, upstream, provider)
            if name in ("flaky", "gone"):
                rule = RoutingRule.objects.create(name=f"{name} with a fallback", match_model=name, target=created,
                                                  priority=1)
                RoutingFallback.objects.create(rule=rule, model=target, position=0)

    def model_for(self, fault: str, *, fallback: bool) -> tuple[str, str]:
        """The model to ask for and the upstream id the fault must hit."""
        if fault == "refused":
            return ("gone" if fallback else "gone-alone"), "sim-mini"
        return ("flaky", "sim-mini") if fallback else ("lonely", "sim-standard")


@pytest.fixture
def faults(transactional_db, simulator, fault_gateway):
    world = World(simulator)
    world.gateway = fault_gateway
    world.simulator = simulator
    fault_world = FaultWorld(world)

    def sees_models() -> bool:
        response = httpx.get(fault_gateway.v1 + "/models", headers={"Authorization": f"Bearer {world.key_a}"})
        return response.status_code == 200 and {"flaky", "gone-alone"} <= {m["id"] for m in response.json()["data"]}

    assert wait_until(sees_models), "the gateway never saw the fault catalog"
    yield fault_world
    usage_quiet()


def _metric(gateway, name: str) -> float:
    text = httpx.get(gateway.base + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _nothing_left_behind(faults: FaultWorld) -> None:
    """Every upstream call released its slot and connection; the simulator holds no request."""
    gateway, simulator = faults.world.gateway, faults.world.simulator
    assert wait_until(lambda: _metric(gateway, "switchyard_upstream_in_flight") == 0), \
        "an upstream call still holds its slot"
    assert wait_until(lambda: simulator.stats()["in_flight"] == 0), \
        "the simulator still serves a request the gateway gave up"


def _post(faults: FaultWorld, model: str, *, stream: bool, prompt: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    headers = {"Authorization": f"Bearer {faults.world.key_a}", "Cache-Control": "no-store"}
    with httpx.Client(timeout=30) as client:
        response = client.post(faults.world.gateway.v1 + "/chat/completions", json=body, headers=headers)
    return response


def _inject(faults: FaultWorld, fault: str, upstream: str) -> None:
    spec = FAULTS[fault][0]
    if spec is not None:
        faults.world.simulator.fault(model=upstream, count=-1, **spec)


def _last_event(response: httpx.Response) -> str:
    return [line for line in response.text.splitlines() if line.startswith("data: ")][-1]


def _row(faults: FaultWorld):
    (row,) = request_logs(1, tenant=faults.world.tenant_a)
    return row


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_it_falls_back_or_reports_each_fault(faults, fault, stream):
    name, upstream = faults.model_for(fault, fallback=True)
    _inject(faults, fault, upstream)
    response = _post(faults, name, stream=stream, prompt=f"fallback on {fault}")
    row = _row(faults)
    if stream and fault in MID_STREAM:
        # The first bytes came from the faulty provider: the stream ends with an error event.
        status, code = MID_STREAM[fault]
        assert response.status_code == 200
        assert response.headers["x-switchyard-model"] == name
        assert "data: [DONE]" not in response.text
        last = _last_event(response)
        assert f'"code":"{code}"' in last and '"error"' in last
        assert (row.status_code, row.error_code, row.model_used) == (status, code, name)
        assert row.output_tokens > 0, "what was streamed is billed"
    else:
        assert response.status_code == 200, response.text
        assert response.headers["x-switchyard-model"] == "steady"
        if stream:
            assert response.text.rstrip().endswith("data: [DONE]")
            assert "this is not" not in response.text, "the faulty provider's bytes reached the client"
        else:
            assert response.json()["choices"][0]["message"]["content"]
        assert (row.status_code, row.error_code, row.model_used) == (200, "", "steady")
        assert row.cost > 0
    assert row.upstream_failures.startswith(f"{name}: ")
    assert REASONS[fault][stream] in row.upstream_failures
    _nothing_left_behind(faults)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_it_answers_each_fault_without_a_fallback_with_a_clear_error(faults, fault, stream):
    name, upstream = faults.model_for(fault, fallback=False)
    _inject(faults, fault, upstream)
    response = _post(faults, name, stream=stream, prompt=f"no fallback on {fault}")
    row = _row(faults)
    if stream and fault in MID_STREAM:
        status, code = MID_STREAM[fault]
        assert response.status_code == 200
        assert f'"code":"{code}"' in _last_event(response)
    else:
        _, status, code = FAULTS[fault]
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code and error["message"]
        assert set(error) == {"message", "type", "param", "code"}
        if status == 429:
            assert response.headers["retry-after"]
    assert (row.status_code, row.error_code) == (status, code)
    assert row.upstream_failures.startswith(f"{name}: ")
    assert REASONS[fault][stream] in row.upstream_failures
    _nothing_left_behind(faults)


def _circuit(provider):
    from apps.catalog.models import ProviderCircuit

    return ProviderCircuit.objects.filter(provider=provider).first()


def test_it_opens_the_circuit_of_a_failing_provider_then_probes_it_back(faults, admin_client):
    sim = faults.world.simulator
    sim.fault(model="sim-standard", mode="status", status=500, count=-1)
    first = _post(faults, "lonely", stream=False, prompt="one")
    second = _post(faults, "lonely", stream=False, prompt="two")
    assert (first.status_code, second.status_code) == (502, 502)
    tried = sim.stats()["by_model"].get("sim-standard", 0)
    assert tried == 3, "the third failure in a row opens the circuit: no retry after it"

    refused = _post(faults, "lonely", stream=True, prompt="three")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "upstream_unavailable"
    assert 1 <= int(refused.headers["retry-after"]) <= COOLDOWN + 1
    assert sim.stats()["by_model"].get("sim-standard", 0) == tried, "an open circuit sends nothing"
    circuit = wait_until(lambda: _circuit(faults.providers["flaky"]))
    assert circuit is not None and circuit.state == "open"
    assert "status 500" in circuit.last_failure and circuit.retry_at is not None
    page = admin_client.get("/admin/catalog/provider/").content.decode()
    assert "open in 1 of 1 processes" in page
    assert _metric(faults.world.gateway, 'switchyard_circuit_open{provider="flaky"}') == 1

    time.sleep(COOLDOWN + 0.1)  # the cooldown (a minimum): the next request is a probe, and it fails again
    assert _post(faults, "lonely", stream=False, prompt="probe fails").status_code == 502
    assert sim.stats()["by_model"]["sim-standard"] == tried + 1, "one probe, no retry"
    assert _post(faults, "lonely", stream=False, prompt="still open").status_code == 503

    sim.reset()
    time.sleep(COOLDOWN + 0.1)
    answered = _post(faults, "lonely", stream=False, prompt="probe answers")
    assert answered.status_code == 200
    assert wait_until(lambda: _circuit(faults.providers["flaky"]).state == "closed")
    assert _post(faults, "lonely", stream=False, prompt="closed again").status_code == 200
    page = admin_client.get(f"/admin/catalog/provider/{faults.providers['flaky'].pk}/change/").content.decode()
    assert "Circuit breakers" in page and "<td>closed</td>" in page
    rows = request_logs(7, tenant=faults.world.tenant_a)
    assert [r.status_code for r in rows] == [502, 502, 503, 502, 503, 200, 200]
    assert "circuit open" in rows[2].upstream_failures
    _nothing_left_behind(faults)


def test_it_skips_an_open_provider_for_its_fallback_without_waiting(faults):
    sim = faults.world.simulator
    sim.fault(model="sim-mini", mode="slow", delay=SLOW, count=-1)
    for n in range(2):  # two requests, two timed-out attempts each: the circuit opens
        assert _post(faults, "flaky", stream=False, prompt=f"slow {n}").status_code == 200
    # Skipped without waiting for a timeout: no attempt reaches the open provider (the count below).
    response = _post(faults, "flaky", stream=True, prompt="straight to the fallback")
    assert response.status_code == 200 and response.headers["x-switchyard-model"] == "steady"
    rows = request_logs(3, tenant=faults.world.tenant_a)
    assert rows[-1].upstream_failures == "flaky: circuit open"
    assert sim.stats()["by_model"]["sim-mini"] == 3
    _nothing_left_behind(faults)


def test_it_keeps_one_tenants_fault_rows_from_another(faults):
    faults.world.simulator.fault(model="sim-mini", mode="status", status=500, count=-1)
    _post(faults, "flaky", stream=False, prompt="tenant a's failure")
    from apps.usage.models import RequestLog

    row = _row(faults)
    assert "flaky: status 500" in row.upstream_failures
    assert not RequestLog.objects.filter(tenant=faults.world.tenant_b).exists()
    usage = httpx.get(faults.world.gateway.v1 + "/usage", headers={"Authorization": f"Bearer {faults.world.key_b}"})
    assert usage.status_code == 200
    assert "flaky" not in usage.text


def test_it_has_no_more_tasks_on_its_loop_after_the_faults_than_before(faults):
    """Run last in this module: every fault above has come and gone."""
    gateway = faults.world.gateway
    assert wait_until(lambda: _metric(gateway, "switchyard_event_loop_tasks") <= gateway.idle_tasks + 1), \
        (_metric(gateway, "switchyard_event_loop_tasks"), gateway.idle_tasks)


def test_it_bills_a_whole_stream_whole_when_the_provider_lingers_after_its_end(faults):
    # The provider sends everything through its end marker, then neither ends the response nor
    # closes the connection until our read timeout: nothing was lost, so nothing failed.
    faults.world.simulator.fault(model="sim-standard", mode="linger", count=-1)
    chat = _post(faults, "lonely", stream=True, prompt="linger after done")
    assert chat.status_code == 200
    assert chat.text.rstrip().endswith("data: [DONE]"), chat.text[-300:]
    assert '"error"' not in chat.text
    row = _row(faults)
    assert (row.status_code, row.error_code, row.model_used) == (200, "", "lonely")
    assert row.output_tokens > 0 and row.cost > 0
    from apps.usage.models import RequestLog

    RequestLog.objects.all().delete()
    headers = {"x-api-key": faults.world.key_a, "anthropic-version": "2023-06-01", "Cache-Control": "no-store"}
    with httpx.Client(timeout=30) as client:
        message = client.post(faults.world.gateway.v1 + "/messages", headers=headers, json={
            "model": "lonely", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "linger after the translated end"}]})
    assert message.status_code == 200
    assert message.text.rstrip().endswith('data: {"type":"message_stop"}'), message.text[-300:]
    assert "event: error" not in message.text
    row = _row(faults)
    assert (row.status_code, row.error_code) == (200, "")
    assert row.output_tokens > 0
    _nothing_left_behind(faults)
