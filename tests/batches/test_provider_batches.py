"""Batch jobs sent to a provider's own Batch API (OpenAI's Files and Batches), on the simulated
upstream over HTTP, run by real Celery workers and beat's poller."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import openai
import pytest

from apps.batches.models import BatchJob
from apps.batches.runner import job_run
from apps.usage.models import RequestLog
from tests.batches.conftest import JOB_DEADLINE, batch_wait, chat_line, file_lines, jsonl, sdk
from tests.batches.conftest import sim_batches as _sim_batches
from tests.gateway.conftest import wait_until

PROVIDER_BATCH_REASON = "provider batch api"


def _submit(client: openai.OpenAI, lines: list) -> str:
    file_id = client.files.create(file=jsonl(lines), purpose="batch").id
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id


def _rows(batch_id: str, count: int) -> list[RequestLog]:
    assert wait_until(lambda: RequestLog.objects.filter(request_id__startswith=batch_id + "-").count() >= count)
    return list(RequestLog.objects.filter(request_id__startswith=batch_id + "-").order_by("request_id"))


def test_it_sends_a_job_to_the_providers_batch_api_and_prices_it_at_the_batch_price(batch_world, workers):
    world = batch_world
    group = workers(BATCH_UPSTREAM_POLL_EVERY=0.5)
    group.start(beat=True)
    client = sdk(world)
    lines = [chat_line(f"req-{n}", f"Tell me about item {n}") for n in range(5)]
    lines.insert(3, {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"model": "sim-mini"}})
    batch_id = _submit(client, lines)
    batch = batch_wait(client, batch_id, workers=group)

    assert batch.status == "completed", group.logs()[-3000:]
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (6, 5, 1)
    job = BatchJob.objects.get(pk=batch_id)
    assert job.upstream_batch_id.startswith("batch_sim") and job.upstream["provider_id"] == world.provider.pk
    # The provider answered the lines itself (one batch of six lines).
    assert _sim_batches(world)["batches"] == 1
    assert world.simulator.stats()["by_model"] == {"sim-mini": 5}  # the sixth has no messages: refused

    output = file_lines(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"req-{n}" for n in range(5)]
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"].startswith(batch_id + "-")
        assert line["response"]["body"]["model"] == "sim-mini"
        assert line["response"]["body"]["choices"][0]["message"]["content"]
    (error,) = file_lines(client, batch.error_file_id)
    assert error["custom_id"] == "no-messages" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "messages"

    rows = _rows(batch_id, 6)
    assert len(rows) == 6
    price = world.models["sim-mini"].prices.order_by("-effective_from", "-id").first()
    answered = [row for row in rows if row.status_code == 200]
    assert len(answered) == 5
    for row in answered:
        assert row.route_reason == PROVIDER_BATCH_REASON and row.endpoint == "batch:/v1/chat/completions"
        assert row.input_tokens > 0 and row.output_tokens > 0
        assert row.cost == price.cost(input_tokens=row.input_tokens, cached_tokens=row.cached_tokens,
                                      output_tokens=row.output_tokens, batch=True)
        assert row.cost * 2 == price.cost(input_tokens=row.input_tokens, cached_tokens=row.cached_tokens,
                                          output_tokens=row.output_tokens)
        assert row.tenant_id == world.tenant_a.pk
    (failed,) = [row for row in rows if row.status_code != 200]
    assert failed.cost == 0 and failed.request_id == f"{batch_id}-3"

    # Tenant B sees neither the job nor its files.
    other = sdk(world, world.key_b)
    for read in (lambda: other.batches.retrieve(batch_id), lambda: other.files.content(batch.output_file_id),
                 lambda: other.files.retrieve(batch.error_file_id)):
        with pytest.raises(openai.NotFoundError):
            read()
    assert [b.id for b in other.batches.list()] == []


def test_it_runs_lines_live_at_the_live_price_when_the_provider_has_no_batch_api(world, workers):
    world.models["sim-mini"].batch_discount_percent = Decimal("50")
    world.models["sim-mini"].save()
    workers().start()
    client = sdk(world)
    batch_id = _submit(client, [chat_line(f"r{n}", f"Question {n}") for n in range(3)])
    batch = batch_wait(client, batch_id)
    assert batch.status == "completed" and batch.request_counts.completed == 3
    assert BatchJob.objects.get(pk=batch_id).upstream_batch_id == ""
    price = world.models["sim-mini"].prices.order_by("-effective_from", "-id").first()
    for row in _rows(batch_id, 3):
        assert row.route_reason != PROVIDER_BATCH_REASON
        assert row.cost == price.cost(input_tokens=row.input_tokens, cached_tokens=row.cached_tokens,
                                      output_tokens=row.output_tokens) > 0


def test_it_runs_a_job_live_when_a_line_names_auto_or_its_window_is_shorter_than_a_day(batch_world, workers):
    workers().start()
    client = sdk(batch_world)
    routed = _submit(client, [chat_line("a", "Hi"), chat_line("b", "Hello", model="auto")])
    file_id = client.files.create(file=jsonl([chat_line("c", "Hey")]), purpose="batch").id
    urgent = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                   completion_window="1h").id
    for batch_id, count in ((routed, 2), (urgent, 1)):
        batch = batch_wait(client, batch_id)
        assert batch.status == "completed" and batch.request_counts.completed == count
        assert BatchJob.objects.get(pk=batch_id).upstream_batch_id == ""
    assert _sim_batches(batch_world)["batches"] == 0


def test_it_resumes_polling_after_its_worker_is_killed_without_submitting_twice(batch_world, workers):
    world = batch_world
    _sim_batches(world, hold=True)  # the provider's batch stays in progress until released
    group = workers(BATCH_UPSTREAM_POLL_EVERY=0.5, BATCH_LEASE_SECONDS=2)
    first = group.start(beat=True)
    client = sdk(world)
    batch_id = _submit(client, [chat_line(f"line-{n}", f"Item {n}") for n in range(4)])
    assert wait_until(lambda: BatchJob.objects.get(pk=batch_id).upstream_batch_id, timeout=JOB_DEADLINE), \
        group.logs()[-3000:]
    # Polled at least once while the provider's batch runs, then killed mid-wait.
    assert wait_until(lambda: f"batch job {batch_id}: waiting" in group.logs(), timeout=JOB_DEADLINE), \
        group.logs()[-3000:]
    group.kill(first)
    upstream_id = BatchJob.objects.get(pk=batch_id).upstream_batch_id
    assert client.batches.retrieve(batch_id).status == "in_progress"

    group.start(beat=True)
    _sim_batches(world, hold=False)
    batch = batch_wait(client, batch_id, workers=group)
    assert batch.status == "completed", group.logs()[-3000:]
    assert batch.request_counts.completed == 4 and batch.request_counts.failed == 0
    assert BatchJob.objects.get(pk=batch_id).upstream_batch_id == upstream_id
    assert _sim_batches(world)["batches"] == 1  # submitted once
    assert [line["custom_id"] for line in file_lines(client, batch.output_file_id)] == [
        f"line-{n}" for n in range(4)]
    time.sleep(1.5)  # a few more polls: none writes the lines or their usage again
    assert len(_rows(batch_id, 4)) == 4


def test_it_maps_a_failed_provider_batch_to_the_error_file(batch_world):
    world = batch_world
    _sim_batches(world, fail_next="The simulated provider refused the batch.")
    client = sdk(world)
    batch_id = _submit(client, [chat_line(f"line-{n}", f"Item {n}") for n in range(3)])
    assert asyncio.run(job_run(batch_id)) == "submitted"
    outcome = "waiting"
    deadline = time.monotonic() + 30
    while outcome == "waiting" and time.monotonic() < deadline:
        time.sleep(0.2)
        outcome = asyncio.run(job_run(batch_id))
    assert outcome == "completed"
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "completed" and batch.output_file_id is None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 3)
    assert batch.errors.data[0].message == "The simulated provider refused the batch."
    errors = file_lines(client, batch.error_file_id)
    assert [(e["custom_id"], e["response"], e["error"]["code"]) for e in errors] == [
        (f"line-{n}", None, "provider_batch_failed") for n in range(3)]
    assert errors[0]["error"]["message"] == "The simulated provider refused the batch."
    assert not RequestLog.objects.filter(request_id__startswith=batch_id + "-").exists()
    assert world.simulator.stats()["requests"] == 0


def test_it_adopts_the_provider_batch_a_killed_worker_created_but_did_not_save(batch_world):
    world = batch_world
    client = sdk(world)
    batch_id = _submit(client, [chat_line(f"line-{n}", f"Item {n}") for n in range(2)])
    # The first run validates and submits; then the job is put back as a worker killed between
    # creating the provider's batch and saving its id would have left it.
    assert asyncio.run(job_run(batch_id)) == "submitted"
    created = BatchJob.objects.get(pk=batch_id).upstream_batch_id
    BatchJob.objects.filter(pk=batch_id).update(upstream_batch_id="")
    assert asyncio.run(job_run(batch_id)) == "submitted"
    assert BatchJob.objects.get(pk=batch_id).upstream_batch_id == created
    assert _sim_batches(world)["batches"] == 1
