"""API keys: shown once, stored as a hash, refused when revoked or expired."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from apps.tenants.models import ApiKey
from apps.tenants.selectors import key_authenticate
from apps.tenants.services import key_create, key_hash, key_revoke
from tests.live import database_url_for_tests

REPO = Path(__file__).resolve().parents[2]


def test_it_returns_the_secret_once_and_stores_only_a_hash(tenant_a):
    created = key_create(tenant=tenant_a, name="ci")
    assert created.secret.startswith("sk-sy-")
    assert len(created.secret) > 40
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM tenants_apikey WHERE id = %s", [created.api_key.pk])
        row = cursor.fetchone()
    assert all(created.secret not in str(value) for value in row)
    stored = ApiKey.objects.get(pk=created.api_key.pk)
    assert stored.key_hash == key_hash(created.secret)
    assert created.secret.startswith(stored.prefix)
    assert not hasattr(stored, "secret")


def test_it_authenticates_a_good_key_for_its_own_tenant(key_a, key_b, tenant_a):
    found = key_authenticate(key_a.secret)
    assert found is not None
    assert found.tenant == tenant_a
    assert key_authenticate(key_b.secret).tenant != tenant_a


def test_it_refuses_a_wrong_secret_with_a_known_prefix(key_a):
    tampered = key_a.secret[:-4] + ("aaaa" if not key_a.secret.endswith("aaaa") else "bbbb")
    assert key_authenticate(tampered) is None
    assert key_authenticate("") is None
    assert key_authenticate("sk-sy-") is None
    assert key_authenticate("Bearer " + key_a.secret) is None


def test_it_refuses_a_revoked_key(key_a):
    key_revoke(api_key=key_a.api_key)
    assert key_authenticate(key_a.secret) is None


def test_it_refuses_an_expired_key(tenant_a):
    created = key_create(tenant=tenant_a, expires_at=timezone.now() + timedelta(hours=1))
    assert key_authenticate(created.secret) is not None
    assert key_authenticate(created.secret, now=timezone.now() + timedelta(hours=2)) is None


def test_it_refuses_keys_of_an_inactive_tenant(key_a, tenant_a):
    tenant_a.is_active = False
    tenant_a.save()
    assert key_authenticate(key_a.secret) is None


def test_it_prints_only_the_secret_from_create_api_key(tenant_a, django_db_blocker):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("create_api_key", "--tenant", tenant_a.slug, "--name", "script", stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert key_authenticate(lines[0]).tenant == tenant_a


def test_it_exits_nonzero_for_an_unknown_tenant(db):
    env = {**os.environ, "DATABASE_URL": database_url_for_tests()}
    done = subprocess.run([sys.executable, "manage.py", "create_api_key", "--tenant", "no-such-tenant"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0
    assert done.stdout == ""
    assert "no-such-tenant" in done.stderr


def _spy_compare_digest(monkeypatch, module) -> list[tuple]:
    import hmac

    calls: list[tuple] = []
    original = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(module.hmac, "compare_digest", spy)
    return calls


def test_it_compares_the_management_apis_keys_in_constant_time(key_a, monkeypatch):
    from apps.tenants import selectors

    calls = _spy_compare_digest(monkeypatch, selectors)
    assert key_authenticate(key_a.secret[:-4] + "zzzz") is None
    assert key_authenticate(key_a.secret) is not None
    assert [b for _, b in calls] == [key_hash(key_a.secret[:-4] + "zzzz"), key_hash(key_a.secret)]


def test_it_compares_the_gateways_keys_in_constant_time(key_a, monkeypatch):
    """Every door of the gateway (chat, Messages' x-api-key, WebSocket, /v1/complete) goes
    through Runtime.authenticate."""
    import asyncio

    from apps.core.errors import AuthenticationFailed
    from apps.gateway import runtime as state_module
    from apps.gateway.snapshot import key_info_load

    gateway = state_module.Runtime()
    gateway.keys[key_a.api_key.prefix] = key_info_load(key_a.api_key.prefix)  # warm: no database read below
    calls = _spy_compare_digest(monkeypatch, state_module)
    forged = key_a.secret[:-4] + "zzzz"
    with pytest.raises(AuthenticationFailed):
        asyncio.run(gateway.authenticate("Bearer " + forged))
    assert asyncio.run(gateway.authenticate("Bearer " + key_a.secret)).id == key_a.api_key.pk
    assert [b for _, b in calls] == [key_hash(forged), key_hash(key_a.secret)]
