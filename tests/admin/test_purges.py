"""Purging the cache from the admin: every purge first says what it will delete, tenant by
tenant, and deletes only once confirmed; it never reaches a tenant the operator did not select
or filter to."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.cache.models import CacheEntry, CachePurge
from tests.admin.conftest import page_forms

CHANGELIST = reverse("admin:cache_cacheentry_changelist")


@pytest.fixture
def entries(tenant_a, tenant_b, cheap_model, premium_model):
    """Acme: three sim-mini and two sim-premium entries; Globex: four sim-mini and one sim-premium."""
    expires = timezone.now() + timedelta(days=1)
    made = {}
    for tenant, model, count in ((tenant_a, cheap_model, 3), (tenant_a, premium_model, 2),
                                 (tenant_b, cheap_model, 4), (tenant_b, premium_model, 1)):
        made[tenant.slug, model.name] = [
            CacheEntry.objects.create(tenant=tenant, request_hash=f"{tenant.slug}-{model.name}-{i}".ljust(64, "0"),
                                      prompt_text=f"{tenant.slug} question {i}", response={}, expires_at=expires,
                                      model=model, model_name=model.name)
            for i in range(count)]
    return made


def _left() -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for slug, name in CacheEntry.objects.values_list("tenant__slug", "model_name"):
        counts[slug, name] = counts.get((slug, name), 0) + 1
    return counts


ALL = {("acme", "sim-mini"): 3, ("acme", "sim-premium"): 2, ("globex", "sim-mini"): 4, ("globex", "sim-premium"): 1}


def _rows(html: str) -> list[tuple[str, str, str]]:
    """The confirmation table: (tenant, what, count) per row."""
    rows = []
    for line in html.splitlines():
        if '<td class="confirm-tenant">' in line:
            cells = [part.split("</td>")[0] for part in line.split("<td class=")[1:]]
            rows.append(tuple(cell.split(">", 1)[1] for cell in cells))
    return rows


def _confirm(admin_client, url: str, page) -> object:
    """Post back the confirmation page's form, with the values it rendered."""
    forms = [fields for _, fields in page_forms(page.content.decode()) if ("confirm", "yes") in fields]
    assert len(forms) == 1
    data: dict[str, list[str]] = {}
    for name, value in forms[0]:
        data.setdefault(name, []).append(value)
    return admin_client.post(url, data)


def test_it_asks_before_purging_a_models_entries_and_purges_them_in_the_filtered_tenant_only(admin_client, entries,
                                                                                             tenant_a):
    url = f"{CHANGELIST}?tenant__id__exact={tenant_a.pk}"
    one = entries["acme", "sim-mini"][0]
    page = admin_client.post(url, {"action": "purge_models", "_selected_action": [one.pk], "index": "0"})
    assert page.status_code == 200
    assert _rows(page.content.decode()) == [("Acme", "entries answered by sim-mini", "3")]
    assert "Globex" not in page.content.decode()
    assert _left() == ALL  # nothing deleted before the answer
    assert not CachePurge.objects.exists()
    done = _confirm(admin_client, url, page)
    assert done.status_code == 302
    assert _left() == {("acme", "sim-premium"): 2, ("globex", "sim-mini"): 4, ("globex", "sim-premium"): 1}
    # Recorded for batch workers' waiting entries: this tenant's and model's only.
    assert list(CachePurge.objects.values_list("tenant_id", "model_name")) == [(tenant_a.pk, "sim-mini")]


def test_it_asks_before_purging_a_whole_tenant_and_purges_that_tenant_only(admin_client, entries, tenant_a):
    url = f"{CHANGELIST}?tenant__id__exact={tenant_a.pk}"
    one = entries["acme", "sim-premium"][0]
    page = admin_client.post(url, {"action": "purge_tenants", "_selected_action": [one.pk], "index": "0"})
    assert page.status_code == 200
    assert _rows(page.content.decode()) == [("Acme", "every entry", "5")]
    assert _left() == ALL
    assert _confirm(admin_client, url, page).status_code == 302
    assert _left() == {("globex", "sim-mini"): 4, ("globex", "sim-premium"): 1}
    assert list(CachePurge.objects.values_list("tenant_id", "model_name")) == [(tenant_a.pk, None)]


def test_it_purges_only_the_selected_entries_once_confirmed(admin_client, entries, tenant_a, tenant_b):
    chosen = [entries["acme", "sim-mini"][0].pk, *(entry.pk for entry in entries["globex", "sim-mini"][1:3])]
    page = admin_client.post(CHANGELIST, {"action": "purge_selected", "_selected_action": chosen, "index": "0"})
    assert sorted(_rows(page.content.decode())) == [("Acme", "selected entries", "1"),
                                                    ("Globex", "selected entries", "2")]
    assert CacheEntry.objects.count() == 10
    assert _confirm(admin_client, CHANGELIST, page).status_code == 302
    assert CacheEntry.objects.count() == 7
    assert not CacheEntry.objects.filter(pk__in=chosen).exists()


