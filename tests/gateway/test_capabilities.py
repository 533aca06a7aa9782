"""Routing that knows what each model can take: a request skips the models of its chain that
lack a capability it uses or whose context window it would overflow, a provider's own
context-length refusal moves on to a model with a larger window, and a request no model can
serve gets a 400 naming what is missing."""

from __future__ import annotations

import base64
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from apps.core import tokens
from tests.gateway.conftest import request_logs, wait_until

TOOLS = [{"type": "function", "function": {"name": "weather", "description": "The weather in a city",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                         "required": ["city"]}}}]
PIXEL = "data:image/png;base64," + base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                  "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()
NO_STORE = {"Cache-Control": "no-store"}


def post(world, body: dict, key: str | None = None) -> httpx.Response:
    return httpx.post(world.gateway.v1 + "/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key or world.key_a}", **NO_STORE})


def chat(world, content, model: str = "small-first", key: str | None = None, **extra) -> httpx.Response:
    return post(world, {"model": model, "messages": [{"role": "user", "content": content}], **extra}, key=key)


def words(count: int) -> str:
    """A prompt of about ``count`` tokens (" hello" is one token in o200k)."""
    return "hello" + " hello" * (count - 1)


@pytest.fixture
def sized(world):
    """``small-first`` routes to sim-mini (a 1,000-token window, no tools, images or reasoning),
    then sim-standard (6,000 tokens, no images or reasoning), then sim-premium (128,000, no
    reasoning)."""
    from apps.routing.models import RoutingFallback, RoutingRule

    mini, standard, premium = (world.models[name] for name in ("sim-mini", "sim-standard", "sim-premium"))
    for model, window, output, lacks in ((mini, 1000, 200, ("tools", "vision", "reasoning")),
                                         (standard, 6000, 1000, ("vision", "reasoning")),
                                         (premium, 128000, 4096, ("reasoning",))):
        model.context_window, model.max_output_tokens = window, output
        for name in lacks:
            setattr(model, f"supports_{name}", False)
        model.save()
    rule = RoutingRule.objects.create(name="small first", match_model="small-first", target=mini, priority=5)
    RoutingFallback.objects.create(rule=rule, model=standard, position=0)
    RoutingFallback.objects.create(rule=rule, model=premium, position=1)
    # Probed with tenant B's key: tenant A's usage rows are the tests' own.
    assert wait_until(lambda: chat(world, "Hi", key=world.key_b, reasoning_effort="low").status_code == 400), \
        "the gateway never saw the sized catalog"
    return world


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-switchyard-model"]


def test_it_skips_a_model_whose_window_the_prompt_overflows_for_a_larger_one(sized):
    assert served_by(chat(sized, "What is Python?", max_tokens=50)) == "sim-mini"
    assert served_by(chat(sized, words(1500), max_tokens=50)) == "sim-standard"
    assert served_by(chat(sized, words(7000), max_tokens=50)) == "sim-premium"
    # The small model was never asked the long prompts: it was skipped, not tried.
    assert sized.simulator.stats()["by_model"] == {"sim-mini": 1, "sim-standard": 1, "sim-premium": 1}
    rows = request_logs(3, tenant=sized.tenant_a)
    assert [row.model_used for row in rows] == ["sim-mini", "sim-standard", "sim-premium"]
    assert rows[0].upstream_failures == ""
    assert rows[1].upstream_failures.startswith("sim-mini: skipped, ")
    assert "in its window" in rows[1].upstream_failures
    assert "sim-standard: skipped" in rows[2].upstream_failures


def test_it_counts_the_models_max_output_when_the_request_sets_no_max_tokens(sized):
    prompt = words(850)
    assert 820 < tokens.messages_tokens([{"role": "user", "content": prompt}]) < 900
    assert served_by(chat(sized, prompt)) == "sim-standard"  # 850 + sim-mini's 200 of output > 1,000
    assert served_by(chat(sized, prompt, max_tokens=50)) == "sim-mini"
    assert served_by(chat(sized, prompt, max_completion_tokens=50)) == "sim-mini"


