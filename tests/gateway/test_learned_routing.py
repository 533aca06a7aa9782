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


def _ask_with(world, key: str, prompt: str, **headers) -> httpx.Response:
    return httpx.post(world.gateway.v1 + "/chat/completions",
                      headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-store", **headers},
                      json={"model": "smart", "messages": [{"role": "user", "content": prompt}]}, timeout=30)


def test_a_request_chooses_its_own_quality_target(learned):
    world = learned
    proof = "Prove that the square root of 11 is irrational."
    assert _ask(world, world.key_a, proof).headers["x-switchyard-model"] == "sim-premium"
    cheap = _ask_with(world, world.key_a, proof, **{"x-switchyard-quality-target": "0"})
    assert cheap.status_code == 200, cheap.text
    assert cheap.headers["x-switchyard-model"] == "sim-mini"
    assert "target 0.00 of best" in cheap.headers["x-switchyard-route-reason"]
    for bad in ("1.5", "-0.1", "most", "nan"):
        refused = _ask_with(world, world.key_a, proof, **{"x-switchyard-quality-target": bad})
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["param"] == "x-switchyard-quality-target"


def test_a_new_tenant_leans_on_the_global_prior_which_no_single_tenant_makes(learned):
    from apps.routing.models import ModelPrior
    from apps.routing.services import priors_refresh

    world = learned
    assert priors_refresh() == 0  # only tenant A has outcomes: its own figures are never published
    assert not ModelPrior.objects.exists()
    assert priors_refresh(min_tenants=1) == 2
    priors = dict(ModelPrior.objects.values_list("model_name", "score"))
    assert priors == {"sim-premium": 1.0, "sim-mini": 0.5}

    def routed(**headers):
        answer = _ask_with(world, world.key_b, "What's the capital city of Chile?", **headers)
        assert answer.status_code == 200, answer.text
        return answer if "global prior" in answer.headers["x-switchyard-route-reason"] else None

    # Tenant B has no outcome of its own: the prior says the premium model is the one to keep 0.9
    # of the best quality, and that the mini model keeps half of it.
    answer = wait_until(routed, timeout=20)
    assert answer, "the new priors never reached the gateway"
    assert answer.headers["x-switchyard-model"] == "sim-premium"
    assert answer.headers["x-switchyard-route-reason"].endswith("global prior for sim-premium, sim-mini")
    assert routed(**{"x-switchyard-quality-target": "0.5"}).headers["x-switchyard-model"] == "sim-mini"


def test_routing_savings_are_counted_against_the_best_candidate(learned):
    from apps.routing.models import RouteOutcome

    world = learned
    answer = _ask(world, world.key_a, "Which city is the capital of Chile?")
    assert answer.headers["x-switchyard-model"] == "sim-mini"
    request_id = answer.headers["x-switchyard-request-id"]
    [row] = request_logs(1, tenant=world.tenant_a, request_id=request_id)
    premium = world.models["sim-premium"].prices.order_by("-effective_from", "-id").first()
    at_best = premium.cost(input_tokens=row.input_tokens, cached_tokens=row.cached_tokens,
                           output_tokens=row.output_tokens)
    assert row.cost > 0 and at_best > row.cost
    assert row.routing_saved_cost == at_best - row.cost
    outcome = wait_until(lambda: RouteOutcome.objects.filter(request_id=request_id).first())
    assert outcome.best_model == "sim-premium"
    assert outcome.estimate >= 0.9 * outcome.best_estimate > 0


def _prompts_embedded(world) -> float:
    text = httpx.get(world.gateway.base + "/metrics", timeout=10).text
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("switchyard_embedding_batch_size_sum"))


def test_the_route_and_the_cache_share_one_embedding_of_the_prompt(learned):
    world = learned
    before = _prompts_embedded(world)
    answer = _ask(world, world.key_a, "Which city is the capital of Norway?")
    assert answer.headers["x-switchyard-cache"] == "miss"
    # The answer is saved for semantic hits with the vector the route computed.
    hit = wait_until(lambda: (lambda r: r if r.headers["x-switchyard-cache"] != "miss" else None)(
        _ask(world, world.key_a, "Which city is the capital of Norway?")))
    assert hit.headers["x-switchyard-cache"] == "hit-exact"
    assert _prompts_embedded(world) - before == 2  # the first request once, the exact hit's route once
