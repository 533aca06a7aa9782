"""Map-reduce jobs: maps in parallel, a hierarchical reduce when the answers overflow the
model's context window, per-item results, through a real worker."""

from __future__ import annotations

import time

from apps.catalog.models import Model
from apps.usage.models import RequestLog
from tests.batches.conftest import JOB_DEADLINE
from tests.gateway.conftest import wait_until
from tests.live import http_json


def test_it_maps_fifty_items_and_reduces_them_hierarchically(world, workers):
    Model.objects.create(name="sim-small", upstream_id="sim-mini", provider=world.provider, context_window=400,
                         max_output_tokens=64, is_free=True)
    group = workers(BATCH_TENANT_CONCURRENCY=8)
    group.start()
    auth = {"Authorization": f"Bearer {world.key_a}"}
    items = [f"city number {n}" for n in range(50)]
    status, job = http_json("POST", world.gateway.v1 + "/jobs/map-reduce", {
        "items": items, "map_prompt": "Describe {item} in one line.",
        "reduce_prompt": "Summarise these descriptions:\n{results}", "model": "sim-small", "max_tokens": 40,
    }, headers=auth)
    assert status == 200, job
    assert job["status"] == "validating" and job["request_counts"]["total"] == 0
    deadline = time.monotonic() + JOB_DEADLINE
    while job["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        assert group.procs[0].poll() is None, group.logs()[-3000:]
        time.sleep(0.3)
        job = http_json("GET", world.gateway.v1 + f"/jobs/{job['id']}", headers=auth)[1]
    assert job["status"] == "completed", job
    assert job["request_counts"] == {"total": 50, "completed": 50, "failed": 0}
    result = job["result"]
    assert result["output"]
    assert result["levels"] >= 2  # 50 answers do not fit 400 tokens: reduced in groups, then again
    assert result["reduce_calls"] > result["levels"]
    assert [item["index"] for item in job["items"]] == list(range(50))
    assert all(item["output"] and item["error"] is None for item in job["items"])
    assert job["output_file_id"] and job["error_file_id"] is None
    expected = 50 + result["reduce_calls"]
    assert wait_until(lambda: RequestLog.objects.filter(request_id__startswith=job["id"]).count() == expected)
    reduce_rows = RequestLog.objects.filter(request_id__startswith=job["id"] + "-r")
    assert reduce_rows.count() == result["reduce_calls"]
    assert all(row.input_tokens <= 400 for row in reduce_rows)