def test_it_purges_every_filtered_entry_with_select_all_and_no_other_tenants(admin_client, entries, tenant_b):
    url = f"{CHANGELIST}?tenant__id__exact={tenant_b.pk}"
    one = entries["globex", "sim-premium"][0]
    page = admin_client.post(url, {"action": "purge_selected", "_selected_action": [one.pk], "select_across": "1",
                                   "index": "0"})
    assert _rows(page.content.decode()) == [("Globex", "selected entries", "5")]
    assert _confirm(admin_client, url, page).status_code == 302
    assert _left() == {("acme", "sim-mini"): 3, ("acme", "sim-premium"): 2}


def test_it_does_not_offer_the_delete_action_that_lists_every_entry(admin_client, entries):
    page = admin_client.get(CHANGELIST).content.decode()
    assert 'value="delete_selected"' not in page
    assert 'value="purge_selected"' in page


def test_it_purges_a_tenants_cache_from_the_tenant_list_once_confirmed(admin_client, entries, tenant_a, tenant_b):
    url = reverse("admin:tenants_tenant_changelist")
    page = admin_client.post(url, {"action": "purge_cache", "_selected_action": [tenant_b.pk], "index": "0"})
    assert _rows(page.content.decode()) == [("Globex", "every cache entry", "5")]
    assert _left() == ALL
    assert _confirm(admin_client, url, page).status_code == 302
    assert _left() == {("acme", "sim-mini"): 3, ("acme", "sim-premium"): 2}
    assert list(CachePurge.objects.values_list("tenant_id", "model_name")) == [(tenant_b.pk, None)]


LIVE_PURGES = {
    "purge_models": (("Acme", "entries answered by sim-mini", "3"),
                     {("acme", "sim-premium"): 2, ("globex", "sim-mini"): 4, ("globex", "sim-premium"): 1}),
    "purge_tenants": (("Acme", "every entry", "5"), {("globex", "sim-mini"): 4, ("globex", "sim-premium"): 1}),
}


@pytest.mark.parametrize("action", LIVE_PURGES)
def test_it_purges_in_the_filtered_tenant_only_once_confirmed_on_the_running_server(operator_browser, entries,
                                                                                    tenant_a, action):
    row, left = LIVE_PURGES[action]
    url = f"{CHANGELIST}?tenant__id__exact={tenant_a.pk}"
    page = operator_browser.post(url, [("action", action), ("index", "0"),
                                       ("_selected_action", entries["acme", "sim-mini"][1].pk)])
    assert page.status_code == 200, page.text[:500]
    assert _rows(page.text) == [row]
    assert _left() == ALL
    done = operator_browser.submit(url, page, field="confirm")
    assert done.status_code == 302, done.text[:500]
    assert _left() == left


def test_it_does_not_let_an_operator_without_cache_delete_rights_purge_from_the_tenant_list(client, entries,
                                                                                            tenant_a,
                                                                                            django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", password="unused-password", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_tenant", "change_tenant"]))
    client.force_login(user)
    url = reverse("admin:tenants_tenant_changelist")
    assert 'value="purge_cache"' not in client.get(url).content.decode()
    client.post(url, {"action": "purge_cache", "_selected_action": [tenant_a.pk], "confirm": "yes"})
    assert _left() == ALL


def _counts(html: str) -> list[tuple[str, str]]:
    """The per-tenant table of Django's "delete selected" page: (tenant, count) per row."""
    return [(row[0], row[1]) for row in _rows(html)]


def test_it_counts_per_tenant_what_deleting_selected_keys_would_delete_and_asks_first(admin_client, tenant_a,
                                                                                        tenant_b):
    from apps.tenants.models import ApiKey
    from apps.tenants.services import key_create

    keys = [key_create(tenant=tenant, name=f"key-{i}").api_key.pk
            for i, tenant in enumerate((tenant_a, tenant_a, tenant_b))]
    url = reverse("admin:tenants_apikey_changelist")
    page = admin_client.post(url, {"action": "delete_selected", "_selected_action": keys, "index": "0"})
    assert _counts(page.content.decode()) == [("Acme", "2"), ("Globex", "1")]
    assert ApiKey.objects.count() == 3
    assert admin_client.post(url, {"action": "delete_selected", "_selected_action": keys, "post": "yes"}
                             ).status_code == 302
    assert ApiKey.objects.count() == 0


def test_it_counts_global_rules_apart_when_deleting_rules(admin_client, tenant_b, cheap_model):
    from apps.routing.models import RoutingRule

    rules = [RoutingRule.objects.create(name="everyone", target=cheap_model).pk,
             RoutingRule.objects.create(name="globex only", tenant=tenant_b, target=cheap_model).pk]
    page = admin_client.post(reverse("admin:routing_routingrule_changelist"),
                             {"action": "delete_selected", "_selected_action": rules, "index": "0"})
    assert _counts(page.content.decode()) == [("(global)", "1"), ("Globex", "1")]
    assert RoutingRule.objects.count() == 2
