"""Batch jobs sent to a native Anthropic provider's Message Batches API, on the simulated upstream
over HTTP (which checks ``x-api-key`` and ``anthropic-version``), run by real Celery workers and
beat's poller."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import httpx
import openai
import pytest

from apps.batches.models import BatchJob
from apps.batches.runner import job_run
from tests.batches.conftest import JOB_DEADLINE, batch_wait, chat_line, file_lines, sdk
from tests.batches.conftest import sim_batches as _sim_batches
from tests.batches.test_provider_batches import PROVIDER_BATCH_REASON, _rows, _submit
from tests.gateway.conftest import wait_until

NATIVE = "claude-sim"  # served by the simulator's Messages API as sim-mini
SYSTEM = {"role": "system", "content": [{"type": "text", "cache_control": {"type": "ephemeral"},
                                         "text": "A long and stable system prompt about freight yards and their "
                                                 "sidings, kept in the provider's prompt cache."}]}


@pytest.fixture
def anthropic_world(world):
    """A native Anthropic provider (the simulator's Messages API) with its batch API on, and a
    model with prompt-cache prices and Anthropic's 50% batch discount."""
    from apps.catalog.models import Model, Provider

    provider = Provider.objects.create(name="sim-anthropic", kind=Provider.Kind.ANTHROPIC, batch_api=True,
                                       base_url=world.simulator.v1, credential="sk-ant-sim", timeout_seconds=5.0)
    world.anthropic = provider
    world.models[NATIVE] = Model.objects.create(
        name=NATIVE, upstream_id="sim-mini", provider=provider, tier=Model.Tier.SIMPLE,
        input_price_per_million=Decimal("3"), cached_input_price_per_million=Decimal("0.30"),
        cache_write_price_per_million=Decimal("3.75"), output_price_per_million=Decimal("15"),
        max_output_tokens=4096, batch_discount_percent=Decimal("50"))
    assert wait_until(lambda: NATIVE in {m.id for m in sdk(world).models.list()})
    _sim_batches(world, delay_ms=200)
    return world


def _line(custom_id: str, prompt: str, **body) -> dict:
    line = chat_line(custom_id, prompt, model=NATIVE)
    line["body"].update(body)
    return line


def _price(world):
    return world.models[NATIVE].prices.order_by("-effective_from", "-id").first()


def test_it_sends_a_job_to_anthropics_message_batches_at_the_batch_price(anthropic_world, workers):
    world = anthropic_world
    group = workers(BATCH_UPSTREAM_POLL_EVERY=0.5)
    group.start(beat=True)
    client = sdk(world)
    lines = [_line(f"q {n}/é", f"Tell me about yard {n}") for n in range(3)]  # ids Anthropic would refuse
    lines += [_line("cached-1", "Which yard?", messages=[SYSTEM, {"role": "user", "content": "Which yard?"}]),
              _line("cached-2", "Which siding?", messages=[SYSTEM, {"role": "user", "content": "Which siding?"}]),
              _line("two-choices", "Hi", n=2),  # Anthropic has no n: answered here, never sent
              {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions", "body": {"model": NATIVE}}]
    batch_id = _submit(client, lines)
    batch = batch_wait(client, batch_id, workers=group)

    assert batch.status == "completed", group.logs()[-3000:]
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (7, 5, 2)
    job = BatchJob.objects.get(pk=batch_id)
    assert job.upstream_batch_id.startswith("msgbatch_sim") and job.upstream["provider_id"] == world.anthropic.pk
    assert _sim_batches(world)["message_batches"] == 1 and _sim_batches(world)["batches"] == 0
    assert world.simulator.stats()["by_model"] == {"sim-mini": 5}

    output = file_lines(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == ["q 0/é", "q 1/é", "q 2/é", "cached-1", "cached-2"]
    for line in output:
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"].startswith(batch_id + "-")
        assert body["object"] == "chat.completion" and body["model"] == NATIVE
        assert body["choices"][0]["message"]["content"] and body["choices"][0]["finish_reason"] == "stop"
    errors = {line["custom_id"]: line for line in file_lines(client, batch.error_file_id)}
    assert errors["two-choices"]["response"]["status_code"] == 400
    assert errors["two-choices"]["response"]["body"]["error"]["param"] == "n"
    assert errors["no-messages"]["response"]["body"]["error"]["param"] == "messages"

    rows = {row.request_id: row for row in _rows(batch_id, 5)}
    assert len(rows) == 5  # lines never sent have no usage row: nothing was billed
    price = _price(world)
    for row in rows.values():
        assert row.route_reason == PROVIDER_BATCH_REASON and row.status_code == 200
        assert row.input_tokens > 0 and row.output_tokens > 0 and row.tenant_id == world.tenant_a.pk
        tokens = {"input_tokens": row.input_tokens, "cached_tokens": row.cached_tokens,
                  "cache_write_tokens": row.cache_write_tokens, "output_tokens": row.output_tokens}
        assert row.cost == price.cost(**tokens, batch=True) and row.cost * 2 == price.cost(**tokens)
    # The two lines sharing a cached system prompt: one wrote the provider's cache, the other read it.
    one, two = rows[f"{batch_id}-3"], rows[f"{batch_id}-4"]
    written = max(one.cache_write_tokens, two.cache_write_tokens)
    assert written > 0
    assert sorted([(one.cached_tokens, one.cache_write_tokens), (two.cached_tokens, two.cache_write_tokens)]) == [
        (0, written), (written, 0)]
    by_id = {line["custom_id"]: line["response"]["body"]["usage"] for line in output}
    assert by_id["cached-1"]["prompt_tokens"] == one.input_tokens

    other = sdk(world, world.key_b)
    for read in (lambda: other.batches.retrieve(batch_id), lambda: other.files.content(batch.output_file_id)):
        with pytest.raises(openai.NotFoundError):
            read()


def test_it_resumes_polling_anthropic_after_its_worker_is_killed_without_submitting_twice(anthropic_world, workers):
    world = anthropic_world
    _sim_batches(world, hold=True)
    group = workers(BATCH_UPSTREAM_POLL_EVERY=0.5, BATCH_LEASE_SECONDS=2)
    first = group.start(beat=True)
    client = sdk(world)
    batch_id = _submit(client, [_line(f"line-{n}", f"Item {n}") for n in range(4)])
    assert wait_until(lambda: f"batch job {batch_id}: waiting" in group.logs(), timeout=JOB_DEADLINE), \
        group.logs()[-3000:]
    group.kill(first)
    upstream_id = BatchJob.objects.get(pk=batch_id).upstream_batch_id
    assert upstream_id.startswith("msgbatch_sim")

    group.start(beat=True)
    _sim_batches(world, hold=False)
    batch = batch_wait(client, batch_id, workers=group)
    assert batch.status == "completed" and batch.request_counts.completed == 4, group.logs()[-3000:]
    assert BatchJob.objects.get(pk=batch_id).upstream_batch_id == upstream_id
    assert _sim_batches(world)["message_batches"] == 1
    time.sleep(1.5)  # a few more polls: none writes the lines or their usage again
    assert len(_rows(batch_id, 4)) == 4


def test_it_maps_expired_anthropic_requests_to_the_error_file(anthropic_world):
    world = anthropic_world
    _sim_batches(world, expire_next=True)
    client = sdk(world)
    batch_id = _submit(client, [_line(f"line-{n}", f"Item {n}") for n in range(2)])
    assert asyncio.run(job_run(batch_id)) == "submitted"
    outcome, deadline = "waiting", time.monotonic() + 30
    while outcome == "waiting" and time.monotonic() < deadline:
        time.sleep(0.2)
        outcome = asyncio.run(job_run(batch_id))
    assert outcome == "completed"
    batch = client.batches.retrieve(batch_id)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 2)
    errors = file_lines(client, batch.error_file_id)
    assert [(e["custom_id"], e["response"], e["error"]["code"]) for e in errors] == [
        ("line-0", None, "provider_batch_expired"), ("line-1", None, "provider_batch_expired")]
    assert not _rows(batch_id, 0)
    assert world.simulator.stats()["requests"] == 0


def test_it_adopts_the_anthropic_batch_a_killed_worker_created_but_did_not_save(anthropic_world):
    world = anthropic_world
    client = sdk(world)
    batch_id = _submit(client, [_line(f"line-{n}", f"Item {n}") for n in range(3)])
    assert asyncio.run(job_run(batch_id)) == "submitted"
    created = BatchJob.objects.get(pk=batch_id).upstream_batch_id
    BatchJob.objects.filter(pk=batch_id).update(upstream_batch_id="")
    assert asyncio.run(job_run(batch_id)) == "submitted"
    assert BatchJob.objects.get(pk=batch_id).upstream_batch_id == created
    assert _sim_batches(world)["message_batches"] == 1


def test_the_simulated_message_batches_api_checks_anthropics_headers(anthropic_world):
    base = anthropic_world.simulator.v1 + "/messages/batches"
    request = {"requests": [{"custom_id": "a", "params": {"model": "sim-mini", "max_tokens": 10,
                                                          "messages": [{"role": "user", "content": "Hi"}]}}]}
    assert httpx.post(base, json=request, headers={"anthropic-version": "2023-06-01"}).status_code == 401
    assert httpx.post(base, json=request, headers={"x-api-key": "k"}).status_code == 400
    bad_id = {"requests": [{"custom_id": "not ok!", "params": request["requests"][0]["params"]}]}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    refused = httpx.post(base, json=bad_id, headers=headers)
    assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"
    created = httpx.post(base, json=request, headers=headers).json()
    assert created["processing_status"] == "in_progress" and created["results_url"] is None
    assert wait_until(lambda: httpx.get(f"{base}/{created['id']}", headers=headers).json()["processing_status"]
                      == "ended")
    ended = httpx.get(f"{base}/{created['id']}", headers=headers).json()
    assert ended["request_counts"]["succeeded"] == 1
    (result,) = [line for line in httpx.get(ended["results_url"], headers=headers).text.splitlines() if line]
    assert '"type":"succeeded"' in result and '"custom_id":"a"' in result


def test_it_fails_every_line_once_when_anthropic_refuses_the_batch(anthropic_world):
    world = anthropic_world
    world.anthropic.credential = ""  # no x-api-key: Anthropic answers 401, and will again
    world.anthropic.save()
    client = sdk(world)
    batch_id = _submit(client, [_line(f"line-{n}", f"Item {n}") for n in range(2)])
    assert asyncio.run(job_run(batch_id)) == "completed"
    batch = client.batches.retrieve(batch_id)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 2)
    errors = file_lines(client, batch.error_file_id)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("line-0", "provider_batch_refused"), ("line-1", "provider_batch_refused")]
    assert "401" in errors[0]["error"]["message"]
    assert _sim_batches(world)["message_batches"] == 0 and not _rows(batch_id, 0)
