"""Settings the platform cannot run with are refused by the models themselves, so the admin, the
services and anything else that validates refuse them, and the database refuses a raw write:
a similarity threshold outside 0-1, a routing rule that targets or falls back to a non-chat
model or to its own target, a model that would bill nothing without being marked free."""

from __future__ import annotations

import html
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse

from apps.catalog.models import Model
from apps.routing.models import RoutingFallback, RoutingRule
from apps.tenants.models import Tenant
from apps.tenants.services import tenant_create
from tests.admin.conftest import form_data


@pytest.fixture
def embed_model(provider):
    return Model.objects.create(name="sim-embed", upstream_id="sim-embed", provider=provider,
                                mode=Model.Mode.EMBEDDING, input_price_per_million=Decimal("0.02"))


def _save(admin_client, url: str, form_id: str, **changes):
    return admin_client.post(url, form_data(admin_client.get(url).content.decode(), form_id, **changes))


def _errors(response) -> str:
    """Every error the admin form shows, forms and inline formsets alike."""
    assert response.status_code == 200, "the admin saved it"
    errors = [str(response.context["adminform"].form.errors)]
    for formset in response.context["inline_admin_formsets"]:
        errors += [str(formset.formset.non_form_errors()), *(str(each) for each in formset.formset.errors)]
    return html.unescape(" ".join(errors))


# --- Tenant: the similarity threshold is 0 to 1 -------------------------------------------------

@pytest.mark.parametrize("threshold", ["1.5", "-0.3"])
def test_it_refuses_a_similarity_threshold_outside_0_to_1_in_the_admin(admin_client, tenant_a, threshold):
    response = _save(admin_client, reverse("admin:tenants_tenant_change", args=[tenant_a.pk]), "tenant_form",
                     cache_similarity_threshold=threshold)
    assert "Ensure this value is" in _errors(response)
    tenant_a.refresh_from_db()
    assert tenant_a.cache_similarity_threshold == 0.80


def test_it_saves_a_threshold_at_either_end_of_the_range(admin_client, tenant_a):
    url = reverse("admin:tenants_tenant_change", args=[tenant_a.pk])
    for threshold in ("1", "0"):
        assert _save(admin_client, url, "tenant_form", cache_similarity_threshold=threshold).status_code == 302
        tenant_a.refresh_from_db()
        assert tenant_a.cache_similarity_threshold == float(threshold)


@pytest.mark.parametrize("threshold", [1.5, -0.3])
def test_it_refuses_a_similarity_threshold_outside_0_to_1_in_the_model_service_and_database(db, tenant_a, threshold):
    tenant_a.cache_similarity_threshold = threshold
    with pytest.raises(ValidationError) as error:
        tenant_a.full_clean()
    assert "cache_similarity_threshold" in error.value.message_dict
    with pytest.raises(ValidationError):
        tenant_create(name="Initech", slug="initech", cache_similarity_threshold=threshold)
    assert not Tenant.objects.filter(slug="initech").exists()
    with pytest.raises(IntegrityError, match="tenant_cache_threshold_0_to_1"), transaction.atomic():
        Tenant.objects.filter(pk=tenant_a.pk).update(cache_similarity_threshold=threshold)


# --- Routing rules: chat targets, fallbacks other than the target -------------------------------

def _rule_post(target, fallbacks=(), **changes) -> dict:
    data = {"name": "rule", "priority": "10", "is_active": "on", "weight": "100", "match_model": "auto",
            "match_tier": "", "match_tags": "[]", "target": target.pk,
            "fallbacks-TOTAL_FORMS": str(len(fallbacks)), "fallbacks-INITIAL_FORMS": "0",
            "fallbacks-MIN_NUM_FORMS": "0", "fallbacks-MAX_NUM_FORMS": "1000"}
    for i, model in enumerate(fallbacks):
        data[f"fallbacks-{i}-position"] = str(i)
        data[f"fallbacks-{i}-model"] = model.pk
    data.update(changes)
    return data


def test_it_refuses_a_rule_that_targets_an_embedding_model_in_the_admin(admin_client, embed_model):
    response = admin_client.post(reverse("admin:routing_routingrule_add"), _rule_post(embed_model))
    assert "sim-embed is an embedding model" in _errors(response)
    assert not RoutingRule.objects.exists()


@pytest.mark.parametrize("case", ["own target", "twice", "embedding"])
def test_it_refuses_a_bad_fallback_in_the_admin(admin_client, cheap_model, premium_model, embed_model, case):
    fallbacks = {"own target": [cheap_model], "twice": [premium_model, premium_model],
                 "embedding": [embed_model]}[case]
    response = admin_client.post(reverse("admin:routing_routingrule_add"), _rule_post(cheap_model, fallbacks))
    expected = {"own target": "sim-mini is the rule's target", "twice": "Please correct the duplicate data",
                "embedding": "sim-embed is an embedding model"}[case]
    assert expected in _errors(response)
    assert not RoutingRule.objects.exists()


def test_it_refuses_changing_a_rules_target_to_its_own_fallback_in_the_admin(admin_client, cheap_model,
                                                                              premium_model):
    rule = RoutingRule.objects.create(name="rule", target=cheap_model)
    RoutingFallback.objects.create(rule=rule, model=premium_model)
    url = reverse("admin:routing_routingrule_change", args=[rule.pk])
    response = _save(admin_client, url, "routingrule_form", target=premium_model.pk)
    assert "sim-premium is the rule's target" in _errors(response)
    rule.refresh_from_db()
    assert rule.target == cheap_model


