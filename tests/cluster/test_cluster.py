"""The cluster ``make cluster`` starts, proven with real processes: two web replicas behind the
balancer, two Celery workers and one beat on Redis, one Postgres."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import timedelta
from decimal import Decimal

import aiohttp
import httpx
import pytest
from websockets.asyncio.client import connect

from tests.cluster.conftest import EVICT_EVERY
from tests.gateway.conftest import request_logs, wait_until
from tests.live import DEADLINE

pytestmark = pytest.mark.cluster


def _chat(base: str, key: str, content: str, **extra) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": "sim-mini", "messages": [{"role": "user", "content": content}], **extra})


def _fire(bases: list[str], key: str, count: int, body_for) -> list[tuple[int, bytes]]:
    """``count`` concurrent requests, spread over ``bases`` in turn."""
    async def one(session, n):
        async with session.post(bases[n % len(bases)] + "/v1/chat/completions", json=body_for(n)) as response:
            return response.status, await response.read()

    async def run():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"},
                                         connector=aiohttp.TCPConnector(limit=0)) as session:
            return await asyncio.gather(*[one(session, n) for n in range(count)])

    return asyncio.run(run())


def _same_minute(seconds: float = 5.0) -> None:
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.05)


def test_it_spreads_connections_over_both_replicas_behind_the_balancer(cluster_world):
    cluster = cluster_world.cluster
    seen = {httpx.get(cluster.base + "/healthz", timeout=10).json()["replica"] for _ in range(8)}
    assert seen == {"web1", "web2"}
    answer = _chat(cluster.base, cluster_world.key_a, "What is Python?")
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    streamed = httpx.post(cluster.base + "/v1/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {cluster_world.key_a}"},
                          json={"model": "sim-mini", "stream": True,
                                "messages": [{"role": "user", "content": "Stream through the balancer"}]})
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")


def test_it_refuses_a_key_revoked_through_one_replica_on_the_other_by_its_message(cluster_world,
                                                                                   django_user_model):
    from apps.tenants.models import ApiKey
    from apps.tenants.services import key_create

    web1, web2 = cluster_world.cluster.replicas
    created = key_create(tenant=cluster_world.tenant_a, name="to revoke")
    for base in (web1, web2):
        assert wait_until(lambda base=base: _chat(base, created.secret, "hello", max_tokens=1).status_code == 200)
    django_user_model.objects.create_superuser("ops", password="ops-password-1")
    with httpx.Client(base_url=web1, timeout=30) as admin:
        admin.get("/admin/login/")
        login = admin.post("/admin/login/?next=/admin/", data={
            "username": "ops", "password": "ops-password-1", "csrfmiddlewaretoken": admin.cookies["csrftoken"],
            "next": "/admin/"})
        assert login.status_code == 302, login.text[:500]
        revoke = admin.post("/admin/tenants/apikey/", data={
            "action": "revoke_selected", "_selected_action": str(created.api_key.pk), "index": "0",
            "csrfmiddlewaretoken": admin.cookies["csrftoken"]})
        assert revoke.status_code == 302, revoke.text[:500]
    assert ApiKey.objects.get(pk=created.api_key.pk).revoked_at is not None
    # The replicas never reload on a timer (GATEWAY_CONFIG_REFRESH in the cluster's env): web2
    # refuses the key only through the change message web1 published.
    refused = wait_until(lambda: _chat(web2, created.secret, "hello", max_tokens=1).status_code == 401, interval=0.02)
    assert refused, "web2 still accepts the revoked key"
    assert _chat(web1, created.secret, "hello", max_tokens=1).status_code == 401


def test_it_holds_a_rate_limit_and_a_budget_across_both_replicas(cluster_world):
    from apps.catalog.models import Model
    from apps.tenants.services import key_create
    from apps.usage.models import RequestLog

    world = cluster_world
    replicas = world.cluster.replicas
    Model.objects.create(name="sim-dear", upstream_id="sim-dear", provider=world.provider, max_output_tokens=4096,
                         input_price_per_million=Decimal("500"), output_price_per_million=Decimal("1000"))
    world.tenant_a.budget_usd, world.tenant_a.budget_period = Decimal("0.50"), "month"
    world.tenant_a.budget_alert_percent = None
    world.tenant_a.cache_enabled = False
    world.tenant_a.save()
    world.tenant_b.cache_enabled = False
    world.tenant_b.save()
    _same_minute(20)  # the warm-ups and the burst share one clock minute
    rpm_key = key_create(tenant=world.tenant_b, name="rpm", rpm_limit=10).secret
    for base in replicas:  # both replicas have the new limits
        assert wait_until(lambda base=base: "x-ratelimit-limit-requests" in _chat(
            base, rpm_key, "warm", max_tokens=1).headers)
    # Two warm-up requests used two of the ten; 30 more through both replicas admit eight.
    by_rpm = [status for status, _ in _fire(replicas, rpm_key, 30, lambda n: {
        "model": "sim-mini", "messages": [{"role": "user", "content": f"rpm {n}"}]})]
    assert by_rpm.count(200) == 8 and by_rpm.count(429) == 22, by_rpm

    by_budget = _fire(replicas, world.key_a, 100, lambda n: {
        "model": "sim-dear", "max_tokens": 20, "stream": n % 2 == 0,
        "messages": [{"role": "user", "content": f"race for the last cent {n}"}]})
    statuses = [status for status, _ in by_budget]
    assert statuses.count(200) + statuses.count(429) == 100, statuses
    assert all(b'"budget_exceeded"' in body for status, body in by_budget if status == 429)
    rows = request_logs(statuses.count(200), tenant=world.tenant_a, model_used="sim-dear", status_code=200)
    assert len(rows) == statuses.count(200)
    costs = [row.cost for row in rows]
    assert Decimal("0.25") < sum(costs) <= Decimal("0.50") + max(costs), (sum(costs), max(costs))
    assert RequestLog.objects.filter(tenant=world.tenant_a, model_used="sim-dear", status_code=200).count() == len(rows)


def test_it_runs_eviction_once_per_interval_from_the_one_beat(cluster_world):
    from django.utils import timezone

    from apps.cache.models import CacheEntry

    cluster = cluster_world.cluster
    expired = CacheEntry.objects.create(
        tenant=cluster_world.tenant_a, request_hash="e" * 64, prompt_text="old question", response={"choices": []},
        expires_at=timezone.now() - timedelta(minutes=1), embedding=[0.01] * 384, model_name="sim-mini")
    assert wait_until(lambda: not CacheEntry.objects.filter(pk=expired.pk).exists())

    def count(name: str, pattern: str) -> int:
        return len(re.findall(pattern, cluster.group.log_path(name).read_text(errors="replace")))

    def sent() -> int:
        return count("beat", r"Sending due task cache-evict-expired")

    def received() -> int:
        return sum(count(worker, r"Task cache\.evict_expired\[[-0-9a-f]+\] received")
                   for worker in ("worker1", "worker2"))

    # Counted from the logs, not against the clock: a loaded machine may delay the beat, never
    # make it send more often than its interval.
    sent_before, received_before, started = sent(), received(), time.monotonic()
    assert wait_until(lambda: sent() >= sent_before + 5), "the beat stopped sending evictions"
    sent_now = sent() - sent_before
    elapsed = time.monotonic() - started
    assert sent_now <= elapsed / EVICT_EVERY + 1, (sent_now, elapsed)
    # Every task the one beat sent reaches one worker, once: a second beat (or a worker running
    # its own) would make the workers receive about twice what this beat sent. (Two may have
    # been on their way when counting began.)
    assert wait_until(lambda: received() - received_before >= sent_now - 2), (sent_now, received())
    got = received() - received_before
    assert got <= sent() - sent_before + 2, (got, sent() - sent_before)


def test_it_delivers_websocket_events_published_on_one_replica_to_a_socket_on_the_other(cluster_world):
    web1, web2 = (base.replace("http://", "ws://") + "/ws/v1/chat" for base in cluster_world.cluster.replicas)
    headers = {"Authorization": f"Bearer {cluster_world.key_a}"}

    async def next_event(ws, kind: str, timeout: float = DEADLINE) -> dict:
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            if event["type"] == kind:
                return event

    async def run():
        async with connect(web2, additional_headers=headers) as watcher, \
                connect(web1, additional_headers=headers) as caller:
            await next_event(watcher, "ready")
            await next_event(caller, "ready")
            await watcher.send(json.dumps({"type": "subscribe", "topic": "usage"}))
            await next_event(watcher, "subscribed")
            await caller.send(json.dumps({"type": "chat.request", "id": "1", "body": {
                "model": "sim-mini", "messages": [{"role": "user", "content": "Across replicas"}]}}))
            done = await next_event(caller, "done")
            live = await next_event(watcher, "live")
            return done, live

    done, live = asyncio.run(run())
    assert live["event"]["request_id"] == done["request_id"]
    assert live["event"]["cost"] == done["cost"]


def test_it_answers_every_line_of_a_batch_once_across_two_workers_when_one_is_killed(cluster_world,
                                                                                     slow_simulator):
    import signal

    import openai

    from apps.batches.models import BatchJob, BatchLine
    from tests.batches.conftest import JOB_DEADLINE, batch_wait, chat_line, file_lines, jsonl

    world, cluster = cluster_world, cluster_world.cluster
    world.provider.base_url = slow_simulator.v1  # 150 ms a line: the job outlives the kill
    world.provider.save()

    def uses_slow(base: str) -> bool:
        before = slow_simulator.stats()["requests"]
        _chat(base, world.key_a, f"warm {time.monotonic()}", max_tokens=1)
        return slow_simulator.stats()["requests"] > before

    for base in cluster.replicas:
        assert wait_until(lambda base=base: uses_slow(base))
    client = openai.OpenAI(base_url=cluster.base + "/v1", api_key=world.key_a, max_retries=0)
    lines = [chat_line(f"line-{n}", f"Question number {n} for the cluster") for n in range(160)]
    file_id = client.files.create(file=jsonl(lines), purpose="batch").id
    batch_id = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                     completion_window="24h").id
    assert wait_until(lambda: BatchLine.objects.filter(job_id=batch_id).count() >= 30, timeout=JOB_DEADLINE)

    def holder() -> str | None:
        """The worker whose log names the job's current lease (leases can move between workers
        while a loaded machine delays a heartbeat, so the job's row says who holds it now)."""
        token = BatchJob.objects.filter(pk=batch_id).values_list("lease_token", flat=True).first()
        for name in ("worker1", "worker2") if token else ():
            if f"batch job {batch_id}: running under lease {token[:8]}" in cluster.group.log_path(name).read_text(
                    errors="replace"):
                return name
        return None

    holder_name = wait_until(holder)
    assert holder_name, "no worker's log names the job's lease"
    other = "worker2" if holder_name == "worker1" else "worker1"
    cluster.group.stop(holder_name, sig=signal.SIGKILL)  # mid-job: its lines in flight and unflushed answers are lost
    try:
        answered_before = BatchLine.objects.filter(job_id=batch_id).count()
        assert answered_before < 160
        batch = batch_wait(client, batch_id)
        assert batch.status == "completed" and batch.request_counts.completed == 160
        output = file_lines(client, batch.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(f"line-{n}" for n in range(160))
        assert BatchLine.objects.filter(job_id=batch_id).count() == 160
        # The other worker finished it. It logs the outcome once its task returns, after the job
        # is marked completed and its pipeline has shut down (which waits for cache writes).
        assert wait_until(lambda: f"batch job {batch_id}: completed" in cluster.group.log_path(other).read_text(
            errors="replace")), cluster.group.log_path(other).read_text(errors="replace")[-3000:]
    finally:
        cluster.restart(holder_name)


def test_it_keeps_serving_through_the_balancer_when_a_replica_stops(cluster_world):
    cluster = cluster_world.cluster
    cluster.group.stop("web2")
    try:
        answers = [_chat(cluster.base, cluster_world.key_a, f"still here {n}", max_tokens=2) for n in range(10)]
        assert [a.status_code for a in answers] == [200] * 10
        assert {httpx.get(cluster.base + "/healthz", timeout=10).json()["replica"] for _ in range(4)} == {"web1"}
    finally:
        cluster.restart("web2")
    assert wait_until(lambda: {httpx.get(cluster.base + "/healthz", timeout=10).json()["replica"]
                               for _ in range(4)} == {"web1", "web2"}, timeout=60, interval=0.5)
