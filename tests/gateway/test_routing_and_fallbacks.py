"""Routing by complexity, fallbacks on upstream failure, exact cost, tenant isolation."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest

from tests.gateway.conftest import request_logs, wait_until


def sdk(world, key=None) -> openai.OpenAI:
    # Routing and fallbacks are about the upstream path: keep the cache out of the way.
    return openai.OpenAI(base_url=world.gateway.v1, api_key=key or world.key_a, max_retries=0,
                         default_headers={"Cache-Control": "no-store"})


def ask(world, prompt: str, model: str = "auto", key=None, **extra):
    raw = sdk(world, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], **extra)
    return raw.headers, raw.parse()


def test_it_routes_a_simple_question_to_the_cheap_model(world):
    headers, _ = ask(world, "What is Python?")
    assert headers["x-switchyard-model"] == "sim-mini"
    (row,) = request_logs(1, tenant=world.tenant_a)
    assert row.requested_model == "auto"
    assert row.model_used == "sim-mini"
    assert row.routing_rule is not None and row.routing_rule.match_tier == "simple"
    assert (row.route_tier, row.route_chain) == ("simple", "sim-mini > sim-standard")  # the decision, kept


def test_it_records_what_routing_saved_against_the_dearest_model_or_the_one_asked_for(world):
    ask(world, "What is Python?")  # auto: served by sim-mini, compared with sim-premium
    ask(world, "What is Python?", model="sim-mini")  # asked for by name: nothing saved by routing
    routed, named = request_logs(2, tenant=world.tenant_a)
    assert routed.requested_model == "auto" and routed.model_used == "sim-mini"
    premium = world.models["sim-premium"]
    at_premium = (routed.input_tokens * premium.input_price_per_million
                  + routed.output_tokens * premium.output_price_per_million) / 1_000_000
    assert routed.routing_saved_cost == at_premium - routed.cost > 0
    assert named.model_used == "sim-mini" and named.routing_saved_cost == 0


def test_it_routes_an_analysis_prompt_to_the_complex_model(world):
    headers, _ = ask(world, "Analyze the trade-offs between event sourcing and CRUD for a billing system, "
                            "and compare their failure modes step by step.")
    assert headers["x-switchyard-model"] == "sim-premium"


def test_it_routes_other_prompts_to_the_mid_model(world):
    headers, _ = ask(world, "Write a short poem about a train yard at night.")
    assert headers["x-switchyard-model"] == "sim-standard"


def test_it_uses_classifier_phrases_edited_in_the_admin(world):
    from apps.routing.models import ComplexityIndicator

    prompt = "Summarise the plot of Hamlet."
    assert ask(world, prompt)[0]["x-switchyard-model"] == "sim-standard"
    ComplexityIndicator.objects.create(phrase="summarise", tier="simple")
    assert wait_until(lambda: ask(world, prompt)[0]["x-switchyard-model"] == "sim-mini")


def test_it_falls_back_when_the_upstream_returns_500(world):
    world.simulator.fault(model="sim-mini", mode="status", status=500, count=-1)
    headers, completion = ask(world, "What is Python?")
    assert headers["x-switchyard-model"] == "sim-standard"
    assert completion.choices[0].message.content
    (row,) = request_logs(1, tenant=world.tenant_a)
    assert row.model_used == "sim-standard"
    assert row.status_code == 200
    # the primary was tried 1 + retries times before falling through
    assert world.simulator.stats()["by_model"].get("sim-mini", 0) == 2


def test_it_retries_a_single_failure_on_the_same_model(world):
    world.simulator.fault(model="sim-mini", mode="status", status=503, count=1)
    headers, _ = ask(world, "What is Python?")
    assert headers["x-switchyard-model"] == "sim-mini"


def test_it_does_not_retry_client_errors(world):
    world.simulator.fault(model="sim-mini", mode="status", status=400, count=-1)
    with pytest.raises(openai.BadRequestError):
        ask(world, "What is Python?")
    assert world.simulator.stats()["by_model"].get("sim-mini", 0) == 1
    assert world.simulator.stats()["by_model"].get("sim-standard", 0) == 0


def test_it_falls_back_when_the_upstream_times_out(world):
    from apps.catalog.models import Provider

    # Short enough to wait out, long enough for the fallback's healthy answer on a loaded
    # machine (it goes to the same provider, with the same timeout).
    Provider.objects.filter(pk=world.provider.pk).update(timeout_seconds=2.0)
    world.provider.timeout_seconds = 2.0
    world.provider.save()
    world.simulator.fault(model="sim-mini", mode="timeout", count=-1)
    headers, _ = ask(world, "What is Python?")
    assert headers["x-switchyard-model"] == "sim-standard"


def test_it_falls_back_when_a_stream_fails_before_its_first_byte(world):
    world.simulator.fault(model="sim-mini", mode="status", status=502, count=-1)
    with httpx.stream("POST", world.gateway.v1 + "/chat/completions",
                      headers={"Authorization": f"Bearer {world.key_a}", "Cache-Control": "no-store"},
                      json={"model": "auto", "stream": True,
                            "messages": [{"role": "user", "content": "What is Python?"}]}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["x-switchyard-model"] == "sim-standard"
        body = response.read().decode()
    assert body.rstrip().endswith("data: [DONE]")


def test_it_ends_a_stream_cut_mid_way_with_an_error_event(world):
    world.simulator.fault(model="sim-mini", mode="cut", count=-1)
    stream = sdk(world).chat.completions.create(
        model="sim-mini", messages=[{"role": "user", "content": "cut me"}], stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
    assert received, "the stream had started before the cut"
    assert "upstream" in str(caught.value).lower()
    (row,) = request_logs(1, tenant=world.tenant_a, is_stream=True)
    assert row.status_code == 502
    assert row.error_code == "upstream_stream_cut"
    assert row.output_tokens > 0  # billed for what was produced


def test_it_costs_a_known_request_exactly(world):
    headers, completion = ask(world, "Price this please", model="sim-premium")
    usage = completion.usage
    expected = (Decimal(usage.prompt_tokens) * Decimal("15.00") + Decimal(usage.completion_tokens) * Decimal("60.00")
                ) / Decimal(1_000_000)
    assert Decimal(headers["x-switchyard-cost"]) == expected
    (row,) = request_logs(1, tenant=world.tenant_a)
    assert row.cost == expected
    assert row.input_tokens == usage.prompt_tokens
    assert row.output_tokens == usage.completion_tokens
    assert row.price == world.models["sim-premium"].prices.get()


def test_it_keeps_one_tenants_rules_and_rows_from_another(world):
    from apps.routing.models import RoutingRule
    from apps.usage.models import RequestLog

    RoutingRule.objects.create(name="acme alias", tenant=world.tenant_a, match_model="acme-special",
                               match_tier="", target=world.models["sim-premium"], priority=1)
    assert wait_until(lambda: _status(world, world.key_a, "acme-special") == 200)
    assert _status(world, world.key_b, "acme-special") == 404
    request_logs(1, tenant=world.tenant_a, model_used="sim-premium")  # A's answer
    request_logs(1, tenant=world.tenant_b)  # B's 404
    assert set(RequestLog.objects.filter(tenant=world.tenant_b).values_list("api_key__tenant", flat=True)) == {
        world.tenant_b.pk}
    assert not RequestLog.objects.filter(tenant=world.tenant_b, model_used="sim-premium").exists()


def _status(world, key, model):
    response = httpx.post(world.gateway.v1 + "/chat/completions",
                          headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-store"},
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    return response.status_code
