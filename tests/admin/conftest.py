"""The admin served by a real Switchyard process, driven over HTTP as an operator's browser would:
log in with the CSRF token, post the changelist's action form, then post back the form of the
page that answers (a confirmation page's hidden fields, exactly as rendered)."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx
import pytest

from tests.gateway.conftest import gateway_start, gateway_stop

OPERATOR_PASSWORD = "operator-password-1"


class _Forms(HTMLParser):
    """Every form of a page: its attributes and its fields' values (hidden and text inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[dict, list[tuple[str, str]]]] = []

    def handle_starttag(self, tag, attrs) -> None:
        attrs = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append((attrs, []))
        elif tag == "input" and self.forms and attrs.get("name") and attrs.get("type") != "submit":
            self.forms[-1][1].append((attrs["name"], attrs.get("value", "")))


def page_forms(html: str) -> list[tuple[dict, list[tuple[str, str]]]]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


class AdminBrowser:
    """A logged-in operator on a running server."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=60)
        self.http.get("/admin/login/")
        login = self.http.post("/admin/login/?next=/admin/", data={
            "username": username, "password": password, "csrfmiddlewaretoken": self.csrf, "next": "/admin/"})
        assert login.status_code == 302, login.text[:500]

    @property
    def csrf(self) -> str:
        return self.http.cookies["csrftoken"]

    def get(self, url: str, **params) -> httpx.Response:
        return self.http.get(url, params=params)

    def post(self, url: str, data: dict | list) -> httpx.Response:
        fields = list(data.items()) if isinstance(data, dict) else list(data)
        return self.http.post(url, data=_multi([*fields, ("csrfmiddlewaretoken", self.csrf)]))

    def submit(self, url: str, page: httpx.Response, *, field: str) -> httpx.Response:
        """Post back the page's form that carries ``field``, with the values it rendered."""
        forms = [fields for attrs, fields in page_forms(page.text) if any(name == field for name, _ in fields)]
        assert len(forms) == 1, f"no single form with {field!r} on the page"
        return self.http.post(url, data=_multi(forms[0]))

    def close(self) -> None:
        self.http.close()


def _multi(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    data: dict[str, list[str]] = {}
    for name, value in fields:
        data.setdefault(name, []).append(str(value))
    return data


@pytest.fixture(scope="session")
def admin_server(django_db_setup, django_db_blocker, tmp_path_factory):
    """A Switchyard process (uvicorn, the shipped ASGI app) on the test database."""
    server = gateway_start(tmp_path_factory.mktemp("admin-server"))
    yield server
    gateway_stop(server)


@pytest.fixture
def operator_browser(transactional_db, admin_server, django_user_model):
    django_user_model.objects.create_superuser("live-operator", password=OPERATOR_PASSWORD)
    browser = AdminBrowser(admin_server.base, "live-operator", OPERATOR_PASSWORD)
    yield browser
    browser.close()
