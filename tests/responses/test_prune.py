"""Stored responses expire under their tenant's request log retention, only the tenant's own."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.responses import services
from apps.responses.models import StoredResponse
from apps.responses.tasks import prune


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
