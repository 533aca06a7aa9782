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
    """Every form of a page: its attributes and the fields a browser would submit with it
    (inputs, checked boxes, each select's chosen options, textareas), as rendered."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[dict, list[tuple[str, str]]]] = []
        self._select: tuple[str, bool, list[tuple[str, bool]]] | None = None
        self._textarea: tuple[str, list[str]] | None = None

    def _add(self, name: str, value: str) -> None:
        if self.forms:
            self.forms[-1][1].append((name, value))

    def handle_starttag(self, tag, attrs) -> None:
        attrs = {name: value or "" for name, value in attrs}
        kind = attrs.get("type", "text")
        if tag == "form":
            self.forms.append((attrs, []))
        elif tag == "input" and attrs.get("name") and kind not in ("submit", "button", "file"):
            if kind not in ("checkbox", "radio") or "checked" in attrs:
                self._add(attrs["name"], attrs.get("value", "on" if kind == "checkbox" else ""))
        elif tag == "select" and attrs.get("name"):
            self._select = (attrs["name"], "multiple" in attrs, [])
        elif tag == "option" and self._select is not None:
            self._select[2].append((attrs.get("value", ""), "selected" in attrs))
        elif tag == "textarea" and attrs.get("name"):
            self._textarea = (attrs["name"], [])

    def handle_data(self, data) -> None:
        if self._textarea is not None:
            self._textarea[1].append(data)

    def handle_endtag(self, tag) -> None:
        if tag == "select" and self._select is not None:
            name, multiple, options = self._select
            chosen = [value for value, selected in options if selected]
            if not chosen and not multiple and options:
                chosen = [options[0][0]]
            for value in chosen:
                self._add(name, value)
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            name, parts = self._textarea
            self._add(name, "".join(parts).removeprefix("\n"))
            self._textarea = None


def page_forms(html: str) -> list[tuple[dict, list[tuple[str, str]]]]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def form_data(html: str, form_id: str, **changes) -> dict[str, list[str]]:
    """The fields of the form ``form_id`` as the page renders them, with ``changes`` typed in."""
    forms = [fields for attrs, fields in page_forms(html) if attrs.get("id") == form_id]
    assert len(forms) == 1, f"no form {form_id!r} on the page"
    data = _multi([(name, value) for name, value in forms[0] if name not in changes])
    data.update({name: [str(value)] for name, value in changes.items()})
    return data


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

    def save(self, url: str, form_id: str, **changes) -> httpx.Response:
        """Open a change or add page, type ``changes`` into its form and save it."""
        return self.http.post(url, data=form_data(self.http.get(url).text, form_id, **changes))

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
