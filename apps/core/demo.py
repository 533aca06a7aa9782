"""The demo platform: a superuser, the ``demo`` tenant and its key, the simulated provider
with three chat models at realistic price tiers and one embedding model, routing rules that
send simple prompts to the cheap model, and ``sim-claude``: the same simulated upstream seen as
a native Anthropic Messages API provider (``simulated-anthropic``), with prompt-cache prices,
and ``sim-responses``: the same upstream as a provider serving OpenAI's Responses API itself
(``simulated-responses``), which ``/v1/responses`` requests reach as they came.

Idempotent: running it again creates nothing twice. Because only a key's hash is stored, the
demo key's secret and the admin password are kept in ``var/demo-credentials.json`` (mode
0600, development only) so that ``make run`` and ``manage.py demo_credentials`` can print them
again.

An existing demo provider keeps its base URL unless the caller repoints it (``make run`` does,
to the port its simulated upstream listens on; ``seed_demo --upstream-url`` does): seeding by
hand while the platform runs must not send the running platform's requests elsewhere.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from apps.catalog.models import Model, Provider
from apps.routing.models import ComplexityIndicator, RoutingFallback, RoutingRule
from apps.tenants.models import Tenant
from apps.tenants.selectors import key_authenticate
from apps.tenants.services import key_create

DEMO_TENANT_SLUG = "demo"
DEMO_ADMIN_USERNAME = "admin"

# Prices per 1M tokens (input, cached input, output), modelled on public price lists:
# cheap like gpt-4o-mini, mid like gpt-4o, premium like o1.
DEMO_MODELS = [
    ("sim-mini", Model.Tier.SIMPLE, Model.Mode.CHAT, ("0.15", "0.075", "0.60"), 128000, 16384),
    ("sim-standard", Model.Tier.MODERATE, Model.Mode.CHAT, ("2.50", "1.25", "10.00"), 128000, 16384),
    ("sim-premium", Model.Tier.COMPLEX, Model.Mode.CHAT, ("15.00", "7.50", "60.00"), 200000, 100000),
    ("sim-embed", Model.Tier.SIMPLE, Model.Mode.EMBEDDING, ("0.02", "0.02", "0"), 8191, 0),
]

# What a demo model does not support (each ``supports_*`` field is true otherwise): the cheap
# model takes no reasoning effort, so such a request sent to ``auto`` skips it for its fallback.
DEMO_LACKS = {"sim-mini": ("reasoning",)}

# The native Anthropic model: (name, upstream id, input, cached input, cache write, output), like Claude Sonnet.
DEMO_ANTHROPIC_MODEL = ("sim-claude", "sim-mini", "3.00", "0.30", "3.75", "15.00")
# The model on a provider serving the Responses API itself: (name, upstream id), priced as sim-mini.
DEMO_RESPONSES_MODEL = ("sim-responses", "sim-mini")

# (name, tier matched, target, fallbacks, priority)
DEMO_RULES = [
    ("auto: simple prompts to the cheap model", Model.Tier.SIMPLE, "sim-mini", ["sim-standard"], 10),
    ("auto: moderate prompts to the mid model", Model.Tier.MODERATE, "sim-standard", ["sim-premium"], 20),
    ("auto: complex prompts to the premium model", Model.Tier.COMPLEX, "sim-premium", ["sim-standard"], 30),
]

# The classifier's starting phrases (editable in the admin).
DEFAULT_INDICATORS = {
    Model.Tier.SIMPLE: ["what is", "define", "list", "name", "yes or no", "true or false", "translate", "who is"],
    Model.Tier.COMPLEX: [
        "analyze", "analyse", "compare", "evaluate", "synthesize", "explain in detail", "step by step",
        "comprehensive", "trade-offs", "prove", "design a",
    ],
}


@dataclass(frozen=True)
class DemoCredentials:
    admin_username: str
    admin_password: str
    api_key: str
    upstream_url: str = ""
    key_minted: bool = False  # the saved key no longer worked: this one was made just now


def _credentials_path() -> Path:
    return Path(settings.VAR_DIR) / "demo-credentials.json"


def _load_saved() -> dict:
    try:
        return json.loads(_credentials_path().read_text())
    except (OSError, ValueError):
        return {}


def _save(data: dict) -> None:
    path = _credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)


@transaction.atomic
def demo_seed(*, upstream_url: str | None = None, repoint: bool = False) -> DemoCredentials:
    """Create (or find) everything the demo needs and return the credentials to print.

    ``upstream_url`` is the simulated provider's base URL when it is created (default
    ``SIMULATED_UPSTREAM_URL``); an existing provider is moved to it only with ``repoint``.
    """
    saved = _load_saved()
    upstream_url = upstream_url or settings.SIMULATED_UPSTREAM_URL

    user_model = get_user_model()
    admin = user_model.objects.filter(username=DEMO_ADMIN_USERNAME).first()
    password = saved.get("admin_password") or os.environ.get("DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    if admin is None:
        user_model.objects.create_superuser(DEMO_ADMIN_USERNAME, "admin@example.com", password)
    elif not admin.check_password(password):
        password = saved.get("admin_password") or "(unchanged: set when the user was created)"

    tenant, _ = Tenant.objects.get_or_create(slug=DEMO_TENANT_SLUG, defaults={"name": "Demo"})

    provider, created = Provider.objects.get_or_create(
        name="simulated",
        defaults={"kind": Provider.Kind.SIMULATED, "base_url": upstream_url, "timeout_seconds": 30.0},
    )
    if repoint and not created and provider.kind == Provider.Kind.SIMULATED and provider.base_url != upstream_url:
        provider.base_url = upstream_url
        provider.save(update_fields=["base_url", "updated_at"])

    anthropic, created = Provider.objects.get_or_create(
        name="simulated-anthropic",
        defaults={"kind": Provider.Kind.ANTHROPIC, "base_url": upstream_url, "timeout_seconds": 30.0},
    )
    if repoint and not created and anthropic.kind == Provider.Kind.ANTHROPIC and anthropic.base_url != upstream_url:
        anthropic.base_url = upstream_url
        anthropic.save(update_fields=["base_url", "updated_at"])
    name, upstream_id, *prices = DEMO_ANTHROPIC_MODEL
    if not Model.objects.filter(name=name).exists():
        Model.objects.create(
            name=name, upstream_id=upstream_id, provider=anthropic, tier=Model.Tier.MODERATE,
            input_price_per_million=Decimal(prices[0]), cached_input_price_per_million=Decimal(prices[1]),
            cache_write_price_per_million=Decimal(prices[2]), output_price_per_million=Decimal(prices[3]),
            context_window=200000, max_output_tokens=8192,
        )

    responses, created = Provider.objects.get_or_create(
        name="simulated-responses",
        defaults={"kind": Provider.Kind.SIMULATED, "base_url": upstream_url, "timeout_seconds": 30.0,
                  "responses_api": True},
    )
    if repoint and not created and responses.kind == Provider.Kind.SIMULATED and responses.base_url != upstream_url:
        responses.base_url = upstream_url
        responses.save(update_fields=["base_url", "updated_at"])
    name, upstream_id = DEMO_RESPONSES_MODEL
    if not Model.objects.filter(name=name).exists():
        Model.objects.create(
            name=name, upstream_id=upstream_id, provider=responses, tier=Model.Tier.SIMPLE,
            input_price_per_million=Decimal("0.15"), cached_input_price_per_million=Decimal("0.075"),
            output_price_per_million=Decimal("0.60"), context_window=128000, max_output_tokens=16384,
        )

    models: dict[str, Model] = {}
    for name, tier, mode, prices, context, max_out in DEMO_MODELS:
        model = Model.objects.filter(name=name).first()
        if model is None:
            model = Model.objects.create(
                name=name,
                upstream_id=name,
                provider=provider,
                mode=mode,
                tier=tier,
                input_price_per_million=Decimal(prices[0]),
                cached_input_price_per_million=Decimal(prices[1]),
                output_price_per_million=Decimal(prices[2]),
                context_window=context,
                max_output_tokens=max_out,
                **{f"supports_{lack}": False for lack in DEMO_LACKS.get(name, ())},
            )
        models[name] = model

    for name, tier, target, fallbacks, priority in DEMO_RULES:
        rule, created = RoutingRule.objects.get_or_create(
            name=name,
            tenant=None,
            defaults={"priority": priority, "match_model": "auto", "match_tier": tier, "target": models[target]},
        )
        if created:
            for position, fallback in enumerate(fallbacks):
                RoutingFallback.objects.create(rule=rule, model=models[fallback], position=position)

    for tier, phrases in DEFAULT_INDICATORS.items():
        for phrase in phrases:
            ComplexityIndicator.objects.get_or_create(phrase=phrase, tier=tier)

    api_key = saved.get("api_key")
    if not api_key or key_authenticate(api_key) is None:
        api_key = key_create(tenant=tenant, name="demo").secret

    _save({"admin_username": DEMO_ADMIN_USERNAME, "admin_password": password, "api_key": api_key})
    return DemoCredentials(admin_username=DEMO_ADMIN_USERNAME, admin_password=password, api_key=api_key,
                           upstream_url=provider.base_url)


class DemoNotSeeded(Exception):
    """There is no demo tenant to print credentials for."""


def demo_credentials_read() -> DemoCredentials:
    """The demo's credentials as the last seed saved them, checked against the database.

    The admin password is given while it still logs in. The key is given while it still
    authenticates; otherwise (revoked, deleted, or the file is gone) a fresh demo key is made,
    saved, and marked ``key_minted``: a stored key is only a hash and cannot be shown again.
    """
    tenant = Tenant.objects.filter(slug=DEMO_TENANT_SLUG).first()
    if tenant is None:
        raise DemoNotSeeded("No demo tenant: run 'manage.py seed_demo' (or 'make run') first.")
    saved = _load_saved()
    admin = get_user_model().objects.filter(username=DEMO_ADMIN_USERNAME).first()
    shown = saved.get("admin_password") or ""
    if admin is None:
        shown = "(no such user: run 'manage.py seed_demo')"
    elif not shown or not admin.check_password(shown):
        shown = f"(changed since the seed: 'manage.py changepassword {DEMO_ADMIN_USERNAME}' sets a new one)"
    api_key = saved.get("api_key")
    minted = not api_key or key_authenticate(api_key) is None
    if minted:
        api_key = key_create(tenant=tenant, name="demo").secret
        _save({**saved, "admin_username": DEMO_ADMIN_USERNAME, "api_key": api_key})
    provider = Provider.objects.filter(name="simulated").first()
    return DemoCredentials(admin_username=DEMO_ADMIN_USERNAME, admin_password=shown, api_key=api_key,
                           upstream_url=provider.base_url if provider else "", key_minted=minted)
