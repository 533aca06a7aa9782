"""Stored responses expire under their tenant's request log retention, only the tenant's own; a
background response whose run died is failed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.responses import services
from apps.responses.models import StoredResponse
from apps.responses.tasks import fail_stale, prune


def _stored(tenant, count, *, days_ago):
    now = timezone.now()
    StoredResponse.objects.bulk_create([
        StoredResponse(tenant=tenant, response_id=f"resp_{tenant.slug}{days_ago}x{n}", request_id=f"req_{n}",
                       status="completed", response={}, input_items=[], context=[],
                       created_at=now - timedelta(days=days_ago, minutes=n)) for n in range(count)])


@pytest.mark.django_db(transaction=True)
def test_it_deletes_only_a_tenants_own_responses_past_its_retention(tenant_a, tenant_b, monkeypatch):
    tenant_a.log_retention_days = 30
    tenant_a.save()
    _stored(tenant_a, 12, days_ago=40)
    _stored(tenant_a, 3, days_ago=10)
    _stored(tenant_b, 4, days_ago=400)  # no retention set: kept
    assert services.responses_prune(batch_size=5) == 12
    assert StoredResponse.objects.filter(tenant=tenant_a).count() == 3
    assert StoredResponse.objects.filter(tenant=tenant_b).count() == 4
    later = timezone.now() + timedelta(days=25)
    monkeypatch.setattr(services, "_now", lambda: later)
    assert prune(batch_size=5) == 3
    assert StoredResponse.objects.filter(tenant=tenant_b).count() == 4


@pytest.mark.django_db(transaction=True)
def test_it_fails_a_background_response_whose_run_died_and_only_that_one(tenant_a, tenant_b):
    now = timezone.now()
    created = {"type": "response.created", "response": {"status": "queued"}, "sequence_number": 0}

    def running(tenant, name, *, stale_at, background=True, status="in_progress"):
        return StoredResponse.objects.create(
            tenant=tenant, response_id=name, request_id="req_" + name, status=status, background=background,
            response={"id": name, "status": status, "output": []}, input_items=[], context=[],
            events=[created], stale_at=stale_at)

    dead = running(tenant_a, "resp_dead", stale_at=now - timedelta(seconds=5))
    queued = running(tenant_b, "resp_queued", stale_at=now - timedelta(seconds=5), status="queued")
    alive = running(tenant_a, "resp_alive", stale_at=now + timedelta(seconds=60))
    done = running(tenant_a, "resp_done", stale_at=now - timedelta(seconds=5), status="completed")
    assert fail_stale() == 2
    for stored in (dead, queued):
        stored.refresh_from_db()
        assert stored.status == stored.response["status"] == "failed"
        assert stored.response["error"]["code"] == "server_error"
        assert [(e["type"], e["sequence_number"]) for e in stored.events] == [("response.created", 0),
                                                                            ("response.failed", 1)]
        assert stored.events[-1]["response"]["status"] == "failed"
    for stored, status in ((alive, "in_progress"), (done, "completed")):
        stored.refresh_from_db()
        assert stored.status == status and len(stored.events) == 1
    assert services.responses_stale_fail() == 0
