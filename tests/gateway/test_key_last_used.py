"""``last_used_at`` of an API key, against a live gateway: written soon after the key is used, on
the hot path's doors and the management API alike, but not once per request; another tenant's
keys are untouched."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from apps.tenants.models import ApiKey
from apps.tenants.services import key_create
from tests.gateway.conftest import request_logs, wait_until


def _chat(world, key: str) -> None:
    answer = httpx.post(world.gateway.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"},
                        json={"model": "sim-mini", "messages": [{"role": "user", "content": "Hello"}]}, timeout=30)
    assert answer.status_code == 200


def test_it_records_a_keys_last_use_off_the_request_path_at_most_once_a_minute(world):
    # The world's fixture used tenant A's key (to wait for the catalog); B's is fresh.
    before = datetime.now(UTC)
    _chat(world, world.key_b)
    first = wait_until(lambda: ApiKey.objects.get(tenant=world.tenant_b).last_used_at)
    assert first is not None and first >= before
    for _ in range(5):
        _chat(world, world.key_b)
    # The flush that wrote these rows saw the key used again, within the minute: no new write.
    request_logs(6, tenant=world.tenant_b)
    assert ApiKey.objects.get(tenant=world.tenant_b).last_used_at == first
    a_last = ApiKey.objects.get(tenant=world.tenant_a).last_used_at
    assert a_last is None or a_last < before


def test_it_records_the_last_use_of_a_key_on_the_management_api(world):
    created = key_create(tenant=world.tenant_a, name="reports")
    response = httpx.get(world.gateway.v1 + "/usage", headers={"Authorization": f"Bearer {created.secret}"},
                         timeout=30)
    assert response.status_code == 200
    assert wait_until(lambda: ApiKey.objects.get(pk=created.api_key.pk).last_used_at) is not None
    assert ApiKey.objects.get(tenant=world.tenant_b).last_used_at is None
