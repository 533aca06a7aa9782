"""The demo seed is complete and idempotent."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from apps.catalog.models import Model, ModelPrice, Provider
from apps.routing.models import ComplexityIndicator, RoutingFallback, RoutingRule
from apps.tenants.models import ApiKey, Tenant
from apps.tenants.selectors import key_authenticate


@pytest.fixture
def isolated_var(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    return tmp_path


def _counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (get_user_model(), Tenant, ApiKey, Provider, Model, ModelPrice, RoutingRule, RoutingFallback,
                      ComplexityIndicator)
    }


def test_it_creates_nothing_twice(db, isolated_var):
    first = StringIO()
    call_command("seed_demo", stdout=first)
    after_first = _counts()
    second = StringIO()
    call_command("seed_demo", stdout=second)
    assert _counts() == after_first
    assert first.getvalue() == second.getvalue()


def test_it_seeds_a_working_demo(db, isolated_var):
    out = StringIO()
    call_command("seed_demo", "--upstream-url", "http://127.0.0.1:18001/v1", stdout=out)
    printed = dict(line.split(":", 1) for line in out.getvalue().splitlines())
    api_key = printed["demo API key"].strip()
    assert key_authenticate(api_key).tenant.slug == "demo"
    user = get_user_model().objects.get(username="admin")
    assert user.is_superuser
    assert user.check_password(printed["admin password"].strip())
    assert Provider.objects.get(name="simulated").base_url == "http://127.0.0.1:18001/v1"
    chat = Model.objects.filter(mode=Model.Mode.CHAT).order_by("input_price_per_million")
    assert [m.tier for m in chat] == ["simple", "moderate", "complex"]
    assert chat[0].input_price_per_million < chat[1].input_price_per_million < chat[2].input_price_per_million
    simple_rule = RoutingRule.objects.get(match_tier="simple", tenant=None)
    assert simple_rule.target == chat[0]
    assert simple_rule.fallbacks.exists()
    assert ComplexityIndicator.objects.filter(phrase="what is", tier="simple").exists()


def test_it_creates_a_superuser_with_djangos_own_noinput_command(transactional_db):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.live import database_url_for_tests

    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "DJANGO_SUPERUSER_USERNAME": "ops",
           "DJANGO_SUPERUSER_EMAIL": "ops@example.com", "DJANGO_SUPERUSER_PASSWORD": "a-long-passphrase-42"}
    done = subprocess.run([sys.executable, "manage.py", "createsuperuser", "--noinput"], env=env,
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    user = get_user_model().objects.get(username="ops")
    assert user.is_superuser
    assert user.check_password("a-long-passphrase-42")
