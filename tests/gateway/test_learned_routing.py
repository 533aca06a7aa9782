"""Learned routing through the live gateway: a tenant's outcomes on similar prompts decide which
model of a learned rule answers, the reason is given, feedback scores the route, and no tenant
learns from another's outcomes."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway.conftest import request_logs, wait_until

GEOGRAPHY = ["What is the capital of {}?", "Which city is the capital of {}?", "Name the capital city of {}."]
COUNTRIES = ["France", "Spain", "Italy", "Peru", "Kenya"]
PROOFS = ["Prove that there are infinitely many primes of the form {}.",
          "Give a rigorous proof that {} is irrational.",
          "Prove by induction that {} holds for every natural number n."]
MATH = ["4k+3", "the square root of 7", "the sum of the first n odd numbers equals n squared", "6k+5",
        "log2 of 3"]


def _ask(world, key: str, prompt: str) -> httpx.Response:
    return httpx.post(world.gateway.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "smart", "messages": [{"role": "user", "content": prompt}]}, timeout=30)


def _learned_rule(world, tenant):
    from apps.routing.models import RoutingFallback, RoutingRule

    rule = RoutingRule.objects.create(tenant=tenant, name="learned smart", match_model="smart", priority=1,
                                      target=world.models["sim-premium"], learned=True, quality_target=0.9,
                                      explore_share=0.0)
    RoutingFallback.objects.create(rule=rule, model=world.models["sim-mini"], position=0)
    return rule


@pytest.fixture
def learned(semantic):
    """Tenant A's outcomes: on capital-city questions the small model is as good as the premium
    one; on proofs only the premium one is right. Tenant B has the same rule and no outcomes."""
    from apps.cache.embedder import LocalEmbedder
    from apps.routing.models import RouteOutcome

    world = semantic
    rule = _learned_rule(world, world.tenant_a)
    _learned_rule(world, world.tenant_b)
    easy = [template.format(c) for template in GEOGRAPHY for c in COUNTRIES[:4]]
    hard = [template.format(m) for template in PROOFS for m in MATH[:4]]
    vectors = LocalEmbedder(threads=1).embed_sync(easy + hard)
    rows = []
    for i, (prompt, vector) in enumerate(zip(easy + hard, vectors, strict=True)):
        for model, score in (("sim-premium", 1.0), ("sim-mini", 1.0 if prompt in easy else 0.0)):
            rows.append(RouteOutcome(tenant=world.tenant_a, request_id=f"seed-{i}-{model}", rule=rule,
                                     model_name=model, embedding=vector.tolist(), score=score))
    RouteOutcome.objects.bulk_create(rows)
    assert wait_until(lambda: _ask(world, world.key_a, "warm up").status_code == 200)
    return world


def test_it_sends_each_prompt_to_the_cheapest_model_its_outcomes_say_is_enough(learned):
    world = learned
    easy = _ask(world, world.key_a, "What's the capital city of Chile?")
    assert easy.status_code == 200, easy.text
    assert easy.headers["x-switchyard-model"] == "sim-mini", easy.headers["x-switchyard-route-reason"]
    assert easy.headers["x-switchyard-route-reason"].startswith("learned: sim-mini expected")
    estimates = dict(item.split("=") for item in easy.headers["x-switchyard-route-estimates"].split(";"))
    assert float(estimates["sim-mini"]) >= 0.9 * float(estimates["sim-premium"])
    hard = _ask(world, world.key_a, "Prove that the square root of 11 is irrational.")
    assert hard.headers["x-switchyard-model"] == "sim-premium"
    assert hard.headers["x-switchyard-route-reason"].startswith("learned: sim-premium expected")
    rows = {row.request_id: row for row in request_logs(3, tenant=world.tenant_a)}
    assert rows[easy.headers["x-switchyard-request-id"]].route_reason == easy.headers["x-switchyard-route-reason"]


def test_feedback_scores_the_route_for_the_model_that_answered(learned):
    from apps.routing.models import RouteOutcome

    world = learned
    answer = _ask(world, world.key_a, "Which city is the capital of Japan?")
    request_id = answer.headers["x-switchyard-request-id"]
    assert wait_until(lambda: RouteOutcome.objects.filter(request_id=request_id).exists())
    feedback = httpx.post(world.gateway.v1 + "/feedback", headers={"Authorization": f"Bearer {world.key_a}"},
                          json={"request_id": request_id, "score": 0}, timeout=30)
    assert feedback.json()["learned_routing"] is True, feedback.text
    outcome = RouteOutcome.objects.get(request_id=request_id)
    assert (outcome.tenant_id, outcome.model_name, outcome.score) == (world.tenant_a.pk, "sim-mini", 0.0)


def test_no_tenant_learns_from_anothers_outcomes(learned):
    from apps.routing.models import RouteOutcome

    world = learned
    answer = _ask(world, world.key_b, "What's the capital city of Chile?")
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-switchyard-model"] == "sim-premium"  # the rule's own order: B has no outcomes
    assert "too few outcomes" in answer.headers["x-switchyard-route-reason"]
    # B's feedback cannot score A's routes, and A's request ids are unknown to B.
    a_route = RouteOutcome.objects.filter(tenant=world.tenant_a).first()
    refused = httpx.post(world.gateway.v1 + "/feedback", headers={"Authorization": f"Bearer {world.key_b}"},
                         json={"request_id": a_route.request_id, "score": 0}, timeout=30)
    assert refused.status_code == 404
    a_route.refresh_from_db()
    assert a_route.score == 1.0
