"""The complexity classifier and rule resolution, on a real snapshot of the database."""

from __future__ import annotations

import pytest

from apps.core.demo import DEFAULT_INDICATORS
from apps.gateway.snapshot import snapshot_load
from apps.routing.engine import complexity_classify, route_resolve
from apps.routing.models import ComplexityIndicator, RoutingFallback, RoutingRule


@pytest.fixture
def indicators(db):
    for tier, phrases in DEFAULT_INDICATORS.items():
        for phrase in phrases:
            ComplexityIndicator.objects.create(phrase=phrase, tier=tier)


@pytest.fixture
def rules(cheap_model, premium_model, indicators):
    simple = RoutingRule.objects.create(name="simple", match_model="auto", match_tier="simple",
                                        target=cheap_model, priority=10)
    RoutingFallback.objects.create(rule=simple, model=premium_model, position=0)
    RoutingRule.objects.create(name="complex", match_model="auto", match_tier="complex", target=premium_model,
                               priority=20)
    return simple


def _classify(text: str) -> str:
    snapshot = snapshot_load()
    return complexity_classify(text, snapshot.simple_pattern, snapshot.complex_pattern)


@pytest.mark.parametrize(
    ("prompt", "tier"),
    [
        ("What is Python?", "simple"),
        ("Define entropy.", "simple"),
        ("Analyze the causes of the 2008 financial crisis.", "complex"),
        ("Compare Rust and Go for network services, step by step.", "complex"),
        ("Write a haiku about trains.", "moderate"),
        ("word " * 250, "complex"),
    ],
)
def test_it_classifies_prompts_by_phrases_and_length(indicators, prompt, tier):
    assert _classify(prompt) == tier


def test_it_matches_whole_words_only(indicators):
    # "name" is a simple phrase; "username" must not trigger it
    assert _classify("Pick a username for a database admin account.") == "moderate"


def test_it_ignores_inactive_phrases(indicators):
    ComplexityIndicator.objects.filter(phrase="what is").update(is_active=False)
    assert _classify("What is Python?") == "moderate"


def test_it_resolves_auto_by_rule_with_fallbacks(rules, cheap_model, premium_model, tenant_a):
    route = route_resolve(snapshot_load(), tenant_id=tenant_a.pk, requested="auto", prompt_text="What is Python?",
                          prompt_tokens=5)
    assert [m.name for m in route.chain] == ["sim-mini", "sim-premium"]
    assert route.rule_id == rules.pk
    assert route.tier == "simple"


def test_it_routes_a_concrete_model_to_itself(rules, premium_model, tenant_a):
    route = route_resolve(snapshot_load(), tenant_id=tenant_a.pk, requested="sim-premium",
                          prompt_text="What is Python?", prompt_tokens=5)
    assert [m.name for m in route.chain] == ["sim-premium"]
    assert route.rule_id is None


def test_it_returns_none_for_an_unknown_model(rules, tenant_a):
    assert route_resolve(snapshot_load(), tenant_id=tenant_a.pk, requested="gpt-99", prompt_text="x",
                         prompt_tokens=1) is None


def test_it_applies_tenant_rules_before_global_and_only_to_their_tenant(rules, premium_model, tenant_a, tenant_b):
    RoutingRule.objects.create(name="acme: everything premium", tenant=tenant_a, match_model="auto",
                               target=premium_model, priority=500)
    snapshot = snapshot_load()
    mine = route_resolve(snapshot, tenant_id=tenant_a.pk, requested="auto", prompt_text="What is Python?",
                         prompt_tokens=5)
    theirs = route_resolve(snapshot, tenant_id=tenant_b.pk, requested="auto", prompt_text="What is Python?",
                           prompt_tokens=5)
    assert mine.chain[0].name == "sim-premium"
    assert theirs.chain[0].name == "sim-mini"


def test_it_matches_token_ranges_and_tags(cheap_model, premium_model, tenant_a, indicators):
    RoutingRule.objects.create(name="long prompts", match_model="auto", min_prompt_tokens=1000,
                               target=premium_model, priority=1)
    RoutingRule.objects.create(name="batch tag", match_model="auto", match_tags=["batch"], target=cheap_model,
                               priority=2)
    RoutingRule.objects.create(name="default", match_model="auto", target=premium_model, priority=3)
    snapshot = snapshot_load()

    def pick(tokens: int, tags=frozenset()) -> str:
        return route_resolve(snapshot, tenant_id=tenant_a.pk, requested="auto", prompt_text="hello",
                             prompt_tokens=tokens, tags=tags).chain[0].name

    assert pick(5000) == "sim-premium"
    assert pick(10, frozenset({"batch"})) == "sim-mini"
    assert pick(10) == "sim-premium"


def test_it_drops_inactive_models_from_chains(rules, cheap_model, tenant_a):
    cheap_model.is_active = False
    cheap_model.save()
    route = route_resolve(snapshot_load(), tenant_id=tenant_a.pk, requested="auto", prompt_text="What is Python?",
                          prompt_tokens=5)
    assert [m.name for m in route.chain] == ["sim-premium"]
