"""A provider batch's spend against the tenant's budget: its estimated cost is reserved on the
counters live requests use when it is submitted, and settled to its batch cost when its results
arrive; a job the budget cannot hold is refused line by line, with nothing sent to the provider."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from django.conf import settings

from apps.batches.models import BatchJob
from apps.batches.runner import job_run
from apps.core import tokens
from apps.limits.counters import redis_keys
from apps.limits.spec import nanos, usd
from tests.batches.conftest import JOB_DEADLINE, batch_wait, chat_line, file_lines, sdk
from tests.batches.conftest import sim_batches as _sim_batches
from tests.batches.test_provider_batches import _rows, _submit
from tests.gateway.conftest import wait_until

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="reads the budget counters in Redis")
ESTIMATE = 300_000  # nano-dollars ($0.0003): budgets are kept to $0.0001


def _lines(count: int) -> list[dict]:
    """``count`` lines whose estimate is exactly :data:`ESTIMATE` on sim-mini at half its price
    (75 nano-dollars a prompt token, 300 an output token): prompts padded to a multiple of four
    tokens, and output caps (``max_tokens``) making up the rest."""
    prompts = [f"Tell me about item {n}" for n in range(count)]
    while sum(tokens.messages_tokens([{"role": "user", "content": p}]) for p in prompts) % 4:
        prompts[-1] += " please"
    prompt = sum(tokens.messages_tokens([{"role": "user", "content": p}]) for p in prompts)
    output = (ESTIMATE - 75 * prompt) // 300
    lines = [chat_line(f"line-{n}", text) for n, text in enumerate(prompts)]
    for n, line in enumerate(lines):
        line["body"]["max_tokens"] = output // count + (output % count if n == count - 1 else 0)
    return lines


def _budget_counters(tenant) -> tuple[int, int]:
    import redis

    values = redis.Redis.from_url(settings.REDIS_URL).hmget(
        redis_keys(f"t:{tenant.pk}", window=0, period=0)[2], "spent", "reserved")
    return tuple(int(value or 0) for value in values)


def _budget_set(tenant, amount: int) -> None:
    tenant.budget_usd, tenant.budget_period = usd(amount), "never"
    tenant.save()


def _live(world) -> httpx.Response:
    return httpx.post(world.gateway.v1 + "/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {world.key_a}", "Cache-Control": "no-store"},
                      json={"model": "sim-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})


def test_it_holds_a_provider_batchs_estimate_against_the_budget_and_settles_it_to_the_batch_cost(
        batch_world, workers):
    world = batch_world
    lines, estimate = _lines(3), ESTIMATE
    _budget_set(world.tenant_a, estimate)  # the job fits exactly: nothing is left for live requests
    _sim_batches(world, hold=True)
    group = workers(BATCH_UPSTREAM_POLL_EVERY=0.5)
    group.start(beat=True)
    client = sdk(world)
    batch_id = _submit(client, lines)
    assert wait_until(lambda: f"batch job {batch_id}: waiting" in group.logs(), timeout=JOB_DEADLINE), \
        group.logs()[-3000:]
    assert _budget_counters(world.tenant_a) == (0, estimate)
    # While the provider answers, the reservation holds the budget: a live request is refused.
    assert wait_until(lambda: _live(world).status_code == 429)
    refusal = _live(world).json()["error"]
    assert refusal["code"] == "budget_exceeded" and "in flight" in refusal["message"]

    _sim_batches(world, hold=False)
    batch = batch_wait(client, batch_id, workers=group)
    assert batch.status == "completed" and batch.request_counts.completed == 3, group.logs()[-3000:]
    cost = sum(row.cost for row in _rows(batch_id, 3))
    assert 0 < cost < usd(estimate)  # the answers are shorter than their cap
    assert wait_until(lambda: _budget_counters(world.tenant_a) == (nanos(cost), 0)), _budget_counters(world.tenant_a)
    assert BatchJob.objects.get(pk=batch_id).upstream["settled"] is True
    # The rest of the budget is free again.
    assert wait_until(lambda: _live(world).status_code == 200)


def test_it_refuses_every_line_of_a_job_the_budget_cannot_hold_and_sends_nothing(batch_world):
    world = batch_world
    lines = _lines(4)
    _budget_set(world.tenant_a, ESTIMATE - 100_000)  # the job would take the budget past its limit
    client = sdk(world)
    batch_id = _submit(client, lines)
    assert asyncio.run(job_run(batch_id)) == "completed"

    batch = client.batches.retrieve(batch_id)
    assert batch.status == "completed" and (batch.request_counts.completed, batch.request_counts.failed) == (0, 4)
    assert batch.output_file_id is None
    errors = file_lines(client, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == [f"line-{n}" for n in range(4)]
    for error in errors:
        assert error["response"]["status_code"] == 429
        body = error["response"]["body"]["error"]
        assert body["code"] == "budget_exceeded" and "estimated cost" in body["message"]
    assert _sim_batches(world)["batches"] == 0 and world.simulator.stats()["requests"] == 0
    assert not _rows(batch_id, 0)
    assert _budget_counters(world.tenant_a) == (0, 0)  # the refused reservation was given back


def test_it_refuses_a_job_when_the_budget_is_already_spent(batch_world):
    world = batch_world
    _budget_set(world.tenant_a, 100_000)
    assert wait_until(lambda: _live(world).status_code == 429)  # answers spend the budget
    client = sdk(world)
    batch_id = _submit(client, _lines(2))
    assert asyncio.run(job_run(batch_id)) == "completed"
    errors = file_lines(client, client.batches.retrieve(batch_id).error_file_id)
    assert {e["response"]["body"]["error"]["code"] for e in errors} == {"budget_exceeded"}
    assert _sim_batches(world)["batches"] == 0


def test_it_reserves_once_when_a_worker_died_before_saving_its_reservation(batch_world):
    world = batch_world
    _budget_set(world.tenant_a, 10 * ESTIMATE)
    _sim_batches(world, hold=True)
    client = sdk(world)
    batch_id = _submit(client, _lines(3))
    assert asyncio.run(job_run(batch_id)) == "submitted"
    assert _budget_counters(world.tenant_a) == (0, ESTIMATE)
    # As a worker killed after reserving, before the reservation and the batch id were saved, leaves it.
    job = BatchJob.objects.get(pk=batch_id)
    BatchJob.objects.filter(pk=batch_id).update(upstream_batch_id="", upstream={
        key: value for key, value in job.upstream.items() if key != "budget"})
    assert asyncio.run(job_run(batch_id)) == "submitted"
    assert _budget_counters(world.tenant_a) == (0, ESTIMATE)  # held once, not twice
    assert BatchJob.objects.get(pk=batch_id).upstream_batch_id == job.upstream_batch_id
    _sim_batches(world, hold=False)
    outcome, deadline = "waiting", time.monotonic() + 30
    while outcome == "waiting" and time.monotonic() < deadline:
        time.sleep(0.2)
        outcome = asyncio.run(job_run(batch_id))
    assert outcome == "completed"
    cost = sum(row.cost for row in _rows(batch_id, 3))
    assert _budget_counters(world.tenant_a) == (nanos(cost), 0)
