"""Price versions: a price change never rewrites a past cost."""

from __future__ import annotations

from decimal import Decimal

from django.db import connection

from apps.catalog.models import ModelPrice, Provider
from apps.usage.models import RequestLog


def test_it_records_a_new_price_version_only_when_prices_change(cheap_model):
    assert cheap_model.prices.count() == 1
    cheap_model.context_window = 64000
    cheap_model.save()
    assert cheap_model.prices.count() == 1
    cheap_model.output_price_per_million = Decimal("0.80")
    cheap_model.save()
    assert cheap_model.prices.count() == 2
    assert cheap_model.prices.order_by("-effective_from", "-id").first().output_price_per_million == Decimal("0.80")


def test_it_keeps_old_rows_cost_after_a_price_change(cheap_model, tenant_a):
    version = cheap_model.prices.get()
    cost = version.cost(input_tokens=1000, cached_tokens=200, output_tokens=500)
    # 800 x 0.15 + 200 x 0.075 + 500 x 0.60 = 435 micro-dollars
    assert cost == Decimal("0.000435")
    log = RequestLog.objects.create(
        tenant=tenant_a, request_id="req-1", model=cheap_model, model_used=cheap_model.name, price=version,
        input_tokens=1000, cached_tokens=200, output_tokens=500, cost=cost,
    )

    cheap_model.input_price_per_million = Decimal("9.99")
    cheap_model.output_price_per_million = Decimal("99.99")
    cheap_model.save()

    log.refresh_from_db()
    assert log.cost == Decimal("0.000435")
    assert log.price == version
    assert version.price_tuple() == (Decimal("0.15"), Decimal("0.075"), Decimal("0.60"))
    assert ModelPrice.objects.filter(model=cheap_model).count() == 2


def test_it_encrypts_provider_credentials_at_rest(provider):
    with connection.cursor() as cursor:
        cursor.execute("SELECT credential FROM catalog_provider WHERE id = %s", [provider.pk])
        (stored,) = cursor.fetchone()
    assert "sk-upstream-secret" not in stored
    assert stored.startswith("fernet:")
    assert Provider.objects.get(pk=provider.pk).credential == "sk-upstream-secret"


def test_it_prices_prompt_cache_writes_and_versions_a_cache_write_price_change(cheap_model):
    version = cheap_model.prices.get()
    # No cache-write price: writes cost the input price. 600 x 0.15 + 200 x 0.075 + 200 x 0.15 + 100 x 0.60
    assert version.cost(input_tokens=1000, cached_tokens=200, cache_write_tokens=200, output_tokens=100) == \
        Decimal("0.000195")
    cheap_model.cache_write_price_per_million = Decimal("0.1875")
    cheap_model.save()
    assert ModelPrice.objects.filter(model=cheap_model).count() == 2
    latest = cheap_model.prices.order_by("-effective_from", "-id").first()
    # 600 x 0.15 + 200 x 0.075 + 200 x 0.1875 + 100 x 0.60
    assert latest.cost(input_tokens=1000, cached_tokens=200, cache_write_tokens=200, output_tokens=100) == \
        Decimal("0.0002025")
    assert version.cache_write_price_per_million is None  # the old version keeps its prices