def test_it_refuses_bad_rules_and_fallbacks_in_the_model(db, cheap_model, premium_model, embed_model):
    with pytest.raises(ValidationError, match="embedding model"):
        RoutingRule(name="rule", target=embed_model).full_clean()
    rule = RoutingRule.objects.create(name="rule", target=cheap_model)
    with pytest.raises(ValidationError, match="the rule's target"):
        RoutingFallback(rule=rule, model=cheap_model).full_clean()
    with pytest.raises(ValidationError, match="embedding model"):
        RoutingFallback(rule=rule, model=embed_model).full_clean()
    RoutingFallback.objects.create(rule=rule, model=premium_model)
    with pytest.raises(ValidationError):
        RoutingFallback(rule=rule, model=premium_model).full_clean()
    rule.target = premium_model
    with pytest.raises(ValidationError, match="already a fallback"):
        rule.full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        RoutingFallback.objects.create(rule=rule, model=premium_model)


# --- Models: priced, or marked free -------------------------------------------------------------

def _model_add(provider, **changes) -> dict:
    data = {"name": "sim-new", "upstream_id": "sim-new", "provider": provider.pk, "mode": "chat",
            "input_price_per_million": "0", "cached_input_price_per_million": "0", "output_price_per_million": "0",
            "batch_discount_percent": "0", "context_window": "128000", "max_output_tokens": "16384",
            "tier": "moderate", "is_active": "on", "prices-TOTAL_FORMS": "0", "prices-INITIAL_FORMS": "0",
            "prices-MIN_NUM_FORMS": "0", "prices-MAX_NUM_FORMS": "1000",
            "pool_strategy": "weighted", "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0",
            "deployments-MIN_NUM_FORMS": "0", "deployments-MAX_NUM_FORMS": "1000"}
    data.update(changes)
    return data


def test_it_refuses_a_model_with_no_price_unless_marked_free_in_the_admin(admin_client, provider):
    url = reverse("admin:catalog_model_add")
    response = admin_client.post(url, _model_add(provider))
    assert "or mark it free" in _errors(response)
    assert not Model.objects.filter(name="sim-new").exists()
    assert admin_client.post(url, _model_add(provider, output_price_per_million="0.5")).status_code == 302
    assert admin_client.post(url, _model_add(provider, name="sim-local", is_free="on")).status_code == 302
    assert Model.objects.get(name="sim-local").is_free


def test_it_refuses_to_take_a_models_prices_away_in_the_admin(admin_client, cheap_model):
    url = reverse("admin:catalog_model_change", args=[cheap_model.pk])
    response = _save(admin_client, url, "model_form", input_price_per_million="0", output_price_per_million="0")
    assert "or mark it free" in _errors(response)
    cheap_model.refresh_from_db()
    assert cheap_model.output_price_per_million == Decimal("0.60")


def test_it_refuses_an_unpriced_model_added_on_the_providers_page(admin_client, provider, cheap_model):
    url = reverse("admin:catalog_provider_change", args=[provider.pk])
    page = admin_client.get(url).content.decode()
    data = form_data(page, "provider_form", **{
        "models-TOTAL_FORMS": "2", "models-1-name": "sim-unpriced", "models-1-upstream_id": "sim-unpriced",
        "models-1-mode": "chat", "models-1-tier": "simple", "models-1-input_price_per_million": "0",
        "models-1-cached_input_price_per_million": "0", "models-1-output_price_per_million": "0",
        "models-1-is_active": "on", "models-1-provider": provider.pk})
    response = admin_client.post(url, data)
    assert "or mark it free" in _errors(response)
    assert not Model.objects.filter(name="sim-unpriced").exists()


def test_it_refuses_an_unpriced_model_in_the_model_and_the_database(db, provider):
    with pytest.raises(ValidationError, match="or mark it free"):
        Model(name="sim-new", upstream_id="sim-new", provider=provider).full_clean()
    Model(name="sim-local", upstream_id="sim-local", provider=provider, is_free=True).full_clean()
    Model(name="sim-embed", upstream_id="sim-embed", provider=provider, mode=Model.Mode.EMBEDDING,
          input_price_per_million=Decimal("0.02")).full_clean()
    with pytest.raises(IntegrityError, match="catalog_model_priced_or_free"), transaction.atomic():
        Model.objects.create(name="sim-new", upstream_id="sim-new", provider=provider)


# --- Through the running server -----------------------------------------------------------------

def test_it_refuses_a_threshold_above_1_on_the_running_server(operator_browser, tenant_a):
    url = reverse("admin:tenants_tenant_change", args=[tenant_a.pk])
    response = operator_browser.save(url, "tenant_form", cache_similarity_threshold="1.5")
    assert response.status_code == 200
    assert "Ensure this value is less than or equal to 1.0" in response.text
    assert operator_browser.save(url, "tenant_form", cache_similarity_threshold="0.9").status_code == 302
    tenant_a.refresh_from_db()
    assert tenant_a.cache_similarity_threshold == 0.9


def test_it_refuses_a_rule_targeting_an_embedding_model_on_the_running_server(operator_browser, embed_model):
    response = operator_browser.post(reverse("admin:routing_routingrule_add"), _rule_post(embed_model))
    assert response.status_code == 200
    assert "sim-embed is an embedding model" in response.text
    assert not RoutingRule.objects.exists()


def test_it_refuses_an_unpriced_model_on_the_running_server(operator_browser, provider):
    response = operator_browser.post(reverse("admin:catalog_model_add"), _model_add(provider))
    assert response.status_code == 200
    assert "or mark it free" in response.text
    assert not Model.objects.filter(name="sim-new").exists()
