"""Sessions in the admin: requests sent with one session id (header or metadata) are grouped and
drawn as a timeline in the order they started, each bar where its request ran; a session of one
tenant is never shown under another tenant's id. Requests go through the live gateway."""

from __future__ import annotations

import re

import httpx
from django.test import Client

from tests.gateway.conftest import request_logs, wait_until
from tests.gateway.test_cache import entries


def _chat(world, key: str, content: str, *, session: str | None = None, metadata: dict | None = None,
          stream: bool = False) -> httpx.Response:
    body = {"model": "sim-mini", "messages": [{"role": "user", "content": content}], "stream": stream}
    if metadata:
        body["metadata"] = metadata
    headers = {"Authorization": f"Bearer {key}", **({"x-switchyard-session-id": session} if session else {})}
    response = httpx.post(world.gateway.v1 + "/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response


def test_a_session_is_drawn_as_a_timeline_of_its_own_tenants_requests(world, django_user_model):
    ids = [_chat(world, world.key_a, "First turn.", session="chat-7").headers["x-switchyard-request-id"]]
    assert wait_until(lambda: entries(world.tenant_a) == 1)  # saved off the response path: the repeat hits it
    ids += [_chat(world, world.key_a, "Second turn.", metadata={"session_id": "chat-7"},
                  stream=True).headers["x-switchyard-request-id"],
            _chat(world, world.key_a, "First turn.", session="chat-7").headers["x-switchyard-request-id"]]
    _chat(world, world.key_a, "Another conversation.", session="chat-8")
    _chat(world, world.key_b, "Globex's own chat-7.", session="chat-7")
    request_logs(4, tenant=world.tenant_a)
    request_logs(1, tenant=world.tenant_b)

    staff = Client()
    staff.force_login(django_user_model.objects.create_superuser("ops", password="a-long-password-4"))
    listed = staff.get("/admin/usage/requestlog/sessions/", {"tenant": world.tenant_a.pk}).content.decode()
    assert "chat-7" in listed and "chat-8" in listed and "Globex" not in listed

    page = staff.get(f"/admin/usage/requestlog/sessions/{world.tenant_a.pk}/chat-7/").content.decode()
    assert re.findall(r"req_[0-9a-f]+", page.split('id="sy-timeline"')[1]) == [
        request_id for request_id in ids for _ in (0, 1)]  # each id twice: the link and the bar's title
    assert "3 requests" in page and "Acme" in page
    lefts = [float(left) for left in re.findall(r'class="sy-bar[^"]*" style="left: ([0-9.]+)%', page)]
    assert lefts[0] == 0.0 and lefts == sorted(lefts) and lefts[-1] > 0
    assert 'class="sy-bar sy-hit"' in page  # the repeated first turn came from the cache
    assert page.count('class="sy-ttft"') == 1  # the streamed turn's first token
    # Tenant B's session of the same name is its own: one request, none of A's.
    theirs = staff.get(f"/admin/usage/requestlog/sessions/{world.tenant_b.pk}/chat-7/").content.decode()
    assert "1 request," in theirs and not any(request_id in theirs for request_id in ids)
    assert staff.get(f"/admin/usage/requestlog/sessions/{world.tenant_b.pk}/chat-8/").status_code == 404
    # A row's page links its session's timeline.
    from apps.usage.models import RequestLog

    row = RequestLog.objects.get(request_id=ids[0])
    assert f"/admin/usage/requestlog/sessions/{world.tenant_a.pk}/chat-7/" in staff.get(
        f"/admin/usage/requestlog/{row.pk}/change/").content.decode()
    assert Client().get(f"/admin/usage/requestlog/sessions/{world.tenant_a.pk}/chat-7/").status_code == 302
