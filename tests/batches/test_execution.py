"""How batch jobs run: concurrency limits, cancellation, a worker killed mid-job, expiry."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

from django.utils import timezone

from apps.batches.models import BatchJob, BatchLine
from apps.batches.runner import job_run
from tests.batches.conftest import JOB_DEADLINE, batch_wait, chat_line, file_lines, jsonl, sdk
from tests.gateway.conftest import wait_until


def _slow(world, slow_simulator, *, max_concurrency: int = 100) -> None:
    world.provider.base_url = slow_simulator.v1
    world.provider.max_concurrency = max_concurrency
    world.provider.save()


def _submit(client, count: int, prefix: str = "line") -> str:
    lines = [chat_line(f"{prefix}-{n}", f"Question number {n} of {prefix}") for n in range(count)]
    file_id = client.files.create(file=jsonl(lines), purpose="batch").id
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                 completion_window="24h").id


def test_it_never_exceeds_the_tenant_or_provider_concurrency_limit(world, workers, slow_simulator):
    _slow(world, slow_simulator)
    group = workers(BATCH_TENANT_CONCURRENCY=4)
    group.start()
    client = sdk(world)
    batch = batch_wait(client, _submit(client, 24, "tenant"), workers=group)
    assert batch.request_counts.completed == 24
    stats = slow_simulator.stats()
    assert stats["requests"] == 24
    assert stats["max_in_flight"] == 4  # the limit, reached and never exceeded

    slow_simulator.reset()
    _slow(world, slow_simulator, max_concurrency=2)
    batch = batch_wait(client, _submit(client, 12, "provider"), workers=group)
    assert batch.request_counts.completed == 12
    stats = slow_simulator.stats()
    assert stats["requests"] == 12
    assert stats["max_in_flight"] == 2


def test_it_cancels_within_seconds_and_keeps_what_was_answered(world, workers, slow_simulator):
    _slow(world, slow_simulator)
    group = workers(BATCH_TENANT_CONCURRENCY=2)
    group.start()
    client = sdk(world)
    batch_id = _submit(client, 200)
    assert wait_until(lambda: client.batches.retrieve(batch_id).request_counts.completed >= 6, timeout=JOB_DEADLINE)
    assert client.batches.cancel(batch_id).status == "cancelling"
    batch = batch_wait(client, batch_id, until=("cancelled",), workers=group)
    # 200 lines two at a time take 15 s of upstream time: the job stopped long before the end.
    assert 6 <= batch.request_counts.completed < 200
    output = file_lines(client, batch.output_file_id)
    assert len(output) == batch.request_counts.completed
    requests_then = slow_simulator.stats()["requests"]
    # The worker's task has returned (its runner and upstream connections are gone), and nothing
    # more went upstream after the job was cancelled.
    assert wait_until(lambda: f"batch job {batch_id}: cancelled" in group.logs()), group.logs()[-3000:]
    assert slow_simulator.stats()["requests"] == requests_then
    assert client.batches.cancel(batch_id).status == "cancelled"


def test_it_answers_every_line_exactly_once_after_a_worker_is_killed(world, workers, slow_simulator):
    _slow(world, slow_simulator)
    group = workers(BATCH_TENANT_CONCURRENCY=4, BATCH_LEASE_SECONDS=2, BATCH_RESUME_EVERY=1, BATCH_CHUNK_LINES=25)
    first = group.start(beat=True)
    client = sdk(world)
    batch_id = _submit(client, 160)
    assert wait_until(lambda: BatchLine.objects.filter(job_id=batch_id).count() >= 40,
                      timeout=JOB_DEADLINE), group.logs()
    group.kill(first)  # SIGKILL mid-job: lines in flight and unflushed answers are lost
    killed_at = BatchLine.objects.filter(job_id=batch_id).count()
    assert killed_at < 160
    group.start(beat=True)
    batch = batch_wait(client, batch_id, workers=group)
    assert batch.status == "completed", group.logs()[-3000:]
    assert batch.request_counts.completed == 160 and batch.request_counts.failed == 0
    output = file_lines(client, batch.output_file_id)
    ids = Counter(line["custom_id"] for line in output)
    assert ids == Counter(f"line-{n}" for n in range(160))  # every line, once
    assert [line["custom_id"] for line in output] == [f"line-{n}" for n in range(160)]
    assert BatchLine.objects.filter(job_id=batch_id).count() == 160
    assert batch.error_file_id is None


def test_it_expires_a_job_whose_window_ended_with_unanswered_lines_in_the_error_file(world):
    client = sdk(world)
    batch_id = _submit(client, 5)
    BatchJob.objects.filter(pk=batch_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert asyncio.run(job_run(batch_id)) == "expired"
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "expired" and batch.expired_at
    assert batch.request_counts.failed == 5
    errors = file_lines(client, batch.error_file_id)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [(f"line-{n}", "batch_expired")
                                                                       for n in range(5)]


def test_it_fails_a_batch_whose_custom_ids_repeat_before_sending_any_line(world):
    client = sdk(world)
    lines = [chat_line("a", "First"), chat_line("b", "Second"), b"not json", chat_line("a", "Again")]
    file_id = client.files.create(file=jsonl(lines), purpose="batch").id
    batch_id = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                     completion_window="24h").id
    requests_before = world.simulator.stats()["requests"]
    assert asyncio.run(job_run(batch_id)) == "failed"
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "failed" and batch.failed_at
    (error,) = batch.errors.data
    assert (error.code, error.line) == ("duplicate_custom_id", 4) and "'a'" in error.message
    assert world.simulator.stats()["requests"] == requests_before  # nothing went upstream
    assert not BatchLine.objects.filter(job_id=batch_id).exists()
