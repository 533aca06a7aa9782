"""Who a request was for, kept on its usage row: the end user, tags, metadata and session a client
sends through each door reach the log, `/v1/usage` groups by end user and by tag set (groups that
sum to the tenant's totals, whole days from the rollups and partial days from the log), and the
CSV export carries them. Tenant B never sees tenant A's users or tags. Against the live gateway."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
from anthropic import Anthropic
from django.test import Client
from openai import OpenAI

from apps.reporting.services import usage_rollup
from tests.gateway.conftest import request_logs, usage_quiet


def _usage(world, key, **params) -> dict:
    response = httpx.get(world.gateway.v1 + "/usage", params=params, headers={"Authorization": f"Bearer {key}"},
                         timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_each_door_keeps_the_end_user_tags_metadata_and_session(world):
    sdk = OpenAI(base_url=world.gateway.v1, api_key=world.key_a, max_retries=0)
    sdk.chat.completions.create(
        model="sim-mini", messages=[{"role": "user", "content": "Attributed by the chat door."}], user="alice",
        metadata={"team": "search", "tags": "nightly,eval", "ignored": {"nested": True}},
        extra_headers={"x-switchyard-tags": "billing", "x-switchyard-session-id": "s-1"})
    sdk.responses.create(model="sim-mini", input="Attributed by the Responses door.", user="bob",
                         metadata={"session_id": "s-2", "tags": "eval"})
    Anthropic(base_url=world.gateway.base, api_key=world.key_a, max_retries=0).messages.create(
        model="sim-mini", max_tokens=50, messages=[{"role": "user", "content": "Attributed by the Messages door."}],
        metadata={"user_id": "carol"}, extra_headers={"x-switchyard-session-id": "s-3"})
    sdk.embeddings.create(model="sim-embed", input="attributed embedding", user="dave")
    sdk.chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "Nobody's."}])

    rows = {row.end_user: row for row in request_logs(5, tenant=world.tenant_a)}
    assert set(rows) == {"alice", "bob", "carol", "dave", ""}
    alice = rows["alice"]
    assert alice.tags == ["billing", "eval", "nightly"]  # body and header together, sorted
    assert alice.metadata == {"team": "search", "tags": "nightly,eval"}  # a nested value is left out
    assert alice.session_id == "s-1"
    assert (rows["bob"].session_id, rows["bob"].tags, rows["bob"].endpoint) == ("s-2", ["eval"], "/v1/responses")
    assert (rows["carol"].session_id, rows["carol"].endpoint) == ("s-3", "/v1/messages")
    assert rows["dave"].endpoint == "/v1/embeddings"
    assert (rows[""].tags, rows[""].metadata, rows[""].session_id) == ([], None, "")


def test_usage_groups_by_end_user_and_tag_set_summing_to_the_totals(world, django_user_model):
    sdk = OpenAI(base_url=world.gateway.v1, api_key=world.key_a, max_retries=0)
    for n, (user, tags) in enumerate([("alice", "eval"), ("alice", "eval,nightly"), ("bob", ""), ("", "eval"),
                                      ("bob", "eval")]):
        sdk.chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": f"Group me {n}."}],
                                    extra_headers={"x-switchyard-tags": tags}, **({"user": user} if user else {}))
    OpenAI(base_url=world.gateway.v1, api_key=world.key_b, max_retries=0).chat.completions.create(
        model="sim-mini", messages=[{"role": "user", "content": "Globex's own."}], user="mallory",
        extra_headers={"x-switchyard-tags": "secret-project"})
    logs = request_logs(5, tenant=world.tenant_a)
    usage_quiet()
    usage_rollup()
    usage_rollup()

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    whole_days = {"start": (today - timedelta(days=1)).date().isoformat(),
                  "end": (today + timedelta(days=1)).date().isoformat()}
    partial = {"start": (datetime.now(UTC) - timedelta(hours=50)).isoformat(),
               "end": (datetime.now(UTC) + timedelta(minutes=5)).isoformat()}
    total_cost = sum((row.cost for row in logs), Decimal(0))
    for params in (whole_days, partial):  # rollups for the whole days, the log for the partial ones
        by_user = _usage(world, world.key_a, group_by="user", **params)
        users = {row["group"]: row for row in by_user["data"]}
        assert {name: row["requests"] for name, row in users.items()} == {"alice": 2, "bob": 2, "": 1}
        assert sum(Decimal(row["cost"]) for row in by_user["data"]) == total_cost == Decimal(
            by_user["totals"]["cost"])
        by_tags = _usage(world, world.key_a, group_by="tags", **params)
        sets = {tuple(row["group"]): row["requests"] for row in by_tags["data"]}
        assert sets == {("eval",): 3, ("eval", "nightly"): 1, (): 1}
        assert sum(Decimal(row["cost"]) for row in by_tags["data"]) == total_cost
        assert sum(row["requests"] for row in by_tags["data"]) == by_tags["totals"]["requests"] == 5

    # Tenant B's own figures: its user and tags, nothing of A's (and A's had none of B's above).
    theirs = _usage(world, world.key_b, group_by="user", **whole_days)["data"]
    assert [row["group"] for row in theirs] == ["mallory"]
    assert [row["group"] for row in _usage(world, world.key_b, group_by="tags", **whole_days)["data"]] == [
        ["secret-project"]]

    staff = Client()
    staff.force_login(django_user_model.objects.create_superuser("ops", password="a-long-password-6"))
    page = staff.get("/admin/dashboard/", {"tenant": world.tenant_a.pk, "range": "today"}).content.decode()
    users = page.split('id="sy-users"')[1].split("</table>")[0]
    assert ">alice</a></td><td>2</td>" in users and "<em>none given</em>" in users and "mallory" not in users
    tags = page.split('id="sy-tags"')[1].split("</table>")[0]
    assert re.search(r">eval</a>, <a [^>]*>nightly</a></td><td>1</td>", tags) and "secret-project" not in tags
    assert 'id="sy-users"' not in staff.get("/admin/dashboard/", {"range": "today"}).content.decode()
    # The request log's search by end user and by tag.
    def listed(q: str) -> set[str]:
        page = staff.get("/admin/usage/requestlog/", {"q": q}).content.decode()
        return set(re.findall(r"req_[0-9a-f]{24}", page.split('id="result_list"')[-1]))

    by_id = {log.request_id: log for log in logs}
    assert listed("user:alice") == {rid for rid, log in by_id.items() if log.end_user == "alice"} != set()
    assert listed("tag:nightly") == {rid for rid, log in by_id.items() if "nightly" in log.tags} != set()
    assert listed("tag:secret-project") != set() and not listed("tag:secret-project") & set(by_id)

    csv = httpx.get(world.gateway.v1 + "/usage/export", params=whole_days,
                    headers={"Authorization": f"Bearer {world.key_a}"}, timeout=30).text.splitlines()
    assert csv[0].endswith(",end_user,tags,session_id")
    assert any(line.endswith(',alice,"eval,nightly",') for line in csv[1:])
    assert "mallory" not in "\n".join(csv) and "secret-project" not in "\n".join(csv)


def test_a_bad_group_names_the_choices(world):
    response = httpx.get(world.gateway.v1 + "/usage", params={"group_by": "planet"},
                         headers={"Authorization": f"Bearer {world.key_a}"}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "group_by" and "user, tags" in error["message"]
