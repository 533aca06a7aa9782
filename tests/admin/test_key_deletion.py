"""API keys that made requests are revoked, never deleted: their request-log rows keep the key
that made them. A key that never made a request can still be deleted."""

from __future__ import annotations

import pytest
from django.db.models import ProtectedError
from django.urls import reverse

from apps.tenants.models import ApiKey
from apps.tenants.selectors import key_authenticate
from apps.usage.models import RequestLog
from tests.admin.conftest import page_forms


@pytest.fixture
def used_key(tenant_a, key_a):
    RequestLog.objects.create(tenant=tenant_a, api_key=key_a.api_key, request_id="req-used")
    return key_a


def _delete_url(key) -> str:
    return reverse("admin:tenants_apikey_delete", args=[key.api_key.pk])


def _log_key_id() -> int | None:
    return RequestLog.objects.get(request_id="req-used").api_key_id


def test_it_refuses_to_delete_a_key_with_usage_and_offers_to_revoke_it(admin_client, used_key):
    page = admin_client.get(_delete_url(used_key))
    html = page.content.decode()
    assert "revoke the key instead" in html
    assert 'name="post"' not in html  # no "Yes, I'm sure" to press
    admin_client.post(_delete_url(used_key), {"post": "yes"})
    assert ApiKey.objects.filter(pk=used_key.api_key.pk).exists()
    assert _log_key_id() == used_key.api_key.pk
    revoke = [fields for attrs, fields in page_forms(html) if ("action", "revoke_selected") in fields]
    assert revoke == [[("csrfmiddlewaretoken", revoke[0][0][1]), ("action", "revoke_selected"),
                       ("_selected_action", str(used_key.api_key.pk)), ("index", "0")]]
    assert admin_client.post(reverse("admin:tenants_apikey_changelist"), dict(revoke[0])).status_code == 302
    assert key_authenticate(used_key.secret) is None
    assert _log_key_id() == used_key.api_key.pk


def test_it_refuses_a_bulk_delete_that_includes_a_key_with_usage(admin_client, used_key, key_b):
    changelist = reverse("admin:tenants_apikey_changelist")
    selected = [used_key.api_key.pk, key_b.api_key.pk]
    page = admin_client.post(changelist, {"action": "delete_selected", "_selected_action": selected, "index": "0"})
    assert "revoke the key instead" in page.content.decode()
    admin_client.post(changelist, {"action": "delete_selected", "_selected_action": selected, "post": "yes"})
    assert ApiKey.objects.filter(pk__in=selected).count() == 2
    assert _log_key_id() == used_key.api_key.pk


def test_it_protects_a_used_keys_rows_from_an_orm_delete(used_key):
    with pytest.raises(ProtectedError):
        used_key.api_key.delete()
    assert _log_key_id() == used_key.api_key.pk


def test_it_deletes_a_key_that_never_made_a_request(admin_client, used_key, key_b):
    assert "revoke the key instead" not in admin_client.get(_delete_url(key_b)).content.decode()
    assert admin_client.post(_delete_url(key_b), {"post": "yes"}).status_code == 302
    assert not ApiKey.objects.filter(pk=key_b.api_key.pk).exists()
    assert key_authenticate(key_b.secret) is None


def test_it_keeps_a_used_key_on_its_rows_when_deleted_on_the_running_server(operator_browser, used_key):
    url = _delete_url(used_key)
    page = operator_browser.get(url)
    assert "revoke the key instead" in page.text
    refused = operator_browser.post(url, {"post": "yes"})
    assert refused.status_code == 200  # the same refusal, nothing deleted
    assert ApiKey.objects.filter(pk=used_key.api_key.pk).exists()
    assert _log_key_id() == used_key.api_key.pk
    revoked = operator_browser.submit(reverse("admin:tenants_apikey_changelist"), page, field="_selected_action")
    assert revoked.status_code == 302, revoked.text[:500]
    assert ApiKey.objects.get(pk=used_key.api_key.pk).revoked_at is not None
    assert _log_key_id() == used_key.api_key.pk
