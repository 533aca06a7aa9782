"""The demo seed is complete and idempotent, keeps the provider URL the running platform uses,
and its credentials can be printed again."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from apps.catalog.models import Model, ModelPrice, Provider
from apps.routing.models import ComplexityIndicator, RoutingFallback, RoutingRule
from apps.tenants.models import ApiKey, Tenant
from apps.tenants.selectors import key_authenticate
from apps.tenants.services import key_revoke
from tests.gateway.conftest import gateway_start, gateway_stop, usage_quiet
from tests.live import REPO, database_url_for_tests, http_json, wait_until


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
    chat = Model.objects.filter(mode=Model.Mode.CHAT, provider__name="simulated").order_by("input_price_per_million")
    assert [m.tier for m in chat] == ["simple", "moderate", "complex"]
    claude = Model.objects.get(name="sim-claude")
    assert claude.provider.kind == Provider.Kind.ANTHROPIC and claude.provider.base_url == "http://127.0.0.1:18001/v1"
    assert claude.cache_write_price_per_million > claude.input_price_per_million > claude.cached_input_price_per_million
    assert chat[0].input_price_per_million < chat[1].input_price_per_million < chat[2].input_price_per_million
    # The cheap model takes no reasoning effort (such requests skip it for its fallback); the others take all.
    assert [(m.supports_tools, m.supports_vision, m.supports_json_schema, m.supports_reasoning) for m in chat] == [
        (True, True, True, False), (True, True, True, True), (True, True, True, True)]
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


def _printed(out: StringIO) -> dict[str, str]:
    return {name.strip(): value.strip() for name, value in (line.split(":", 1) for line in out.getvalue().splitlines())}


def test_it_keeps_an_existing_providers_url_unless_asked_to_move_it(db, isolated_var, settings):
    call_command("seed_demo", "--upstream-url", "http://127.0.0.1:18001/v1", stdout=StringIO())
    settings.SIMULATED_UPSTREAM_URL = "http://127.0.0.1:8001/v1"  # what a shell without UPSTREAM_PORT gets
    out = StringIO()
    call_command("seed_demo", stdout=out)
    assert Provider.objects.get(name="simulated").base_url == "http://127.0.0.1:18001/v1"
    assert _printed(out)["demo upstream"] == "http://127.0.0.1:18001/v1"
    assert Provider.objects.get(name="simulated-anthropic").base_url == "http://127.0.0.1:18001/v1"
    call_command("seed_demo", "--upstream-url", "http://127.0.0.1:18002/v1", stdout=StringIO())
    assert Provider.objects.get(name="simulated").base_url == "http://127.0.0.1:18002/v1"
    assert Provider.objects.get(name="simulated-anthropic").base_url == "http://127.0.0.1:18002/v1"
    native = Model.objects.get(name="sim-responses").provider
    assert native.responses_api and native.base_url == "http://127.0.0.1:18002/v1"


@pytest.fixture
def live_gateway(transactional_db, tmp_path):
    gateway = gateway_start(tmp_path)
    yield gateway
    gateway_stop(gateway)


def test_it_keeps_a_running_platform_answering_when_seeded_again_by_hand(live_gateway, simulator, isolated_var,
                                                                         tmp_path):
    first = StringIO()
    call_command("seed_demo", "--upstream-url", simulator.v1, stdout=first)
    key = _printed(first)["demo API key"]
    headers = {"Authorization": f"Bearer {key}"}

    def answers() -> bool:
        # a new prompt each time: a cache hit would answer without the upstream
        status, _ = http_json("POST", live_gateway.v1 + "/chat/completions", {
            "model": "sim-mini", "messages": [{"role": "user", "content": f"Hello {uuid.uuid4()}"}]}, headers)
        return status == 200

    assert wait_until(answers), "the seeded demo never answered"
    env = {name: value for name, value in os.environ.items() if name not in ("UPSTREAM_PORT", "SIMULATED_UPSTREAM_URL")}
    env.update(DATABASE_URL=database_url_for_tests(), SWITCHYARD_VAR_DIR=str(isolated_var), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "manage.py", "seed_demo"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Provider.objects.get(name="simulated").base_url == simulator.v1
    for _ in range(3):
        assert answers()
    usage_quiet()


def test_it_prints_the_demo_credentials_again(db, isolated_var):
    seeded = StringIO()
    call_command("seed_demo", stdout=seeded)
    again = StringIO()
    call_command("demo_credentials", stdout=again)
    printed = _printed(again)
    assert printed["demo API key"] == _printed(seeded)["demo API key"]
    assert get_user_model().objects.get(username="admin").check_password(printed["admin password"])
    assert "note" not in printed
    assert ApiKey.objects.filter(tenant__slug="demo").count() == 1


def test_it_mints_a_fresh_demo_key_when_the_saved_one_no_longer_works_and_says_so(db, isolated_var):
    seeded = StringIO()
    call_command("seed_demo", stdout=seeded)
    old = _printed(seeded)["demo API key"]
    key_revoke(api_key=key_authenticate(old))
    out = StringIO()
    call_command("demo_credentials", stdout=out)
    printed = _printed(out)
    assert printed["demo API key"] != old
    assert key_authenticate(printed["demo API key"]).tenant.slug == "demo"
    assert "new demo key" in printed["note"]
    again = StringIO()
    call_command("demo_credentials", stdout=again)
    assert _printed(again)["demo API key"] == printed["demo API key"]
    assert "note" not in _printed(again)


def test_it_says_to_seed_first_when_there_is_no_demo(db, isolated_var):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="seed_demo"):
        call_command("demo_credentials", stdout=StringIO())