def test_it_skips_models_without_tools_or_image_inputs(sized):
    assert served_by(chat(sized, "Weather in Paris?", tools=TOOLS)) == "sim-standard"
    image = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
    assert served_by(chat(sized, image)) == "sim-premium"
    schema = {"type": "json_schema", "json_schema": {"name": "city", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    assert served_by(chat(sized, "Name a city.", response_format=schema)) == "sim-mini"  # every model has it
    (_tools, imaged, _schema) = request_logs(3, tenant=sized.tenant_a)
    assert imaged.model_used == "sim-premium"
    assert imaged.upstream_failures == "sim-mini: skipped, no image inputs; sim-standard: skipped, no image inputs"


def test_it_refuses_a_request_no_model_can_serve_naming_what_is_missing(sized):
    refused = chat(sized, "Think hard.", reasoning_effort="high")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "model_capability_missing" and error["param"] == "reasoning_effort"
    assert error["type"] == "invalid_request_error"
    assert "reasoning effort" in error["message"] and "sim-premium" in error["message"]

    image = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
    error = chat(sized, image, model="sim-standard").json()["error"]
    assert error["code"] == "model_capability_missing" and error["param"] == "messages[0].content[1]"
    assert error["message"] == ("This request uses image inputs (messages[0].content[1]); the model 'sim-standard' "
                                "does not support image inputs.")

    with pytest.raises(openai.BadRequestError) as caught:
        openai.OpenAI(base_url=sized.gateway.v1, api_key=sized.key_a, max_retries=0).chat.completions.create(
            model="sim-mini", messages=[{"role": "user", "content": words(1500)}], max_tokens=50)
    error = caught.value.body
    assert caught.value.code == "context_length_exceeded" and error["param"] == "messages"
    assert "sim-mini is 1000 tokens" in error["message"]

    error = chat(sized, words(200_000), max_tokens=50).json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "sim-premium, the roomiest of the models for 'small-first', is 128000 tokens" in error["message"]
    rows = request_logs(4, tenant=sized.tenant_a)
    assert [row.status_code for row in rows] == [400] * 4
    assert [row.error_code for row in rows] == ["model_capability_missing"] * 2 + ["context_length_exceeded"] * 2
    assert sized.simulator.stats()["requests"] == 0  # nothing was sent upstream


@pytest.mark.parametrize("stream", [False, True])
def test_a_providers_context_length_refusal_moves_on_to_a_larger_window(sized, stream):
    sized.simulator.fault(model="sim-mini", mode="context_length", count=-1)
    response = chat(sized, "What is Python?", stream=stream)
    assert served_by(response) == "sim-standard"
    if stream:
        assert "data: [DONE]" in response.text
    # Not retried on the model that refused: once, then the next one.
    assert sized.simulator.stats()["by_model"] == {"sim-mini": 1, "sim-standard": 1}
    (row,) = request_logs(1, tenant=sized.tenant_a)
    assert row.model_used == "sim-standard" and row.status_code == 200
    assert row.upstream_failures == "sim-mini: prompt too long for its context window (1000 tokens)"


def test_a_context_length_refusal_skips_models_no_larger_and_else_is_passed_on(sized):
    from apps.catalog.models import Model

    Model.objects.filter(name="sim-standard").update(context_window=1000)  # no larger than sim-mini's
    Model.objects.get(name="sim-premium").save()  # the change message
    assert wait_until(lambda: "sim-standard: skipped" in _failures_of(sized, words(1500), max_tokens=50))
    sized.simulator.reset()
    sized.simulator.fault(model="sim-mini", mode="context_length", count=1)
    assert served_by(chat(sized, "What is Python?")) == "sim-premium"
    assert sized.simulator.stats()["by_model"] == {"sim-mini": 1, "sim-premium": 1}  # sim-standard skipped
    # Asked for by name: no larger model to go to, so the provider's refusal is passed on.
    sized.simulator.fault(model="sim-mini", mode="context_length", count=1)
    refused = chat(sized, "What is Python?", model="sim-mini")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    assert refused.json()["error"]["message"].startswith("[simulated] This model's maximum context length")


def _failures_of(world, prompt: str, **extra) -> str:
    response = chat(world, prompt, **extra)
    if response.status_code != 200:
        return ""
    request_id = response.headers["x-switchyard-request-id"]
    (row,) = request_logs(1, request_id=request_id)
    return row.upstream_failures


def test_an_anthropic_prompt_too_long_moves_on_to_a_larger_window(sized):
    """Anthropic says so only in words: a 400 invalid_request_error "prompt is too long"."""
    from apps.catalog.models import Model, Provider
    from apps.routing.models import RoutingFallback, RoutingRule

    provider = Provider.objects.create(name="sim-anthropic", kind=Provider.Kind.ANTHROPIC,
                                       base_url=sized.simulator.v1, credential="sk-ant-sim", timeout_seconds=5.0)
    prices = {"input_price_per_million": Decimal("3"), "output_price_per_million": Decimal("15")}
    small = Model.objects.create(name="claude-small", upstream_id="sim-mini", provider=provider,
                                 context_window=100_000, max_output_tokens=4096, **prices)
    large = Model.objects.create(name="claude-large", upstream_id="sim-premium", provider=provider,
                                 context_window=1_000_000, max_output_tokens=4096, **prices)
    rule = RoutingRule.objects.create(name="claude", match_model="claude-auto", target=small, priority=6)
    RoutingFallback.objects.create(rule=rule, model=large, position=0)
    client = anthropic.Anthropic(base_url=sized.gateway.base, api_key=sized.key_a, max_retries=0,
                                 default_headers=NO_STORE)

    def ask():
        return client.messages.with_raw_response.create(
            model="claude-auto", max_tokens=100, messages=[{"role": "user", "content": "What is Python?"}])

    assert wait_until(lambda: _routes(ask))
    sized.simulator.reset()
    sized.simulator.fault(model="sim-mini", mode="context_length", count=1)
    raw = ask()
    assert raw.headers["x-switchyard-model"] == "claude-large"
    assert raw.parse().type == "message"
    assert sized.simulator.stats()["by_model"] == {"sim-mini": 1, "sim-premium": 1}
    # Asked for by name: Anthropic's own refusal, as it came.
    sized.simulator.fault(model="sim-mini", mode="context_length", count=1)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="claude-small", max_tokens=100,
                               messages=[{"role": "user", "content": "What is Python?"}])
    assert "prompt is too long" in caught.value.body["error"]["message"]


def _routes(ask) -> bool:
    try:
        return ask().status_code == 200
    except anthropic.APIStatusError:
        return False


def test_an_admin_edit_of_a_models_capabilities_and_window_reaches_routing(sized, admin_client):
    from apps.catalog.models import Model

    assert served_by(chat(sized, "Weather in Paris?", tools=TOOLS)) == "sim-standard"
    page = admin_client.get(f"/admin/catalog/model/{sized.models['sim-standard'].pk}/change/").content.decode()
    for name in ("supports_tools", "supports_vision", "supports_json_schema", "supports_reasoning"):
        assert f'name="{name}"' in page
    standard = Model.objects.get(name="sim-standard")
    form = {
        "name": standard.name, "upstream_id": standard.upstream_id, "provider": standard.provider_id,
        "mode": standard.mode, "tier": standard.tier, "pool_strategy": standard.pool_strategy,
        "input_price_per_million": standard.input_price_per_million,
        "cached_input_price_per_million": standard.cached_input_price_per_million,
        "output_price_per_million": standard.output_price_per_million,
        "batch_discount_percent": standard.batch_discount_percent,
        "context_window": "50000", "max_output_tokens": "1000", "is_active": "on",
        "supports_json_schema": "on",  # tools, images and reasoning unticked
        "prices-TOTAL_FORMS": "0", "prices-INITIAL_FORMS": "0", "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000", "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0",
        "deployments-MIN_NUM_FORMS": "0", "deployments-MAX_NUM_FORMS": "1000",
    }
    saved = admin_client.post(f"/admin/catalog/model/{standard.pk}/change/", form)
    assert saved.status_code == 302, saved.content.decode()[:3000]
    standard.refresh_from_db()
    assert (standard.supports_tools, standard.supports_json_schema, standard.context_window) == (False, True, 50000)
    # The gateway hears of the change: tools now go past sim-standard, and a prompt of 7,000
    # tokens fits its larger window.
    assert wait_until(lambda: served_by(chat(sized, "Weather in Paris?", tools=TOOLS)) == "sim-premium")
    assert served_by(chat(sized, words(7000), max_tokens=50)) == "sim-standard"


def test_a_tenants_rule_and_its_models_stay_its_own(sized):
    """Tenant B asking for tenant A's alias learns nothing of A's chain, with or without tools."""
    from apps.routing.models import RoutingRule

    RoutingRule.objects.create(name="acme only", tenant=sized.tenant_a, match_model="acme-small",
                               target=sized.models["sim-mini"], priority=1)
    assert wait_until(lambda: chat(sized, "Hi", model="acme-small").status_code == 200)
    refused = chat(sized, "Weather?", model="acme-small", tools=TOOLS)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_capability_missing"
    for body in ({"tools": TOOLS}, {}):
        other = post(sized, {"model": "acme-small", "messages": [{"role": "user", "content": "Hi"}], **body},
                     key=sized.key_b)
        assert other.status_code == 404
        assert other.json()["error"]["code"] == "model_not_found"
        assert "sim-mini" not in other.text


def test_counting_a_prompts_tokens_is_never_refused_for_a_capability_or_a_window(sized):
    client = anthropic.Anthropic(base_url=sized.gateway.base, api_key=sized.key_a, max_retries=0)
    tools = [{"name": "weather", "description": "The weather in a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    counted = client.messages.count_tokens(model="sim-mini", messages=[{"role": "user", "content": words(1500)}],
                                           tools=tools)
    assert counted.input_tokens > 1500  # more than sim-mini's window, and with tools it does not take
    with pytest.raises(anthropic.BadRequestError):  # while asking it to answer is refused
        client.messages.create(model="sim-mini", max_tokens=50, tools=tools,
                               messages=[{"role": "user", "content": "Weather in Paris?"}])
