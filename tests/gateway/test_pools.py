"""Deployment pools through a real gateway over HTTP to the simulated upstream: one model served
by three deployments (three providers, each its own upstream id on the simulator, whose
per-model counters say which deployment each request reached)."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from tests.gateway.conftest import gateway_start, gateway_stop, request_logs, usage_quiet, wait_until

REDIS_URL = os.environ.get("REDIS_URL", "")
UPSTREAMS = ("pool-east", "pool-west", "pool-north")


@pytest.fixture
def redis_clean():
    """No pool state of an earlier test or run (deployment ids restart with each test database)."""
    if not REDIS_URL:
        yield None
        return
    import redis

    from apps.providers.pool_sync import PREFIX

    client = redis.Redis.from_url(REDIS_URL)

    def clean() -> None:
        for name in client.scan_iter(PREFIX + "*", count=1000):
            client.delete(name)

    clean()
    yield client
    clean()
    client.close()


@pytest.fixture
def pool(world, redis_clean):
    """``pool-chat``: three deployments weighted 6, 3 and 1; ``pool-alias`` routes to it, then
    to sim-mini."""
    from apps.catalog.models import Deployment, Model, Provider
    from apps.routing.models import RoutingFallback, RoutingRule

    model = Model.objects.create(name="pool-chat", upstream_id="pool-chat", provider=world.provider,
                                 input_price_per_million="1.00", output_price_per_million="2.00")
    deployments = {}
    for upstream, weight, region in zip(UPSTREAMS, (6, 3, 1), ("east", "west", "north"), strict=True):
        provider = Provider.objects.create(name=f"sim-{region}", kind=Provider.Kind.SIMULATED,
                                           base_url=world.simulator.v1, credential=f"sk-{region}",
                                           timeout_seconds=5.0)
        deployments[upstream] = Deployment.objects.create(model=model, provider=provider, upstream_id=upstream,
                                                          region=region, weight=weight)
    rule = RoutingRule.objects.create(name="pool alias", match_model="pool-alias", target=model, priority=1)
    RoutingFallback.objects.create(rule=rule, model=world.models["sim-mini"], position=0)
    world.pool_model = model
    world.deployments = deployments
    world.redis = redis_clean

    def sees_pool() -> bool:
        status = ask(world, "ping", model="pool-alias").status_code
        return status == 200

    assert wait_until(sees_pool), "the gateway never saw the pool"
    world.simulator.reset()
    usage_quiet()  # the probes' usage rows are written before the test counts its own
    from apps.usage.models import RequestLog

    RequestLog.objects.all().delete()
    return world


def ask(world, prompt: str, *, model: str = "pool-chat", base: str | None = None) -> httpx.Response:
    return httpx.post((base or world.gateway.v1) + "/chat/completions", timeout=30, headers={
        "Authorization": f"Bearer {world.key_a}", "Cache-Control": "no-store"},
        json={"model": model, "messages": [{"role": "user", "content": prompt}]})


def reached(world) -> dict[str, int]:
    by_model = world.simulator.stats()["by_model"]
    return {upstream: by_model.get(upstream, 0) for upstream in UPSTREAMS}


def test_it_spreads_requests_by_weight_and_the_usage_row_names_the_deployment(pool):
    answers = [ask(pool, f"question number {i}") for i in range(200)]
    assert {a.status_code for a in answers} == {200}
    counts = reached(pool)
    assert sum(counts.values()) == 200
    # Weights 6 : 3 : 1 (each share is more than four standard deviations inside its bounds).
    assert 0.45 < counts["pool-east"] / 200 < 0.75
    assert 0.15 < counts["pool-west"] / 200 < 0.45
    assert 0.01 < counts["pool-north"] / 200 < 0.25
    rows = request_logs(200, tenant=pool.tenant_a)
    by_deployment = {d.pk: upstream for upstream, d in pool.deployments.items()}
    logged = {upstream: 0 for upstream in UPSTREAMS}
    for row in rows:
        logged[by_deployment[row.deployment_id]] += 1
        assert row.model_used == "pool-chat" and row.provider_id == row.deployment.provider_id
    assert logged == counts
    east = pool.deployments["pool-east"]
    headers = next(a.headers for a in answers if a.headers["x-switchyard-provider"] == "sim-east")
    assert headers["x-switchyard-deployment"] == f"{east.pk} sim-east/east"


def test_streams_are_counted_in_flight_until_they_end(pool):
    import openai

    client = openai.OpenAI(base_url=pool.gateway.v1, api_key=pool.key_a, max_retries=0,
                           default_headers={"Cache-Control": "no-store"})
    for i in range(12):
        stream = client.chat.completions.create(model="pool-chat", stream=True,
                                                messages=[{"role": "user", "content": f"stream {i}"}])
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    rows = request_logs(12, tenant=pool.tenant_a)
    assert {row.deployment_id for row in rows} <= {d.pk for d in pool.deployments.values()}
    assert sum(reached(pool).values()) == 12
    if REDIS_URL:
        from apps.providers.pool_sync import pool_state_read

        used = {row.deployment_id for row in rows}

        def settled() -> bool:
            live = pool_state_read(REDIS_URL, used, live_seconds=5)
            # Nothing left in flight once every stream has ended (a stream's end must be counted).
            return all(state["in_flight"] == 0 and state["latency_ms"] for state in live.values())
        assert wait_until(settled)


def test_a_model_without_deployments_is_served_by_its_own_provider(pool):
    answer = ask(pool, "plain", model="sim-mini")
    assert answer.status_code == 200 and "x-switchyard-deployment" not in answer.headers
    (row,) = request_logs(1, tenant=pool.tenant_a)
    assert row.deployment_id is None and row.provider_id == pool.provider.pk


def test_a_deployment_that_answers_429_cools_down_and_its_traffic_moves_to_the_others(pool, admin_client):
    pool.simulator.fault(model="pool-east", mode="status", status=429, count=-1, retry_after=120)
    answers = [ask(pool, f"rate limited {i}") for i in range(40)]
    assert {a.status_code for a in answers} == {200}
    counts = reached(pool)
    assert counts["pool-east"] == 1  # refused once, then left out: never retried, never asked again
    assert counts["pool-west"] + counts["pool-north"] == 40
    rows = request_logs(40, tenant=pool.tenant_a)
    east = pool.deployments["pool-east"]
    assert all(row.deployment_id != east.pk and row.status_code == 200 for row in rows)
    (moved,) = [row for row in rows if row.upstream_failures]
    assert moved.upstream_failures == "pool-chat@sim-east/east: status 429"
    # The model's page lists its deployments and, with Redis, their state shared by every process.
    def page() -> str:
        return admin_client.get(f"/admin/catalog/model/{pool.pool_model.pk}/change/").content.decode()

    def row(html: str, label: str) -> str:
        return html[html.index(f"<td>{label}</td>"):].split("</tr>")[0]

    html = page()
    assert "sim-east" in html and "sim-north" in html
    if REDIS_URL:
        assert "<th>cooling down until</th>" in html
        html = wait_until(lambda: (lambda h: h if "UTC" in row(h, "sim-east/east") else "")(page()))
        assert "UTC" in row(html, "sim-east/east")  # cooling down until a time
        assert "UTC" not in row(html, "sim-west/west") and "UTC" not in row(html, "sim-north/north")


def test_when_every_deployment_cools_down_the_chain_falls_back_to_the_next_model(pool):
    for upstream in UPSTREAMS:
        pool.simulator.fault(model=upstream, mode="status", status=429, count=-1, retry_after=120)
    answers = [ask(pool, f"all limited {i}", model="pool-alias") for i in range(10)]
    assert {a.status_code for a in answers} == {200}
    assert {a.headers["x-switchyard-model"] for a in answers} == {"sim-mini"}
    assert reached(pool) == dict.fromkeys(UPSTREAMS, 1)
    # Asked for by name, with no other model to fall back to: 429 with the nearest cooldown's end.
    refused = ask(pool, "no way", model="pool-chat")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "upstream_rate_limited"
    assert 100 <= int(refused.headers["retry-after"]) <= 120
    assert reached(pool) == dict.fromkeys(UPSTREAMS, 1)


def test_a_cooldown_is_shared_by_every_gateway_process_through_redis(pool, tmp_path):
    if not REDIS_URL:
        pytest.skip("sharing between processes needs Redis (REDIS_URL)")
    other = gateway_start(tmp_path)
    try:
        assert wait_until(lambda: ask(pool, "hello", base=other.v1).status_code == 200)
        pool.simulator.reset()
        pool.simulator.fault(model="pool-west", mode="status", status=429, count=-1, retry_after=120)
        # Through the first gateway until one request has reached pool-west (and cooled it down).
        for i in range(100):
            assert ask(pool, f"first gateway {i}").status_code == 200
            if reached(pool)["pool-west"]:
                break
        assert reached(pool)["pool-west"] == 1
        west = pool.deployments["pool-west"]
        key = f"sy:pool:{west.pk}"
        assert wait_until(lambda: float(pool.redis.hget(key, "cool") or 0) / 1000 > time.time() + 60)
        # Both processes exchange twice more: the second gateway has read the cooldown.
        seen = {name: int(count) for name, count in pool.redis.hgetall("sy:pool:syncs").items()}
        assert len(seen) >= 2
        assert wait_until(lambda: all(int(pool.redis.hget("sy:pool:syncs", name)) >= count + 2
                                      for name, count in seen.items()))
        answers = [ask(pool, f"second gateway {i}", base=other.v1) for i in range(30)]
        assert {a.status_code for a in answers} == {200}
        assert {a.headers["x-switchyard-provider"] for a in answers} <= {"sim-east", "sim-north"}
        assert reached(pool)["pool-west"] == 1  # the second gateway never sent it one
    finally:
        gateway_stop(other)



def test_a_deployment_whose_circuit_opens_in_one_process_is_left_out_by_every_process(pool, tmp_path):
    if not REDIS_URL:
        pytest.skip("sharing between processes needs Redis (REDIS_URL)")
    env = {"CIRCUIT_FAILURES": "2", "CIRCUIT_COOLDOWN": "600"}
    first, second = gateway_start(tmp_path, extra_env=env), gateway_start(tmp_path, extra_env=env)
    try:
        for gateway in (first, second):
            assert wait_until(lambda g=gateway: ask(pool, "hello", base=g.v1).status_code == 200)
        pool.simulator.reset()
        pool.simulator.fault(model="pool-west", mode="status", status=500, count=-1)
        # Through the first gateway until pool-west has failed twice in a row (one request, retried).
        for i in range(100):
            assert ask(pool, f"first gateway {i}", base=first.v1).status_code == 200
            if reached(pool)["pool-west"] >= 2:
                break
        assert reached(pool)["pool-west"] == 2
        west = pool.deployments["pool-west"]
        key = f"sy:pool:{west.pk}"
        assert wait_until(lambda: float(pool.redis.hget(key, "cool") or 0) / 1000 > time.time() + 500)
        seen = {name: int(count) for name, count in pool.redis.hgetall("sy:pool:syncs").items()}
        assert wait_until(lambda: all(int(pool.redis.hget("sy:pool:syncs", name)) >= count + 2
                                      for name, count in seen.items()))
        # The second gateway never saw pool-west fail, and never sends it a request.
        answers = [ask(pool, f"second gateway {i}", base=second.v1) for i in range(30)]
        assert {a.status_code for a in answers} == {200}
        assert reached(pool)["pool-west"] == 2
    finally:
        gateway_stop(first)
        gateway_stop(second)
