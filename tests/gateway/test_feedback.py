"""Feedback on a request by its id: a wrong cache hit removes or demotes its entry; an answer's
score is kept against its usage row. Against the live gateway, its real embedder and database."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway.conftest import request_logs, wait_until
from tests.gateway.test_cache import ask, entries

ORIGINAL = "Train times from Paris to Rome tomorrow"
REWORDED = "Hey, train times from Paris to Rome tomorrow?"


def post(world, path: str, body, *, key=None) -> httpx.Response:
    return httpx.post(world.gateway.v1 + path, headers={"Authorization": f"Bearer {key or world.key_a}"},
                      json=body, timeout=30)


def test_a_wrong_semantic_hit_raises_its_entrys_bar_and_a_wrong_exact_hit_removes_it(semantic):
    from apps.cache.models import CacheEntry
    from apps.usage.models import Feedback

    world = semantic
    ask(world, ORIGINAL)
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    headers, _ = ask(world, REWORDED)
    assert headers["x-switchyard-cache"] == "hit-semantic"
    similarity = float(headers["x-switchyard-cache-similarity"])
    entry = CacheEntry.objects.get(tenant=world.tenant_a)

    answer = post(world, "/cache/feedback", {"request_id": headers["x-switchyard-request-id"], "correct": False,
                                              "comment": "asked about another day"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["object"], body["cache"], body["action"], body["correct"]) == (
        "cache.feedback", "semantic", "entry_demoted", False)
    entry.refresh_from_db()
    assert entry.wrong_hits == 1
    assert similarity < entry.min_similarity <= similarity + 0.02 + 1e-4  # the header rounds to 4 places
    (kept,) = Feedback.objects.filter(tenant=world.tenant_a, kind="cache")
    assert (kept.score, kept.cache_entry_id, kept.comment) == (0.0, entry.pk, "asked about another day")

    # The same rewording now misses and goes upstream; the entry still answers its own prompt.
    before = world.simulator.stats()["requests"]
    assert ask(world, REWORDED)[0]["x-switchyard-cache"] == "miss"
    assert world.simulator.stats()["requests"] == before + 1
    assert wait_until(lambda: entries(world.tenant_a) == 2)
    CacheEntry.objects.exclude(pk=entry.pk).delete()  # the rewording's own answer: out of the way below
    exact_headers, _ = ask(world, ORIGINAL)
    assert exact_headers["x-switchyard-cache"] == "hit-exact"

    removed = post(world, "/cache/feedback", {"request_id": exact_headers["x-switchyard-request-id"],
                                              "correct": False})
    assert removed.json()["action"] == "entry_removed", removed.text
    assert not CacheEntry.objects.filter(pk=entry.pk).exists()
    assert ask(world, ORIGINAL)[0]["x-switchyard-cache"] == "miss"
    # Saying the hit was right after all is recorded, and replaces the first report.
    again = post(world, "/cache/feedback", {"request_id": exact_headers["x-switchyard-request-id"],
                                            "correct": True})
    assert again.json()["action"] == "recorded"
    assert Feedback.objects.get(request_id=exact_headers["x-switchyard-request-id"]).score == 1.0


def test_a_right_hit_changes_nothing(semantic):
    from apps.cache.models import CacheEntry

    world = semantic
    ask(world, ORIGINAL)
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    headers, _ = ask(world, REWORDED)
    answer = post(world, "/cache/feedback", {"request_id": headers["x-switchyard-request-id"], "correct": True})
    assert answer.json()["action"] == "recorded"
    entry = CacheEntry.objects.get(tenant=world.tenant_a)
    assert (entry.min_similarity, entry.wrong_hits) == (None, 0)
    assert ask(world, REWORDED)[0]["x-switchyard-cache"] == "hit-semantic"


def test_an_answers_score_is_kept_against_its_usage_row(world):
    from apps.usage.models import Feedback

    headers, _ = ask(world, "Write a haiku about rain", model="sim-standard")
    request_id = headers["x-switchyard-request-id"]
    # Sent at once: the usage row is still in the buffer, and the endpoint waits for it.
    answer = post(world, "/feedback", {"request_id": request_id, "score": 0.25, "comment": "too long"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"object": "feedback", "request_id": request_id, "score": 0.25, "model": "sim-standard",
                             "learned_routing": False}
    assert post(world, "/feedback", {"request_id": request_id, "score": True}).status_code == 200
    (kept,) = Feedback.objects.filter(request_id=request_id)
    assert (kept.kind, kept.score, kept.model_used, kept.tenant_id) == ("outcome", 1.0, "sim-standard",
                                                                        world.tenant_a.pk)
    (row,) = request_logs(1, tenant=world.tenant_a)
    assert row.request_id == request_id


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/cache/feedback", {"correct": False}, "request_id"),
    ("/cache/feedback", {"request_id": "", "correct": False}, "request_id"),
    ("/cache/feedback", {"request_id": "x" * 65, "correct": False}, "request_id"),
    ("/cache/feedback", {"request_id": "r\x00-1", "correct": True}, "request_id"),
    ("/cache/feedback", {"request_id": "r-1"}, "correct"),
    ("/cache/feedback", {"request_id": "r-1", "correct": "no"}, "correct"),
    ("/cache/feedback", {"request_id": "r-1", "correct": False, "comment": 5}, "comment"),
    ("/feedback", {"request_id": "r-1"}, "score"),
    ("/feedback", {"request_id": "r-1", "score": 1.5}, "score"),
    ("/feedback", {"request_id": "r-1", "score": -0.1}, "score"),
    ("/feedback", {"request_id": "r-1", "score": "good"}, "score"),
    ("/feedback", {"request_id": "r-1", "score": 1, "comment": "x" * 4001}, "comment"),
    ("/feedback", [1, 2], None),
])
def test_it_refuses_bad_feedback_with_an_openai_error(world, path, body, param):
    answer = post(world, path, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_it_refuses_feedback_on_unknown_requests_and_answers_not_from_the_cache(world):
    from apps.usage.models import Feedback

    for request_id in ("no-such-request", "req_" + "0" * 24):  # refused at once, and after the wait for a row
        unknown = post(world, "/feedback", {"request_id": request_id, "score": 1})
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "request_not_found")
    headers, _ = ask(world, "Name three rivers in Asia")
    missed = post(world, "/cache/feedback", {"request_id": headers["x-switchyard-request-id"], "correct": False})
    assert (missed.status_code, missed.json()["error"]["code"]) == (400, "not_a_cache_hit")
    not_json = httpx.post(world.gateway.v1 + "/feedback", content=b"{", timeout=30,
                          headers={"Authorization": f"Bearer {world.key_a}", "content-type": "application/json"})
    assert not_json.status_code == 400
    assert not Feedback.objects.exists()
