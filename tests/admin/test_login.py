"""Logging in: the admin's and the tenant members' login forms need their CSRF token, and a
username that keeps failing from one address is locked out there (the right password included)
until the cool-off has passed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.test import Client

from apps.reporting.models import TenantMember

PASSWORD = "a-long-right-password-1"
LOGIN_PAGES = ["/admin/login/", "/account/login/"]


@pytest.fixture
def operator(django_user_model):
    return django_user_model.objects.create_superuser("operator", "operator@example.com", PASSWORD)


@pytest.fixture
def member(django_user_model, tenant_a):
    user = django_user_model.objects.create_user("reader", password=PASSWORD)
    TenantMember.objects.create(user=user, tenant=tenant_a)
    return user


def _login(client: Client, page: str, username: str, password: str, address: str = "127.0.0.1"):
    return client.post(page, {"username": username, "password": password}, REMOTE_ADDR=address)


def _logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def _cool_off_passes(minutes: float) -> None:
    """Move every recorded failure ``minutes`` into the past, as if that long had gone by."""
    for attempt in AccessAttempt.objects.all():
        AccessAttempt.objects.filter(pk=attempt.pk).update(attempt_time=attempt.attempt_time - timedelta(
            minutes=minutes))


def test_it_refuses_an_admin_login_post_without_the_csrf_token(operator):
    client = Client(enforce_csrf_checks=True)
    response = _login(client, "/admin/login/", "operator", PASSWORD)
    assert response.status_code == 403
    assert not _logged_in(client)
    client.get("/admin/login/")  # the form sets the CSRF cookie; its token goes back with the POST
    response = client.post("/admin/login/", {"username": "operator", "password": PASSWORD,
                                             "csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    assert response.status_code == 302
    assert _logged_in(client)


def test_it_refuses_a_tenant_login_post_without_the_csrf_token(member):
    client = Client(enforce_csrf_checks=True)
    assert _login(client, "/account/login/", "reader", PASSWORD).status_code == 403
    assert not _logged_in(client)


def test_it_locks_the_defaults_at_five_failures_for_fifteen_minutes():
    assert settings.AXES_FAILURE_LIMIT == 5
    assert timedelta(minutes=15) == settings.AXES_COOLOFF_TIME
    assert settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"]]


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_it_lets_a_user_in_after_fewer_failures_than_the_limit(client, operator, member, page):
    username = "operator" if page.startswith("/admin/") else "reader"
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, page, username, "wrong-password").status_code == 200
    assert _login(client, page, username, PASSWORD).status_code == 302
    assert _logged_in(client)


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_it_refuses_even_the_right_password_after_too_many_failures(client, operator, member, page):
    username = "operator" if page.startswith("/admin/") else "reader"
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _login(client, page, username, "wrong-password")
    response = _login(client, page, username, PASSWORD)
    assert response.status_code == 429
    assert b"too many login attempts" in response.content
    assert response["Retry-After"] == "900"
    assert not _logged_in(client)
    # The lock holds for this username from this address: the owner elsewhere still gets in.
    elsewhere = Client()
    assert _login(elsewhere, page, username, PASSWORD, address="192.0.2.7").status_code == 302


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_it_lifts_the_lockout_once_the_cool_off_has_passed(client, operator, member, page):
    username = "operator" if page.startswith("/admin/") else "reader"
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _login(client, page, username, "wrong-password")
    _cool_off_passes(14)
    assert _login(client, page, username, PASSWORD).status_code == 429  # 14 minutes: still locked
    _cool_off_passes(16)  # a try during the lockout started the cool-off again
    response = _login(client, page, username, PASSWORD)
    assert response.status_code == 302
    assert _logged_in(client)


def test_it_adds_no_cors_header_to_the_lockout_of_a_scripted_login(client, operator):
    for _ in range(settings.AXES_FAILURE_LIMIT + 1):
        response = client.post("/admin/login/", {"username": "operator", "password": "wrong-password"},
                               HTTP_X_REQUESTED_WITH="XMLHttpRequest", HTTP_ORIGIN="https://elsewhere.example")
    assert response.status_code == 429
    assert not [name for name in response.headers if name.lower().startswith("access-control-")]


def test_it_counts_failures_with_a_lower_limit_from_the_settings(client, operator, settings):
    settings.AXES_FAILURE_LIMIT = 2
    for _ in range(2):
        _login(client, "/admin/login/", "operator", "wrong-password")
    assert _login(client, "/admin/login/", "operator", PASSWORD).status_code == 429


async def test_it_locks_out_through_the_asgi_handler_too(async_client, transactional_db, django_user_model):
    """The server runs Django under ASGI, where the lockout middleware takes its async path."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    await sync_to_async(django_user_model.objects.create_superuser)("operator", "operator@example.com", PASSWORD)
    try:
        for _ in range(settings.AXES_FAILURE_LIMIT):
            await async_client.post("/admin/login/", {"username": "operator", "password": "wrong-password"})
        response = await async_client.post("/admin/login/", {"username": "operator", "password": PASSWORD})
    finally:
        await sync_to_async(connections.close_all)()  # the views' thread keeps its connection otherwise
    assert response.status_code == 429
    assert b"too many login attempts" in response.content
