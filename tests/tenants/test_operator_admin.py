"""The tenant and API key pages as an operator uses them: everything of a tenant one click away,
a new key's secret on a page of its own, shown once, and a revoke button that asks first."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from apps.tenants.models import ApiKey
from apps.tenants.selectors import key_authenticate
from apps.tenants.services import key_create


def test_the_tenant_page_leads_to_everything_of_the_tenants(admin_client, tenant_a):
    page = admin_client.get(reverse("admin:tenants_tenant_change", args=[tenant_a.pk])).content.decode()
    pk = tenant_a.pk
    for url in (f"/admin/tenants/apikey/add/?tenant={pk}", f"/admin/tenants/apikey/?tenant__id__exact={pk}",
                f"/admin/routing/routingrule/?scope={pk}", f"/admin/cache/cacheentry/?tenant__id__exact={pk}",
                f"/admin/usage/requestlog/?tenant__id__exact={pk}", f"/admin/usage/feedback/?tenant__id__exact={pk}",
                f"/admin/dashboard/?tenant={pk}"):
        assert f'href="{url}"' in page, url
        assert admin_client.get(url).status_code == 200, url
    add = admin_client.get(f"/admin/tenants/apikey/add/?tenant={tenant_a.pk}").content.decode()
    assert f'<option value="{tenant_a.pk}" selected>' in add


def test_a_new_keys_secret_is_shown_once_on_its_own_page(admin_client, client, django_user_model, tenant_a):
    response = admin_client.post(reverse("admin:tenants_apikey_add"), {"tenant": tenant_a.pk, "name": "ci"},
                                 follow=True)
    key = ApiKey.objects.get(name="ci")
    page = response.content.decode()
    secret = page.split('id="sy-new-key" type="text" readonly value="', 1)[1].split('"', 1)[0]
    assert key_authenticate(secret).pk == key.pk
    assert 'id="sy-copy-key"' in page and "Copy this key now" in page
    again = admin_client.get(reverse("admin:tenants_apikey_created", args=[key.pk])).content.decode()
    assert secret not in again and "cannot be shown again" in again
    # Another staff member's session never holds it.
    other = django_user_model.objects.create_user("other", password="unused-password", is_staff=True)
    other.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    client.force_login(other)
    assert secret not in client.get(reverse("admin:tenants_apikey_created", args=[key.pk])).content.decode()


def test_revoke_asks_first_and_needs_the_change_permission(admin_client, client, django_user_model, tenant_a):
    made = key_create(tenant=tenant_a, name="to-revoke")
    key = made.api_key
    change = admin_client.get(reverse("admin:tenants_apikey_change", args=[key.pk])).content.decode()
    revoke_url = reverse("admin:tenants_apikey_revoke", args=[key.pk])
    assert f'href="{revoke_url}"' in change
    viewer = django_user_model.objects.create_user("viewer", password="unused-password", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    client.force_login(viewer)
    assert client.post(revoke_url).status_code == 403
    assert key_authenticate(made.secret) is not None
    asked = admin_client.get(revoke_url)
    assert asked.status_code == 200 and "Yes, revoke it" in asked.content.decode()
    assert key_authenticate(made.secret) is not None  # asking revokes nothing
    done = admin_client.post(revoke_url, follow=True)
    assert done.redirect_chain[-1][0] == reverse("admin:tenants_apikey_change", args=[key.pk])
    assert key_authenticate(made.secret) is None
    assert ">revoked<" in done.content.decode()


@pytest.mark.parametrize("view", ["created", "revoke"])
def test_an_unknown_key_is_a_404(admin_client, view):
    assert admin_client.get(reverse(f"admin:tenants_apikey_{view}", args=[999999])).status_code == 404
