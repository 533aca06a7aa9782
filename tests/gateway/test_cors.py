"""Cross-origin access: closed by default on every /v1 path, hot or Django's; with
CORS_ALLOWED_ORIGINS set, open to exactly those origins, preflights answered before any key."""

from __future__ import annotations

import httpx
import pytest

from apps.gateway.doors.http import HOT_PATHS
from tests.gateway.conftest import gateway_start, gateway_stop
from tests.routes import routes

FOREIGN = "https://evil.example"
ALLOWED = "https://app.example.com"
# Django's /v1 views, beside the hot paths (ids need not exist: nothing may leak either way).
DJANGO_V1 = ["/v1/complete", "/v1/usage", "/v1/usage/export", "/v1/files", "/v1/files/file-x",
             "/v1/files/file-x/content", "/v1/batches", "/v1/batches/batch_x", "/v1/batches/batch_x/cancel",
             "/v1/jobs", "/v1/jobs/map-reduce", "/v1/jobs/job_x", "/v1/jobs/job_x/cancel", "/v1/stream",
             "/v1/openapi.json"]
V1_PATHS = sorted(path for path in HOT_PATHS if path.startswith("/v1/")) + DJANGO_V1


def _cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.lower().startswith("access-control-")}


def _preflight(base: str, path: str, origin: str) -> httpx.Response:
    return httpx.options(base + path, timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})


def test_it_lists_every_v1_path_the_url_patterns_serve():
    # A new /v1 route must be added above, and so checked here.
    samples = {"file_id": "file-x", "batch_id": "batch_x", "job_id": "job_x"}
    found = set()
    for route in routes():
        if route.route.startswith("v1/"):
            path = route.path
            for name in route.kwargs:
                path = path.replace(f"<str:{name}>", samples[name])
            found.add(path)
    assert found == set(DJANGO_V1)


def test_it_sends_no_cors_header_to_a_foreign_origin_by_default(world):
    base = world.gateway.base
    for path in V1_PATHS:
        assert _cors_headers(_preflight(base, path, FOREIGN)) == {}, path
        for method in ("GET", "POST"):
            answer = httpx.request(method, base + path, timeout=30, json={} if method == "POST" else None,
                                   headers={"Origin": FOREIGN, "Authorization": f"Bearer {world.key_a}"})
            assert _cors_headers(answer) == {}, (method, path)
    # Answers that succeed say nothing to another origin either.
    models = httpx.get(base + "/v1/models", headers={"Origin": FOREIGN, "Authorization": f"Bearer {world.key_a}"})
    assert models.status_code == 200 and _cors_headers(models) == {}
    chat = httpx.post(base + "/v1/chat/completions", timeout=30, json={
        "model": "sim-mini", "messages": [{"role": "user", "content": "Hi"}]},
        headers={"Origin": FOREIGN, "Authorization": f"Bearer {world.key_a}"})
    assert chat.status_code == 200 and _cors_headers(chat) == {}


@pytest.fixture
def cors_gateway(world, tmp_path):
    gateway = gateway_start(tmp_path, extra_env={"CORS_ALLOWED_ORIGINS": f"{ALLOWED},http://localhost:5173"})
    yield gateway
    gateway_stop(gateway)


def test_it_answers_a_preflight_from_an_allowed_origin_without_a_key(cors_gateway):
    for path in V1_PATHS:
        answer = _preflight(cors_gateway.base, path, ALLOWED)
        assert answer.status_code == 204, path
        assert answer.headers["access-control-allow-origin"] == ALLOWED
        assert "POST" in answer.headers["access-control-allow-methods"]
        assert answer.headers["access-control-allow-headers"] == "authorization, content-type"
        assert "access-control-allow-credentials" not in answer.headers


def test_it_lets_an_allowed_origin_read_answers_and_their_headers(world, cors_gateway):
    chat = httpx.post(cors_gateway.v1 + "/chat/completions", timeout=30, json={
        "model": "sim-mini", "messages": [{"role": "user", "content": "Hi"}]},
        headers={"Origin": ALLOWED, "Authorization": f"Bearer {world.key_a}"})
    assert chat.status_code == 200
    assert chat.headers["access-control-allow-origin"] == ALLOWED
    assert "x-switchyard-request-id" in chat.headers["access-control-expose-headers"]
    assert "access-control-allow-credentials" not in chat.headers
    refused = httpx.get(cors_gateway.v1 + "/files", headers={"Origin": ALLOWED})  # no key: still refused
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ALLOWED  # so the page can read why


def test_it_keeps_other_origins_and_non_api_paths_closed_when_origins_are_listed(world, cors_gateway):
    for path in V1_PATHS:
        assert _cors_headers(_preflight(cors_gateway.base, path, FOREIGN)) == {}, path
        assert _cors_headers(_preflight(cors_gateway.base, path, ALLOWED + ".evil.example")) == {}, path
    models = httpx.get(cors_gateway.v1 + "/models", headers={"Origin": FOREIGN,
                                                             "Authorization": f"Bearer {world.key_a}"})
    assert models.status_code == 200 and _cors_headers(models) == {}
    for path in ("/admin/login/", "/account/login/", "/healthz", "/metrics", "/playground/"):
        assert _cors_headers(_preflight(cors_gateway.base, path, ALLOWED)) == {}, path
        assert _cors_headers(httpx.get(cors_gateway.base + path, headers={"Origin": ALLOWED})) == {}, path


def test_it_refuses_a_cors_origin_that_is_not_an_exact_origin():
    import os
    import subprocess
    import sys

    from tests.live import REPO

    for bad in ("*", "https://app.example.com/path", "app.example.com"):
        done = subprocess.run([sys.executable, "-c", "import os; os.environ['DJANGO_SETTINGS_MODULE']="
                               "'config.settings'; from django.conf import settings; settings.CORS_ALLOWED_ORIGINS"],
                              cwd=REPO, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "CORS_ALLOWED_ORIGINS": bad,
                                   "DATABASE_URL": "postgresql://switchyard@127.0.0.1:9/switchyard"})
        assert done.returncode != 0 and "CORS_ALLOWED_ORIGINS" in done.stderr, bad
