"""Deployments in the catalog: what the gateway's snapshot makes of them, and what the catalog
refuses."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from apps.catalog.models import Deployment, Provider
from apps.gateway.snapshot import snapshot_load


@pytest.fixture
def regions(db):
    return [Provider.objects.create(name=f"region-{i}", kind=Provider.Kind.OPENAI, base_url=f"https://r{i}.example/v1",
                                    credential=f"sk-{i}") for i in range(3)]


def test_it_serves_a_pooled_model_by_its_active_deployments_at_their_prices(cheap_model, regions):
    east = Deployment.objects.create(model=cheap_model, provider=regions[0], upstream_id="mini-east", region="east",
                                     weight=3, rpm=100, tpm=50_000, output_price_per_million=Decimal("0.50"))
    Deployment.objects.create(model=cheap_model, provider=regions[1])
    Deployment.objects.create(model=cheap_model, provider=regions[2], is_active=False)
    regions[1].is_active = False
    regions[1].save()
    model = snapshot_load().models["sim-mini"]
    (deployment,) = model.deployments
    assert deployment.deployment_id == east.pk and deployment.deployment_label == "region-0/east"
    assert deployment.provider.base_url == "https://r0.example/v1" and deployment.upstream_id == "mini-east"
    assert (deployment.weight, deployment.rpm, deployment.tpm) == (3, 100, 50_000)
    assert deployment.input_price == model.input_price == Decimal("0.15")  # not overridden
    assert deployment.output_price == Decimal("0.50") != model.output_price
    assert deployment.cost(1_000_000, 0, 1_000_000) == Decimal("0.65")
    assert model.strategy == "weighted" and model.deployment_id is None


def test_a_model_without_deployments_is_its_own_single_deployment(cheap_model):
    model = snapshot_load().models["sim-mini"]
    assert model.deployments == () and model.deployment_id is None


def test_a_deployment_must_speak_the_models_api(cheap_model, regions):
    anthropic = Provider.objects.create(name="claude", kind=Provider.Kind.ANTHROPIC,
                                        base_url="https://api.anthropic.com/v1")
    with pytest.raises(ValidationError, match="same API"):
        Deployment(model=cheap_model, provider=anthropic).full_clean()
    with pytest.raises(ValidationError):
        Deployment(model=cheap_model, provider=regions[0], weight=0).full_clean()
    Deployment(model=cheap_model, provider=regions[0]).full_clean()
    # One saved anyway (not through a form) is left out of the pool.
    Deployment.objects.create(model=cheap_model, provider=anthropic)
    assert snapshot_load().models["sim-mini"].deployments == ()
