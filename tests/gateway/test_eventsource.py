"""``GET /v1/stream`` (EventSource) against a live Switchyard, with a logged-in staff user."""

from __future__ import annotations

import json

import httpx

from tests.gateway.conftest import wait_until


def session_cookie(*, is_staff: bool = True) -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model().objects.create_user(f"person-{is_staff}", is_staff=is_staff)
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def key_id(tenant) -> int:
    from apps.tenants.models import ApiKey

    return ApiKey.objects.get(tenant=tenant).pk


def events_of(world, cookie: str | None, **params) -> tuple[int, list[tuple[str, dict]] | dict]:
    cookies = {"sessionid": cookie} if cookie else {}
    with httpx.Client(base_url=world.gateway.base, cookies=cookies, timeout=15) as client, \
            client.stream("GET", "/v1/stream", params=params) as response:
        if response.headers["content-type"].startswith("application/json"):
            return response.status_code, json.loads(response.read())
        assert response.headers["content-type"].startswith("text/event-stream")
        events, kind = [], None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
        return response.status_code, events


def test_it_streams_the_same_events_as_the_websocket_for_a_staff_user(world):
    cookie = session_cookie()
    status, events = events_of(world, cookie, key=key_id(world.tenant_a), model="sim-mini",
                               prompt="Explain how tides work")
    assert status == 200
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "delta" and kinds[-1] == "done" and "sentence" in kinds
    text = "".join(data["content"] for kind, data in events if kind == "delta")
    sentences = [data["text"] for kind, data in events if kind == "sentence"]
    assert " ".join(sentences) == " ".join(text.split())
    done = events[-1][1]
    assert done["model"] == "sim-mini" and done["cache"] == "miss" and float(done["cost"]) > 0
    from apps.usage.models import RequestLog

    assert wait_until(lambda: RequestLog.objects.filter(request_id=done["request_id"], tenant=world.tenant_a).exists())


def test_it_refuses_anyone_but_a_logged_in_staff_user_and_bad_parameters(world):
    key = key_id(world.tenant_a)
    status, body = events_of(world, None, key=key, prompt="Hi")
    assert (status, body["error"]["type"]) == (401, "authentication_error")
    status, body = events_of(world, session_cookie(is_staff=False), key=key, prompt="Hi")
    assert status == 401
    staff = session_cookie()
    status, body = events_of(world, staff, key=key)
    assert (status, body["error"]["param"]) == (400, "prompt")
    status, body = events_of(world, staff, key="999999", prompt="Hi")
    assert (status, body["error"]["param"]) == (400, "key")
    status, events = events_of(world, staff, key=key, model="no-such-model", prompt="Hi")
    assert status == 200 and events[-1][0] == "error" and events[-1][1]["error"]["code"] == "model_not_found"
    with httpx.Client(base_url=world.gateway.base, cookies={"sessionid": staff}) as client:
        response = client.get("/v1/stream", params={"key": key, "prompt": "Hi"},
                              headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403


def test_it_keeps_each_keys_tenant_cache_apart(world):
    from apps.cache.models import CacheEntry

    staff = session_cookie()
    prompt = "What is the tallest mountain"
    _, first = events_of(world, staff, key=key_id(world.tenant_a), model="sim-mini", prompt=prompt)
    assert first[-1][1]["cache"] == "miss"
    assert wait_until(lambda: CacheEntry.objects.filter(tenant=world.tenant_a).exists())
    _, again = events_of(world, staff, key=key_id(world.tenant_a), model="sim-mini", prompt=prompt)
    assert again[-1][1]["cache"] == "hit-exact"
    _, other = events_of(world, staff, key=key_id(world.tenant_b), model="sim-mini", prompt=prompt)
    assert other[-1][1]["cache"] == "miss"
    from apps.usage.models import RequestLog

    assert wait_until(lambda: RequestLog.objects.filter(request_id=other[-1][1]["request_id"],
                                                        tenant=world.tenant_b).exists())
    assert not RequestLog.objects.filter(request_id=other[-1][1]["request_id"], tenant=world.tenant_a).exists()
