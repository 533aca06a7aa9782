"""Per-tenant request log retention: old rows go in batches, only once rolled up, and only the
tenant's own."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.reporting.services import usage_rollup
from apps.usage import services
from apps.usage.models import RequestLog
from apps.usage.services import usage_prune
from apps.usage.tasks import prune


def _rows(tenant, count, *, days_ago):
    now = timezone.now()
    RequestLog.objects.bulk_create([RequestLog(tenant=tenant, request_id=f"{tenant.slug}-{days_ago}-{n}",
                                               created_at=now - timedelta(days=days_ago, minutes=n))
                                    for n in range(count)])


@pytest.mark.django_db(transaction=True)
def test_it_deletes_only_a_tenants_own_rows_past_its_retention(tenant_a, tenant_b, monkeypatch):
    tenant_a.log_retention_days = 30
    tenant_a.save()
    _rows(tenant_a, 23, days_ago=40)
    _rows(tenant_a, 5, days_ago=10)
    _rows(tenant_b, 7, days_ago=400)  # no retention set: kept
    usage_rollup()
    usage_rollup()
    assert usage_prune(batch_size=5) == 23
    assert RequestLog.objects.filter(tenant=tenant_a).count() == 5
    assert RequestLog.objects.filter(tenant=tenant_b).count() == 7
    # Time moves on (through the module's clock seam): the rest ages out too.
    later = timezone.now() + timedelta(days=25)
    monkeypatch.setattr(services, "_now", lambda: later)
    assert prune(batch_size=5) == 5
    assert not RequestLog.objects.filter(tenant=tenant_a).exists()


@pytest.mark.django_db(transaction=True)
def test_it_keeps_rows_the_rollups_have_not_summed_yet(tenant_a):
    tenant_a.log_retention_days = 1
    tenant_a.save()
    _rows(tenant_a, 6, days_ago=3)
    assert usage_prune() == 0  # no rollup has run: the rows are kept for it
    usage_rollup()
    assert usage_prune() == 0  # the first run only noted where the log ends
    usage_rollup()
    assert usage_prune() == 6
