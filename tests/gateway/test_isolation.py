"""Tenant isolation, walked over every route of the tenant API.

Tenant A owns a file, a batch, a map-reduce job, usage rows and rollups, a cache entry, a
routing alias and a stored response. Every route of Django's URLconf (through its includes) and every hot path of the
gateway is called with tenant B's key, once per method the route answers, with A's ids put in
its parameters: B gets 404 for A's objects, lists without them, figures without them, and its
cache calls leave A's cache as it was. Each check first shows that A does see what B must not.

The walk fails when a route appears that no check covers: add the route's check to ``ATTACKS``
(or its reason to ``SKIPPED``).
"""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest

from apps.gateway.api.not_found import UNPREFIXED, V1_MISSES
from apps.gateway.doors.http import HOT_PATHS
from tests.gateway.conftest import request_logs, wait_until
from tests.routes import Route, routes

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
SKIPPED_PREFIXES = {
    "admin/": "the operators' site: staff only, every page tested in tests/admin",
}
SKIPPED = {
    "": "the start page: the same page for anyone, no key taken, no tenant data",
    "healthz": "a probe: the same answer for anyone, no tenant data",
    "readyz": "a probe: the same answer for anyone, no tenant data",
    "v1/openapi.json": "the API's public description: the same document for anyone, no tenant data",
    "playground/": "a staff page (Django session); staff act for any key by design, no API key is taken",
    "account/login/": "tenant members log in with a password, not a key (lockout: tests/admin/test_login.py)",
    "account/logout/": "ends a Django session; no tenant data",
    "account/usage/": "a member's page bound to one tenant by membership (tests/reporting/test_tenant_page.py)",
    "/metrics": "the operators' Prometheus scrape: METRICS_TOKEN or loopback only, never a tenant key",
}
PROMPT = "What is the capital of France?"


class Tenants:
    """Tenant A's objects and a client that calls the live gateway with either key."""

    def __init__(self, world) -> None:
        self.world = world
        self.base = world.gateway.base

    def call(self, method: str, path: str, key: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.base + path, headers=headers, timeout=30, **kwargs)

    def a(self, method: str, path: str, **kwargs) -> httpx.Response:
        return self.call(method, path, self.world.key_a, **kwargs)

    def b(self, method: str, path: str, **kwargs) -> httpx.Response:
        return self.call(method, path, self.world.key_b, **kwargs)


