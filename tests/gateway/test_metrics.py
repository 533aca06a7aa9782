"""GET /metrics: Prometheus text that prometheus_client parses, counted from usage rows, and
closed to the public."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from apps.core.metrics import allowed
from tests.gateway.conftest import gateway_start, gateway_stop, wait_until
from tests.live import http_json


def _scrape(base: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _total(samples: dict, name: str, **labels) -> float:
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items()))


def test_it_counts_requests_spend_and_errors_from_usage_rows(world):
    base = world.gateway.base
    before = _samples(_scrape(base)[1])
    auth = {"Authorization": f"Bearer {world.key_a}", "Cache-Control": "no-store"}
    for n in range(3):
        status, _ = http_json("POST", world.gateway.v1 + "/chat/completions",
                              {"model": "sim-mini", "messages": [{"role": "user", "content": f"count {n}"}]}, auth)
        assert status == 200
    world.simulator.fault(model="*", mode="status", status=500, count=-1)
    status, _ = http_json("POST", world.gateway.v1 + "/chat/completions",
                          {"model": "sim-mini", "messages": [{"role": "user", "content": "fails"}]}, auth)
    assert status >= 500

    def counted():
        samples = _samples(_scrape(base)[1])
        done = _total(samples, "switchyard_requests_total", endpoint="/v1/chat/completions", status="200",
                      model="sim-mini") - _total(before, "switchyard_requests_total", endpoint="/v1/chat/completions",
                                                 status="200", model="sim-mini")
        # The failed request's row may come in a later flush than the answers' rows: wait for both.
        failed = _total(samples, "switchyard_upstream_errors_total", provider="sim") - _total(
            before, "switchyard_upstream_errors_total", provider="sim")
        return samples if done >= 3 and failed >= 1 else None

    samples = wait_until(counted, interval=0.3)
    assert samples, "the requests never showed in /metrics"
    assert _total(samples, "switchyard_spend_usd_total", tenant="acme") > _total(before, "switchyard_spend_usd_total",
                                                                                 tenant="acme")
    assert _total(samples, "switchyard_upstream_errors_total", provider="sim") >= 1
    assert _total(samples, "switchyard_request_duration_seconds_count", endpoint="/v1/chat/completions") >= 4
    assert _total(samples, "switchyard_overhead_seconds_count") >= 4
    assert ("switchyard_usage_buffer_rows", ()) in samples


def test_it_answers_only_with_the_token_when_one_is_set(world, tmp_path):
    gateway = gateway_start(tmp_path, extra_env={"METRICS_TOKEN": "scrape-secret"})
    try:
        status, body = _scrape(gateway.base)
        assert status == 403 and "METRICS_TOKEN" in body
        assert _scrape(gateway.base, "wrong")[0] == 403
        assert _scrape(gateway.base, world.key_a)[0] == 403  # a tenant's API key is not the token
        status, body = _scrape(gateway.base, "scrape-secret")
        assert status == 200
        assert any(f.name == "switchyard_requests" for f in text_string_to_metric_families(body))
    finally:
        gateway_stop(gateway)


def test_it_refuses_clients_off_the_loopback_interface_without_a_token():
    assert allowed({"client": ("127.0.0.1", 5000)}, None, "")
    assert allowed({"client": ("::1", 5000)}, None, "")
    assert not allowed({"client": ("10.0.0.7", 5000)}, None, "")
    assert not allowed({"client": None}, None, "")
    assert not allowed({"client": ("127.0.0.1", 5000)}, None, "token")
    assert allowed({"client": ("10.0.0.7", 5000)}, b"Bearer token", "token")

