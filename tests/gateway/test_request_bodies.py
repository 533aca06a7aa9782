"""Request bodies, opt-in per tenant: prompts and answers (streams assembled) are kept with the
usage row after redaction, and what a pattern matches is found in no table at all, as Postgres
itself is searched. A tenant that has not turned it on keeps nothing; the admin shows a kept body
on the request's page. Against the live gateway."""

from __future__ import annotations

import re

import httpx
from django.db import connection
from django.test import Client

from tests.gateway.conftest import request_logs

SECRETS = {
    "email": "jane.doe@example.com",
    "card": "4111 1111 1111 1111",
    "key": "sk-live-abcdefghijklmnopqrstuvwx",
    "phone": "+1 415 555 2671",
    "custom": "ACME-7731",
}
PROMPT = (f"Write to {SECRETS['email']} about card {SECRETS['card']}; my key is {SECRETS['key']}, "
          f"call {SECRETS['phone']}, ticket {SECRETS['custom']}.")


def _chat(world, key: str, *, stream: bool = False, content: str = PROMPT) -> httpx.Response:
    response = httpx.post(world.gateway.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "sim-mini", "stream": stream, "messages": [
                              {"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]},
                          timeout=30)
    assert response.status_code == 200, response.text
    return response


def _tables_holding(text: str) -> list[str]:
    """Every table of the database with a row whose text holds ``text``."""
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT count(*) FROM "{table}" AS t WHERE t::text LIKE %s', [f"%{text}%"])  # noqa: S608
            if cursor.fetchone()[0]:
                found.append(table)
    return found


def test_kept_bodies_are_redacted_before_they_reach_any_table(world, django_user_model):
    from apps.usage.models import RequestBody

    world.tenant_a.store_bodies = True
    world.tenant_a.redact_patterns = r"ACME-\d{4}"
    world.tenant_a.cache_enabled = False  # the cache keeps prompts and answers to replay them (docs/cache.md)
    world.tenant_a.save()
    world.tenant_b.cache_enabled = False
    world.tenant_b.save()
    json_answer = _chat(world, world.key_a)
    streamed = _chat(world, world.key_a, stream=True, content=PROMPT + " Stream it.")
    _chat(world, world.key_b, content="Globex keeps nothing: globex@example.com")
    logs = request_logs(2, tenant=world.tenant_a)
    request_logs(1, tenant=world.tenant_b)

    bodies = {body.request_id: body for body in RequestBody.objects.filter(tenant=world.tenant_a)}
    assert set(bodies) == {log.request_id for log in logs}
    kept = bodies[json_answer.headers["x-switchyard-request-id"]]
    prompt = kept.prompt[1]["content"]
    for marker in ("[REDACTED email]", "[REDACTED card]", "[REDACTED key]", "[REDACTED phone]", "[REDACTED]"):
        assert marker in prompt, (marker, prompt)
    assert kept.prompt[0] == {"role": "system", "content": "Be brief."}
    assert kept.answer == json_answer.json()["choices"][0]["message"]["content"] != ""
    stream_body = bodies[streamed.headers["x-switchyard-request-id"]]
    assert stream_body.answer and "[REDACTED email]" in stream_body.prompt[1]["content"]  # assembled from chunks
    assert not RequestBody.objects.filter(tenant=world.tenant_b).exists()  # not turned on: nothing kept

    for name, secret in SECRETS.items():
        assert _tables_holding(secret) == [], name

    staff = Client()
    staff.force_login(django_user_model.objects.create_superuser("ops", password="a-long-password-5"))
    log = next(log for log in logs if log.request_id == kept.request_id)
    page = staff.get(f"/admin/usage/requestlog/{log.pk}/change/").content.decode()
    assert "[REDACTED email]" in page and SECRETS["email"] not in page
    # The request log's text search finds requests by the words of their kept bodies.
    found = staff.get("/admin/usage/requestlog/", {"q": "text:stream it"}).content.decode()
    assert streamed.headers["x-switchyard-request-id"] in found and kept.request_id not in found
    found = staff.get("/admin/usage/requestlog/", {"q": "text:ticket brief"}).content.decode()
    assert kept.request_id in found and streamed.headers["x-switchyard-request-id"] in found
    assert not re.search(r"req_[0-9a-f]{24}", staff.get("/admin/usage/requestlog/", {
        "q": "text:globex"}).content.decode())  # tenant B kept no body


def test_a_tenants_patterns_must_be_regular_expressions(tenant_a):
    import pytest
    from django.core.exceptions import ValidationError

    tenant_a.redact_patterns = "ACME-\\d{4}\n(unclosed"
    with pytest.raises(ValidationError, match="Not a regular expression"):
        tenant_a.full_clean()
