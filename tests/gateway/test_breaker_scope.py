"""What a circuit breaker pauses, through a live gateway and the simulator: one model of one
provider, never the provider's other models, and never on a 4xx whoever causes it.

The gateway here has a long cooldown, so a circuit once open stays open for the whole test
however slow the machine is."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.gateway.conftest import World, gateway_start, gateway_stop, request_logs, usage_quiet, wait_until
from tests.gateway.test_faults import FaultWorld


@pytest.fixture(scope="module")
def patient_gateway(django_db_setup, django_db_blocker, tmp_path_factory):
    gateway = gateway_start(tmp_path_factory.mktemp("breaker-scope"),
                            extra_env={"CIRCUIT_FAILURES": "3", "CIRCUIT_COOLDOWN": "600"})
    yield gateway
    gateway_stop(gateway)


@pytest.fixture
def faults(transactional_db, simulator, patient_gateway):
    world = World(simulator)
    world.gateway = patient_gateway
    world.simulator = simulator
    fault_world = FaultWorld(world)

    def sees_models() -> bool:
        response = httpx.get(patient_gateway.v1 + "/models", headers={"Authorization": f"Bearer {world.key_a}"})
        return response.status_code == 200 and {"flaky", "lonely"} <= {m["id"] for m in response.json()["data"]}

    assert wait_until(sees_models), "the gateway never saw the fault catalog"
    yield fault_world
    usage_quiet()


def _post(faults: FaultWorld, model: str, *, key: str, stream: bool = False, prompt: str = "hello") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-store"}
    with httpx.Client(timeout=60) as client:
        return client.post(faults.world.gateway.v1 + "/chat/completions", json=body, headers=headers)


def _metrics(faults: FaultWorld) -> str:
    return httpx.get(faults.world.gateway.base + "/metrics", timeout=30).text


def test_it_opens_only_the_failing_models_circuit_for_every_tenant(faults):
    """Tenant A's requests break ``lonely`` (provider ``flaky``); tenant B's requests to ``flaky``,
    another model of the same provider, still go to it, with no fallback and no pause."""
    from apps.catalog.models import ProviderCircuit

    world = faults.world
    world.simulator.fault(model="sim-standard", mode="status", status=500, count=-1)
    assert _post(faults, "lonely", key=world.key_a, prompt="one").status_code == 502
    assert _post(faults, "lonely", key=world.key_a, prompt="two").status_code == 502
    paused = _post(faults, "lonely", key=world.key_a, prompt="three")
    assert paused.status_code == 503 and paused.json()["error"]["code"] == "upstream_unavailable"

    for stream in (False, True):
        answer = _post(faults, "flaky", key=world.key_b, stream=stream, prompt=f"other model, stream={stream}")
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-switchyard-model"] == "flaky", "the provider's other model was paused too"
    rows = request_logs(2, tenant=world.tenant_b)
    assert [(r.model_used, r.upstream_failures) for r in rows] == [("flaky", ""), ("flaky", "")]
    circuit = wait_until(lambda: ProviderCircuit.objects.filter(state="open").first())
    assert circuit is not None and (circuit.provider.name, circuit.model.name) == ("flaky", "lonely")

    metrics = _metrics(faults)
    assert 'switchyard_model_circuit_open{model="lonely",provider="flaky"} 1.0' in metrics \
        or 'switchyard_model_circuit_open{provider="flaky",model="lonely"} 1.0' in metrics, metrics
    assert 'switchyard_circuit_open{provider="flaky"} 1.0' in metrics


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_it_never_opens_a_circuit_on_the_providers_4xx(faults, stream):
    """However many requests the provider refuses with a 4xx (the request's fault, a rate limit,
    or our credential), the model stays reachable: nothing counts them as an outage."""
    from apps.catalog.models import ProviderCircuit

    world = faults.world
    for status in (400, 401, 403, 404, 413, 422, 429):
        world.simulator.fault(model="sim-standard", mode="status", status=status, count=-1, retry_after=0)
        for n in range(4):  # past the threshold of 3, and each attempt reaches the provider
            before = world.simulator.stats()["by_model"].get("sim-standard", 0)
            refused = _post(faults, "lonely", key=world.key_a, stream=stream, prompt=f"refused {status} {n}")
            assert refused.status_code != 503, (status, n, refused.text)
            assert refused.status_code in (status, 502), (status, refused.status_code, refused.text)
            assert world.simulator.stats()["by_model"].get("sim-standard", 0) > before, (status, n)
        world.simulator.reset()
    answered = _post(faults, "lonely", key=world.key_b, stream=stream, prompt="after the refusals")
    assert answered.status_code == 200, answered.text
    assert answered.headers["x-switchyard-model"] == "lonely"
    assert not ProviderCircuit.objects.exists(), "no circuit ever left the closed state"
    assert 'switchyard_circuit_open{provider="flaky"} 1.0' not in _metrics(faults)


def test_each_deployment_of_a_model_on_one_provider_has_its_own_circuit(faults, admin_client):
    """``twin`` is served by two deployments on the same provider (two regions, two upstream ids).
    One fails every request: its circuit opens and it is asked no more, while the other keeps
    answering everything, and its successes do not reset the failing one's circuit."""
    from apps.catalog.models import Deployment, Model, ProviderCircuit

    world = faults.world
    flaky = faults.providers["flaky"]
    twin = Model.objects.create(name="twin", upstream_id="twin", provider=flaky, max_output_tokens=4096,
                                input_price_per_million="1", output_price_per_million="2")
    down = Deployment.objects.create(model=twin, provider=flaky, upstream_id="twin-down", region="down")
    Deployment.objects.create(model=twin, provider=flaky, upstream_id="twin-up", region="up")
    assert wait_until(lambda: _post(faults, "twin", key=world.key_a, prompt="ping").status_code == 200)
    world.simulator.reset()
    world.simulator.fault(model="twin-down", mode="status", status=500, count=-1)

    answers = [_post(faults, "twin", key=world.key_a, prompt=f"twin {n}") for n in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    reached = world.simulator.stats()["by_model"]
    assert reached.get("twin-up") == 20
    # Three failures in a row open its circuit (two attempts a request, retries=1): at most two
    # requests ever tried it; a shared circuit, reset by the other deployment's answers, never opens.
    assert 3 <= reached.get("twin-down", 0) <= 4
    circuit = wait_until(lambda: ProviderCircuit.objects.filter(state="open").first())
    assert circuit is not None and (circuit.model.name, circuit.deployment_id) == ("twin", down.pk)
    assert not ProviderCircuit.objects.exclude(deployment=down).filter(state="open").exists()
    # The provider's page names the deployment's circuit; with Redis the model's page shows it on
    # the deployment's row of its live state.
    provider_page = admin_client.get(f"/admin/catalog/provider/{flaky.pk}/change/").content.decode()
    assert "<td>twin (down)</td>" in provider_page
    if os.environ.get("REDIS_URL"):
        model_page = admin_client.get(f"/admin/catalog/model/{twin.pk}/change/").content.decode()
        rows = {row.split("</td>")[0]: row for row in model_page.split("<tr><td>")[1:]}
        assert "open in 1 of 1 processes" in rows["flaky/down"]
        assert "<td>closed</td>" in rows["flaky/up"]
