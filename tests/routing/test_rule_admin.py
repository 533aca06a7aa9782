"""The routing rules' admin as an operator meets it: tags typed as a list of words, fallbacks
numbered in the list, one scope filter, and the order rules run in said on the form."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.catalog.models import Model, Provider
from apps.routing.models import RoutingFallback, RoutingRule

ADD, LIST = "admin:routing_routingrule_add", "admin:routing_routingrule_changelist"


@pytest.fixture
def models(db):
    provider = Provider.objects.create(name="sim", base_url="http://127.0.0.1:9/v1")
    return [Model.objects.create(name=name, upstream_id=name, provider=provider, is_free=True)
            for name in ("sim-premium", "sim-mini", "sim-basic")]


def _form(target, **fields) -> dict:
    return {"name": "rule", "priority": "10", "is_active": "on", "weight": "100", "match_model": "auto",
            "match_tier": "", "target": target.pk, "quality_target": "0.95", "explore_share": "0.05",
            "fallbacks-TOTAL_FORMS": "0", "fallbacks-INITIAL_FORMS": "0", "fallbacks-MIN_NUM_FORMS": "0",
            "fallbacks-MAX_NUM_FORMS": "1000", **fields}


@pytest.mark.parametrize(("typed", "stored"), [
    ("batch, internal", ["batch", "internal"]),
    (" batch ,, batch,internal ", ["batch", "internal"]),
    ('["batch", "internal"]', ["batch", "internal"]),
    ("", []),
])
def test_tags_are_typed_as_comma_separated_words(admin_client, models, typed, stored):
    response = admin_client.post(reverse(ADD), _form(models[0], match_tags=typed))
    assert response.status_code == 302, response.content.decode()[:2000]
    rule = RoutingRule.objects.get()
    assert rule.match_tags == stored
    page = admin_client.get(reverse("admin:routing_routingrule_change", args=[rule.pk])).content.decode()
    assert f'name="match_tags" value="{", ".join(stored)}"' in page or (not stored and 'name="match_tags"' in page)


@pytest.mark.parametrize("typed", ['["batch", ', "[1, 2]"])
def test_a_broken_json_list_is_refused_as_tags(admin_client, models, typed):
    response = admin_client.post(reverse(ADD), _form(models[0], match_tags=typed))
    assert response.status_code == 200
    assert "Tags are comma-separated" in response.content.decode()
    assert not RoutingRule.objects.exists()


def test_the_list_numbers_each_rules_fallbacks_and_filters_by_one_scope(admin_client, models, tenant_a, tenant_b):
    premium, mini, basic = models
    mine = RoutingRule.objects.create(name="acme rule", tenant=tenant_a, target=premium)
    RoutingFallback.objects.create(rule=mine, model=basic, position=5)
    RoutingFallback.objects.create(rule=mine, model=mini, position=1)
    RoutingRule.objects.create(name="global rule", target=mini)
    RoutingRule.objects.create(name="globex rule", tenant=tenant_b, target=mini)
    page = admin_client.get(reverse(LIST)).content.decode()
    assert "1. sim-mini → 2. sim-basic" in page
    names = lambda **query: [rule.name for rule in admin_client.get(reverse(LIST), query).context["cl"].result_list]  # noqa: E731
    assert names(scope="global") == ["global rule"]
    assert names(scope=str(tenant_a.pk)) == ["acme rule"]
    assert sorted(names()) == ["acme rule", "global rule", "globex rule"]
    assert page.count("By scope") == 1 and "By tenant" not in page


def test_the_form_says_what_tier_means_and_the_order_rules_run_in(admin_client, models):
    page = admin_client.get(reverse(ADD)).content.decode()
    assert "complexity as the classifier reads it (simple, moderate, complex" in page
    assert "rules are tried before the global ones (no tenant)" in page
    assert "tried in order of position" in page
