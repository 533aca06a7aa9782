"""OpenAI's Files and Batch API through the unchanged ``openai`` SDK, run by real Celery workers
against the simulated upstream."""

from __future__ import annotations

import json
from decimal import Decimal

from apps.batches.models import BatchLine
from apps.usage.models import RequestLog
from tests.batches.conftest import batch_wait, chat_line, file_lines, jsonl, sdk
from tests.gateway.conftest import wait_until


def test_it_runs_a_batch_from_upload_to_output_files(world, workers):
    world.models["sim-mini"].batch_discount_percent = Decimal("50")
    world.models["sim-mini"].save()
    group = workers()
    group.start()
    client = sdk(world)
    lines = [chat_line(f"req-{n}", f"Tell me about item {n}") for n in range(20)]
    lines.insert(7, b'{"custom_id": "broken", "method": "POST", "url": ')  # not JSON
    lines.insert(12, {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "sim-mini"}})
    uploaded = client.files.create(file=jsonl(lines), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    assert client.files.retrieve(uploaded.id).filename == "input.jsonl"

    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"project": "docs"})
    assert batch.status == "validating"
    assert batch.metadata == {"project": "docs"}
    batch = batch_wait(client, batch.id, workers=group)

    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (22, 20, 2)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    output = file_lines(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"req-{n}" for n in range(20)]
    for line in output:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"]
    errors = {line["custom_id"]: line for line in file_lines(client, batch.error_file_id)}
    assert set(errors) == {None, "no-messages"}
    assert errors[None]["error"]["code"] == "invalid_json"
    assert errors["no-messages"]["response"]["status_code"] == 400
    assert errors["no-messages"]["response"]["body"]["error"]["param"] == "messages"

    rows = wait_until(lambda: list(RequestLog.objects.filter(endpoint="batch:/v1/chat/completions",
                                                             status_code=200)) if RequestLog.objects.filter(
        endpoint="batch:/v1/chat/completions", status_code=200).count() == 20 else None)
    assert rows, "the batch's usage rows were not written"
    price = world.models["sim-mini"].prices.order_by("-effective_from", "-id").first()
    for row in rows:
        assert row.request_id.startswith(batch.id + "-")
        # Answered live (the provider has no Batch API on): billed, so priced, live; the model's
        # batch discount is only for lines its provider's Batch API answers.
        assert row.cost == price.cost(input_tokens=row.input_tokens, cached_tokens=row.cached_tokens,
                                      output_tokens=row.output_tokens) > 0
    assert [b.id for b in client.batches.list()] == [batch.id]


def test_it_runs_an_embeddings_batch(world, workers):
    workers().start()
    client = sdk(world)
    lines = [{"custom_id": f"e{n}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "sim-embed", "input": f"text {n}"}} for n in range(5)]
    lines.append(chat_line("wrong-url", "hello"))
    batch = client.batches.create(input_file_id=client.files.create(file=jsonl(lines), purpose="batch").id,
                                  endpoint="/v1/embeddings", completion_window="24h")
    batch = batch_wait(client, batch.id)
    assert batch.status == "completed"
    output = file_lines(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"e{n}" for n in range(5)]
    assert len(output[0]["response"]["body"]["data"][0]["embedding"]) == 384
    (error,) = file_lines(client, batch.error_file_id)
    assert error["custom_id"] == "wrong-url" and error["error"]["code"] == "invalid_url"


def test_it_streams_file_content_back_byte_for_byte(world):
    client = sdk(world)
    payload = b"".join(json.dumps(chat_line(f"r{n}", "x" * 500)).encode() + b"\n" for n in range(3000))
    buffer = jsonl([])
    buffer.write(payload)
    buffer.seek(0)
    uploaded = client.files.create(file=buffer, purpose="batch")
    assert uploaded.bytes == len(payload)
    assert client.files.content(uploaded.id).content == payload
    assert BatchLine.objects.count() == 0