@pytest.fixture
def tenants(world):
    from apps.batches.models import BatchJob
    from apps.cache.models import CacheEntry
    from apps.reporting.services import usage_rollup
    from apps.routing.models import RoutingRule

    t = Tenants(world)
    upload = t.a("POST", "/v1/files", files={"file": ("a.jsonl", b'{"custom_id": "a-1"}\n')}, data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    t.file_id = upload.json()["id"]
    # Jobs are written directly: through the API they would queue work for a worker this test does not run.
    t.batch_id = BatchJob.objects.create(tenant=world.tenant_a, endpoint="/v1/chat/completions",
                                         input_file_id=t.file_id, total=1).pk
    t.job_id = BatchJob.objects.create(tenant=world.tenant_a, kind=BatchJob.Kind.MAP_REDUCE,
                                       endpoint="/v1/chat/completions", input_file_id=t.file_id, total=1,
                                       params={"model": "sim-mini"}).pk
    RoutingRule.objects.create(tenant=world.tenant_a, name="acme alias", match_model="acme-alias",
                               target=world.models["sim-standard"], priority=1)
    chat = t.a("POST", "/v1/chat/completions", json={"model": "sim-mini", "messages": [
        {"role": "user", "content": PROMPT}]})
    assert chat.status_code == 200, chat.text
    t.request_id = chat.headers["x-switchyard-request-id"]
    request_logs(1, tenant=world.tenant_a)
    assert wait_until(lambda: CacheEntry.objects.filter(tenant=world.tenant_a).exists())
    usage_rollup()  # the first run marks the rows, the next sums them (rows still being written are left)
    usage_rollup()
    t.key_prefix_a = world.tenant_a.api_keys.get().prefix
    response = t.a("POST", "/v1/responses", json={"model": "sim-mini", "input": PROMPT + " Stored."},
                   headers={"Cache-Control": "no-store"})  # A's one cache entry stays the chat answer
    assert response.status_code == 200, response.text
    t.response_id = response.json()["id"]
    t.jobs_status = dict(BatchJob.objects.values_list("pk", "status"))
    return t


# --- Routes with an id: A's id, every method, 404 for B (405 for a method the route does not take)

ID_KINDS = {"file_id": "file_id", "batch_id": "batch_id", "job_id": "job_id"}


def _attack_ids(t: Tenants, route: Route, methods: tuple[str, ...]) -> None:
    path = route.path
    for name in route.kwargs:
        path = path.replace(f"<str:{name}>", getattr(t, ID_KINDS[name]))  # a new kind of id fails here
    if "GET" in methods:
        assert t.a("GET", path).status_code == 200, f"A reads its own {path}"
    for method in METHODS:
        answer = t.b(method, path, json={} if method in ("POST", "PUT", "PATCH") else None)
        if method in methods:
            assert answer.status_code == 404, (method, path, answer.status_code, answer.text)
            assert answer.json()["error"]["code"].endswith("_not_found")
        else:
            assert answer.status_code == 405, (method, path, answer.status_code)


# --- Lists, creations and the hot paths ------------------------------------------------------

def _ids(answer: httpx.Response) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {row["id"] for row in answer.json()["data"]}


def _files(t: Tenants) -> None:
    assert t.file_id in _ids(t.a("GET", "/v1/files"))
    assert t.file_id not in _ids(t.b("GET", "/v1/files"))
    mine = t.b("POST", "/v1/files", files={"file": ("b.jsonl", b'{"custom_id": "b-1"}\n')}, data={"purpose": "batch"})
    assert mine.status_code == 200 and mine.json()["id"] != t.file_id
    assert t.file_id not in _ids(t.b("GET", "/v1/files"))


def _batches(t: Tenants) -> None:
    assert t.batch_id in _ids(t.a("GET", "/v1/batches"))
    assert _ids(t.b("GET", "/v1/batches")) == set()
    refused = t.b("POST", "/v1/batches", json={"input_file_id": t.file_id, "endpoint": "/v1/chat/completions",
                                               "completion_window": "24h"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "file_not_found"


def _jobs(t: Tenants) -> None:
    assert t.job_id in _ids(t.a("GET", "/v1/jobs"))
    assert _ids(t.b("GET", "/v1/jobs")) == set()


def _map_reduce(t: Tenants) -> None:
    # Creating a job names no object of A's; a refused body must not either.
    refused = t.b("POST", "/v1/jobs/map-reduce", json={"items": []})
    assert refused.status_code == 400
    assert t.job_id not in refused.text and t.file_id not in refused.text


def _usage(t: Tenants) -> None:
    mine = t.a("GET", "/v1/usage", params={"group_by": "key"}).json()
    assert mine["totals"]["requests"] >= 1
    theirs = t.b("GET", "/v1/usage", params={"group_by": "key"})
    assert theirs.status_code == 200
    assert theirs.json()["totals"]["requests"] == 0 and theirs.json()["data"] == []


def _usage_export(t: Tenants) -> None:
    def request_ids(answer: httpx.Response) -> set[str]:
        assert answer.status_code == 200
        return {row["request_id"] for row in csv.DictReader(io.StringIO(answer.text))}

    assert t.request_id in request_ids(t.a("GET", "/v1/usage/export"))
    theirs = t.b("GET", "/v1/usage/export")
    assert t.request_id not in request_ids(theirs)
    assert t.key_prefix_a not in theirs.text


def _complete(t: Tenants) -> None:
    assert t.a("POST", "/v1/complete", json={"prompt": PROMPT, "model": "sim-mini"}).json()["cached"] is True
    theirs = t.b("POST", "/v1/complete", json={"prompt": PROMPT, "model": "sim-mini"})
    assert theirs.status_code == 200 and theirs.json()["cached"] is False
    assert t.b("POST", "/v1/complete", json={"prompt": PROMPT, "model": "acme-alias"}).status_code == 404


def _stream(t: Tenants) -> None:
    # The EventSource door takes a staff session and a key's id, never an API key.
    key_a_id = t.world.tenant_a.api_keys.get().pk
    answer = t.b("GET", "/v1/stream", params={"key": key_a_id, "prompt": PROMPT})
    assert answer.status_code == 401 and "delta" not in answer.text


def _chat(t: Tenants) -> None:
    body = {"model": "sim-mini", "messages": [{"role": "user", "content": PROMPT}]}
    assert t.a("POST", "/v1/chat/completions", json=body).headers["x-switchyard-cache"] == "hit-exact"
    assert t.b("POST", "/v1/chat/completions", json=body).headers["x-switchyard-cache"] == "miss"
    alias = {"model": "acme-alias", "messages": [{"role": "user", "content": "Hi"}]}
    assert t.a("POST", "/v1/chat/completions", json=alias).headers["x-switchyard-model"] == "sim-standard"
    assert t.b("POST", "/v1/chat/completions", json=alias).status_code == 404


def _messages(t: Tenants) -> None:
    body = {"model": "sim-mini", "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT + " Briefly."}]}
    headers = {"anthropic-version": "2023-06-01"}
    assert t.a("POST", "/v1/messages", json=body, headers=headers).headers["x-switchyard-cache"] == "miss"
    assert wait_until(lambda: t.a("POST", "/v1/messages", json=body, headers=headers)
                      .headers["x-switchyard-cache"] == "hit-exact")
    assert t.b("POST", "/v1/messages", json=body, headers=headers).headers["x-switchyard-cache"] == "miss"
    alias = {**body, "model": "acme-alias"}
    assert t.b("POST", "/v1/messages", json=alias, headers=headers).status_code == 404


def _count_tokens(t: Tenants) -> None:
    body = {"model": "acme-alias", "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"anthropic-version": "2023-06-01"}
    assert t.a("POST", "/v1/messages/count_tokens", json=body, headers=headers).status_code == 200
    assert t.b("POST", "/v1/messages/count_tokens", json=body, headers=headers).status_code == 404


def _embeddings(t: Tenants) -> None:
    # Nothing of a tenant's is kept for embeddings; B's own call works and A's alias is not B's.
    body = {"model": "sim-embed", "input": PROMPT}
    assert t.b("POST", "/v1/embeddings", json=body).status_code == 200
    assert t.b("POST", "/v1/embeddings", json={**body, "model": "acme-alias"}).status_code == 404


def _models(t: Tenants) -> None:
    # The catalog is global: B sees exactly what A sees, and A's aliases are no model of B's.
    mine, theirs = _ids(t.a("GET", "/v1/models")), _ids(t.b("GET", "/v1/models"))
    assert theirs == mine and "acme-alias" not in theirs


def _cache_stats(t: Tenants) -> None:
    assert t.a("GET", "/v1/cache/stats").json()["entries"] >= 1
    theirs = t.b("GET", "/v1/cache/stats").json()
    assert theirs["entries"] == 0 and theirs["hits"] == 0


def _cache_clear(t: Tenants) -> None:
    before = t.a("GET", "/v1/cache/stats").json()["entries"]
    assert before >= 1
    t.b("POST", "/v1/cache/clear")  # B's own cache may hold entries by now; A's must not move
    assert t.a("GET", "/v1/cache/stats").json()["entries"] == before


def _cache_feedback(t: Tenants) -> None:
    from apps.cache.models import CacheEntry
    from apps.usage.models import Feedback

    body = {"request_id": t.request_id, "correct": False}
    # A's request was answered upstream: A is told so (its row is found), B is told it does not exist.
    mine = t.a("POST", "/v1/cache/feedback", json=body)
    assert (mine.status_code, mine.json()["error"]["code"]) == (400, "not_a_cache_hit"), mine.text
    theirs = t.b("POST", "/v1/cache/feedback", json=body)
    assert (theirs.status_code, theirs.json()["error"]["code"]) == (404, "request_not_found"), theirs.text
    entry = CacheEntry.objects.get(tenant=t.world.tenant_a)
    assert (entry.min_similarity, entry.wrong_hits) == (None, 0)
    assert not Feedback.objects.filter(kind="cache").exists()


def _feedback(t: Tenants) -> None:
    from apps.usage.models import Feedback

    theirs = t.b("POST", "/v1/feedback", json={"request_id": t.request_id, "score": 0})
    assert (theirs.status_code, theirs.json()["error"]["code"]) == (404, "request_not_found"), theirs.text
    assert not Feedback.objects.filter(request_id=t.request_id).exists()
    mine = t.a("POST", "/v1/feedback", json={"request_id": t.request_id, "score": 1})
    assert mine.status_code == 200, mine.text
    (kept,) = Feedback.objects.filter(request_id=t.request_id)
    assert (kept.tenant_id, kept.score) == (t.world.tenant_a.pk, 1.0)


def _misses(t: Tenants) -> None:
    # A wrong URL's answer (JSON with a hint) is the same whoever asks and whatever A owns: B
    # learns nothing of A's file from a near miss on its path, and deletes nothing.
    for path in ("/v1/files/{}/", "/files/{}", "/v1/v1/files/{}", "/v1/files/{}/contents"):
        for method in ("GET", "DELETE"):
            theirs = t.b(method, path.format(t.file_id))
            made_up = t.b(method, path.format("file-made-up"))
            assert (theirs.status_code, theirs.json()["error"]["code"]) == (404, "unknown_url"), theirs.text
            assert theirs.text.replace(t.file_id, "file-made-up") == made_up.text
            assert theirs.text == t.a(method, path.format(t.file_id)).text


def _responses(t: Tenants) -> None:
    # B cannot continue A's conversation: refused exactly as an unknown id is.
    body = {"model": "sim-mini", "input": "Go on", "previous_response_id": t.response_id}
    theirs = t.b("POST", "/v1/responses", json=body)
    unknown = t.b("POST", "/v1/responses", json={**body, "previous_response_id": "resp_" + "0" * 24})
    assert (theirs.status_code, theirs.json()["error"]["code"]) == (400, "previous_response_not_found"), theirs.text
    assert theirs.json()["error"]["message"].replace(t.response_id, "?") == \
        unknown.json()["error"]["message"].replace("resp_" + "0" * 24, "?")
    assert t.a("POST", "/v1/responses", json=body).status_code == 200
    assert t.b("POST", "/v1/responses", json={"model": "acme-alias", "input": "Hi"}).status_code == 404


def _stored_response(path: str, methods: tuple[str, ...], mine: int):
    """A stored response's path: A gets ``mine`` (200, or 400 for cancelling a finished one),
    B gets 404 for every method the path takes, 405 for the others."""

    def attack(t: Tenants) -> None:
        here = path.replace("<response_id>", t.response_id)
        assert t.a(methods[0], here).status_code == mine, f"A reaches its own {here}"
        for method in METHODS:
            answer = t.b(method, here, json={} if method in ("POST", "PUT", "PATCH") else None)
            if method in methods:
                assert answer.status_code == 404, (method, here, answer.status_code, answer.text)
                assert answer.json()["error"]["code"] == "response_not_found"
            else:
                assert answer.status_code == 405, (method, here, answer.status_code)
        assert t.a("GET", f"/v1/responses/{t.response_id}").status_code == 200  # B's DELETE took nothing

    return methods, attack


# route (Django's, without the leading slash) or hot path -> (methods it answers, the check)
ATTACKS = {
    V1_MISSES: (("GET", "POST", "PUT", "PATCH", "DELETE"), _misses),
    UNPREFIXED: (("GET", "POST", "PUT", "PATCH", "DELETE"), _misses),
    "v1/files": (("GET", "POST"), _files),
    "v1/files/<str:file_id>": (("GET", "DELETE"), _attack_ids),
    "v1/files/<str:file_id>/content": (("GET",), _attack_ids),
    "v1/batches": (("GET", "POST"), _batches),
    "v1/batches/<str:batch_id>": (("GET",), _attack_ids),
    "v1/batches/<str:batch_id>/cancel": (("POST",), _attack_ids),
    "v1/jobs/map-reduce": (("POST",), _map_reduce),
    "v1/jobs": (("GET",), _jobs),
    "v1/jobs/<str:job_id>": (("GET",), _attack_ids),
    "v1/jobs/<str:job_id>/cancel": (("POST",), _attack_ids),
    "v1/complete": (("POST",), _complete),
    "v1/usage": (("GET",), _usage),
    "v1/usage/export": (("GET",), _usage_export),
    "v1/stream": (("GET",), _stream),
    "/v1/chat/completions": (("POST",), _chat),
    "/v1/messages": (("POST",), _messages),
    "/v1/messages/count_tokens": (("POST",), _count_tokens),
    "/v1/embeddings": (("POST",), _embeddings),
    "/v1/models": (("GET",), _models),
    "/v1/cache/stats": (("GET",), _cache_stats),
    "/v1/cache/clear": (("POST",), _cache_clear),
    "/v1/cache/feedback": (("POST",), _cache_feedback),
    "/v1/feedback": (("POST",), _feedback),
    "/v1/responses": (("POST",), _responses),
    "/v1/responses/<response_id>": _stored_response("/v1/responses/<response_id>", ("GET", "DELETE"), 200),
    "/v1/responses/<response_id>/cancel": _stored_response("/v1/responses/<response_id>/cancel", ("POST",), 400),
    "/v1/responses/<response_id>/input_items": _stored_response("/v1/responses/<response_id>/input_items",
                                                                ("GET",), 200),
}


def _django_routes() -> list[Route]:
    return [route for route in routes(tuple(SKIPPED_PREFIXES)) if route.route not in SKIPPED]


def _declared_methods(route: Route) -> tuple[str, ...] | None:
    """What the view says it answers: a tenant endpoint's methods, or a class view's handlers."""
    callback = route.callback
    if hasattr(callback, "methods"):
        return tuple(callback.methods)
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if view_class is not None:
        return tuple(m.upper() for m in view_class.http_method_names if m not in ("options", "head")
                     and hasattr(view_class, m))
    return None


def test_it_has_a_check_for_every_route_of_the_tenant_api():
    found = {route.route for route in _django_routes()} | {path for path in HOT_PATHS if path not in SKIPPED}
    assert set(ATTACKS) == found, "a route without an isolation check (or a check for a route that is gone)"
    for route in _django_routes():
        declared = _declared_methods(route)
        if declared is not None:
            assert sorted(declared) == sorted(ATTACKS[route.route][0]), route.route


def test_it_shows_tenant_b_nothing_of_tenant_as_on_any_route(tenants):
    from apps.batches.models import BatchJob, File

    walked = []
    for route in _django_routes():
        methods, attack = ATTACKS[route.route]
        if attack is _attack_ids:
            attack(tenants, route, methods)
        else:
            attack(tenants)
        walked.append(route.route)
    for path in sorted(HOT_PATHS):
        if path in SKIPPED:
            continue
        ATTACKS[path][1](tenants)
        walked.append(path)
    assert set(walked) == set(ATTACKS)
    # B's deletes and cancels changed nothing of A's.
    assert File.objects.filter(pk=tenants.file_id, tenant=tenants.world.tenant_a).exists()
    assert {pk: status for pk, status in BatchJob.objects.filter(tenant=tenants.world.tenant_a)
            .values_list("pk", "status")} == tenants.jobs_status
    assert json.loads(tenants.a("GET", f"/v1/files/{tenants.file_id}").text)["id"] == tenants.file_id


def test_it_refuses_a_forged_key_with_a_real_prefix_on_every_door(world):
    forged = world.key_a[:-6] + ("zzzzzz" if not world.key_a.endswith("zzzzzz") else "yyyyyy")
    base = world.gateway.base
    chat = {"model": "sim-mini", "messages": [{"role": "user", "content": "Hi"}]}
    messages = {**chat, "max_tokens": 16}
    doors = [("POST", "/v1/chat/completions", "authorization", chat), ("POST", "/v1/messages", "x-api-key", messages),
             ("GET", "/v1/files", "authorization", None), ("GET", "/v1/usage", "authorization", None),
             ("POST", "/v1/complete", "authorization", {"prompt": "Hi", "model": "sim-mini"})]
    for method, path, header, body in doors:
        for key, expected in ((forged, 401), (world.key_a, 200)):
            value = key if header == "x-api-key" else f"Bearer {key}"
            answer = httpx.request(method, base + path, json=body, timeout=30,
                                   headers={header: value, "anthropic-version": "2023-06-01"})
            assert answer.status_code == expected, (path, key is forged, answer.text)
