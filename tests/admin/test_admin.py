"""The admin: every page renders for staff and only for staff; secrets never reach a page."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.cache.models import CacheEntry
from apps.catalog.models import Provider
from apps.routing.models import ComplexityIndicator, RoutingFallback, RoutingRule
from apps.tenants.models import ApiKey
from apps.tenants.selectors import key_authenticate
from apps.usage.models import RequestLog

REGISTERED = sorted(admin.site._registry, key=lambda model: model._meta.label)


@pytest.fixture
def populated(tenant_a, key_a, provider, cheap_model, premium_model, admin_user):
    Group.objects.create(name="operators")
    rule = RoutingRule.objects.create(name="simple", match_tier="simple", target=cheap_model)
    RoutingFallback.objects.create(rule=rule, model=premium_model)
    ComplexityIndicator.objects.create(phrase="what is", tier="simple")
    CacheEntry.objects.create(tenant=tenant_a, request_hash="h" * 64, prompt_text="What is Python?",
                              response={"choices": []}, expires_at=timezone.now() + timedelta(days=1),
                              embedding=[0.1] * 384, model=cheap_model, model_name="sim-mini")
    RequestLog.objects.create(tenant=tenant_a, api_key=key_a.api_key, request_id="req-1", model=cheap_model,
                              model_used="sim-mini", price=cheap_model.prices.get())


def _url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.mark.parametrize("model", REGISTERED, ids=lambda m: m._meta.label)
def test_it_renders_every_changelist_add_and_change_page_for_a_superuser(admin_client, admin_user, rf, populated,
                                                                           model):
    assert admin_client.get(_url(model, "changelist")).status_code == 200
    request = rf.get("/")
    request.user = admin_user
    if admin.site._registry[model].has_add_permission(request):
        assert admin_client.get(_url(model, "add")).status_code == 200
    obj = model.objects.first()
    assert obj is not None, f"no {model.__name__} seeded"
    assert admin_client.get(_url(model, "change", obj.pk)).status_code == 200


@pytest.mark.parametrize("model", REGISTERED, ids=lambda m: m._meta.label)
def test_it_sends_anonymous_users_to_the_login_page(client, populated, model):
    for url in (_url(model, "changelist"), _url(model, "add"), _url(model, "change", model.objects.first().pk)):
        response = client.get(url)
        assert response.status_code == 302
        assert reverse("admin:login") in response["Location"]


def test_it_never_shows_the_provider_credential(admin_client, provider):
    pages = [_url(Provider, "changelist"), _url(Provider, "change", provider.pk),
             _url(Provider, "history", provider.pk)]
    for url in pages:
        html = admin_client.get(url).content.decode()
        assert "sk-upstream-secret" not in html
    assert "set" in admin_client.get(_url(Provider, "changelist")).content.decode()
    with connection.cursor() as cursor:
        cursor.execute("SELECT credential FROM catalog_provider")
        assert "sk-upstream-secret" not in cursor.fetchone()[0]


def _provider_post(provider, **changes) -> dict:
    data = {"name": provider.name, "kind": provider.kind, "base_url": provider.base_url, "credential": "",
            "timeout_seconds": provider.timeout_seconds, "max_concurrency": provider.max_concurrency,
            "is_active": "on", "models-TOTAL_FORMS": "0", "models-INITIAL_FORMS": "0",
            "models-MIN_NUM_FORMS": "0", "models-MAX_NUM_FORMS": "1000"}
    data.update(changes)
    return data


def test_it_keeps_the_credential_on_a_blank_change_and_replaces_it_on_a_new_one(admin_client, provider):
    url = _url(Provider, "change", provider.pk)
    assert admin_client.post(url, _provider_post(provider, timeout_seconds="12")).status_code == 302
    provider.refresh_from_db()
    assert provider.credential == "sk-upstream-secret"
    assert provider.timeout_seconds == 12
    assert admin_client.post(url, _provider_post(provider, credential="sk-new")).status_code == 302
    provider.refresh_from_db()
    assert provider.credential == "sk-new"
    assert admin_client.post(url, _provider_post(provider, clear_credential="on")).status_code == 302
    provider.refresh_from_db()
    assert provider.credential == ""


def test_it_shows_a_new_keys_secret_exactly_once(admin_client, tenant_a):
    response = admin_client.post(_url(ApiKey, "add"), {"tenant": tenant_a.pk, "name": "from-admin"}, follow=True)
    assert response.status_code == 200
    html = response.content.decode()
    key = ApiKey.objects.get(name="from-admin")
    start = html.index(key.prefix)
    secret = html[start:].split("<", 1)[0]
    assert len(secret) > 40
    assert key_authenticate(secret).tenant == tenant_a
    change = admin_client.get(_url(ApiKey, "change", key.pk)).content.decode()
    assert secret not in change
    assert key.key_hash not in change
    assert secret not in admin_client.get(_url(ApiKey, "changelist")).content.decode()


def test_it_revokes_selected_keys(admin_client, key_a, key_b):
    response = admin_client.post(_url(ApiKey, "changelist"), {
        "action": "revoke_selected", "_selected_action": [key_a.api_key.pk]})
    assert response.status_code == 302
    assert key_authenticate(key_a.secret) is None
    assert key_authenticate(key_b.secret) is not None


def _logs(count: int, tenants, keys, models) -> None:
    now = timezone.now()
    RequestLog.objects.bulk_create([
        RequestLog(tenant=tenants[i % 2], api_key=keys[i % 2], request_id=f"req-{i}", model=models[i % 2],
                   model_used=models[i % 2].name, cost=Decimal("0.0001"), input_tokens=random.randint(1, 500),
                   created_at=now - timedelta(seconds=i))
        for i in range(count)
    ], batch_size=5000)


def _changelist_queries(admin_client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(_url(RequestLog, "changelist")).status_code == 200
    return len(queries)


def test_it_lists_request_logs_in_a_constant_number_of_queries(admin_client, tenant_a, tenant_b, key_a, key_b,
                                                               cheap_model, premium_model):
    tenants, keys, models = [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], [cheap_model, premium_model]
    _logs(100, tenants, keys, models)
    small = _changelist_queries(admin_client)
    _logs(9_900, tenants, keys, models)
    large = _changelist_queries(admin_client)
    assert large == small
    assert large <= 12


def test_it_does_not_let_anyone_edit_a_request_log(admin_client, populated):
    log = RequestLog.objects.get(request_id="req-1")
    response = admin_client.post(_url(RequestLog, "change", log.pk), {"cost": "99", "request_id": "forged"})
    assert response.status_code == 403
    log.refresh_from_db()
    assert log.request_id == "req-1"
    assert log.cost == Decimal("0")
