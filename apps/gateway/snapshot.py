"""The gateway's in-process view of the catalog, routing rules and keys.

The hot path never queries the database for auth, routing or prices: it reads an immutable
:class:`Snapshot` of the (small) catalog and rule tables, and a per-prefix cache of keys.
Both are refreshed when an admin changes something (see ``apps.gateway.config_changes``) and, as a
safety net, on a timer. Loading runs off the event loop in a worker thread.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import cached_property

import orjson
from django.db.models import Prefetch

from apps.catalog.models import Deployment, Model, ModelPrice, Provider
from apps.limits.models import AttributionLimit
from apps.limits.spec import attribution_scope_limits, scope_limits
from apps.routing.models import ComplexityIndicator, RoutingFallback, RoutingRule
from apps.tenants.models import ApiKey


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    id: int
    name: str
    kind: str
    base_url: str
    credential: str = field(repr=False)  # a secret: never in a repr, and so never in a log or traceback
    timeout: float
    max_concurrency: int
    api_version: str = ""  # Azure OpenAI's api-version ("" or "v1": the v1 API)
    project: str = ""  # Vertex AI's project (the provider's, else its key's project_id)
    location: str = ""  # Vertex AI's location
    batch_api: bool = False  # batch jobs go through its Batch API (apps.gateway.upstream_batches)
    responses_api: bool = False  # serves OpenAI's /responses: /v1/responses requests pass through


# What a model may lack that a request can need (the catalog's ``supports_*`` fields).
CAPABILITIES = frozenset({"tools", "vision", "json_schema", "reasoning"})


def capabilities_of(model: Model) -> frozenset[str]:
    """The capabilities a catalog model has, by name."""
    return frozenset(name for name in CAPABILITIES if getattr(model, f"supports_{name}"))


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: int
    name: str
    upstream_id: str
    provider: ProviderInfo
    mode: str
    tier: str
    price_id: int | None
    input_price: Decimal
    cached_input_price: Decimal
    output_price: Decimal
    context_window: int
    max_output_tokens: int
    cache_write_price: Decimal | None = None  # None: the input price
    batch_discount: Decimal = Decimal(0)  # percent off for lines sent through a provider's Batch API
    # A pooled model: its active deployments (each a ModelInfo of the same model with the
    # deployment's provider, upstream id and prices) and how one is picked (apps.providers.pools).
    deployments: tuple[ModelInfo, ...] = ()
    strategy: str = "weighted"
    # A deployment: its id and label, and what it takes (None: not known).
    deployment_id: int | None = None
    deployment_label: str = ""
    weight: int = 1
    rpm: int | None = None
    tpm: int | None = None
    capabilities: frozenset[str] = CAPABILITIES  # of CAPABILITIES, those the model has

    def cost(self, input_tokens: int, cached_tokens: int, output_tokens: int, cache_write_tokens: int = 0, *,
             batch: bool = False) -> Decimal:
        """Exact USD cost at this model's price version (prices are per 1M tokens).

        ``input_tokens`` counts every input token; ``cached_tokens`` of them were read from the
        provider's prompt cache and ``cache_write_tokens`` written to it, each at its own price.
        ``batch``: the line went through the provider's Batch API, which bills the batch
        discount off the total; a batch job's line answered live pays the live price.
        """
        uncached = max(input_tokens - cached_tokens - cache_write_tokens, 0)
        total = (uncached * self.input_price + cached_tokens * self.cached_input_price
                 + output_tokens * self.output_price)
        if cache_write_tokens:
            price = self.input_price if self.cache_write_price is None else self.cache_write_price
            total += cache_write_tokens * price
        if batch and self.batch_discount:
            total = total * (100 - self.batch_discount) / 100
        return total / 1_000_000


@dataclass(frozen=True, slots=True)
class RuleInfo:
    id: int
    tenant_id: int | None
    priority: int
    match_model: str
    match_tier: str
    min_prompt_tokens: int | None
    max_prompt_tokens: int | None
    tags: frozenset[str]
    weight: int
    chain: tuple[ModelInfo, ...]
    learned: bool = False  # the learned router chooses within the chain (apps.gateway.pipeline.route)
    quality_target: float = 0.95
    explore_share: float = 0.05


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    prefix: str
    key_hash: str
    tenant_id: int
    tenant_slug: str
    allowed_models: frozenset[str] | None
    expires_at: float | None
    usable: bool
    cache_enabled: bool = True
    cache_semantic: bool = True  # semantic hits too, not only exact ones
    cache_threshold: float = 0.80
    cache_precision: float = 0.97
    cache_ttl: int = 86400
    cache_max_temperature: float = 0.0
    cache_tool_calls: bool = False
    cache_namespace_by_user: bool = False
    cache_embedding_model: str | None = None
    limits: tuple = ()  # ScopeLimits of the key and of its tenant that set any (apps.limits.spec)
    # The tenant's limits per tag and end user: {("tag" | "user", value): ScopeLimits}
    attribution_limits: dict = field(default_factory=dict)
    store_bodies: bool = False  # keep prompts and answers, redacted (apps.core.redact)
    redact_patterns: tuple[str, ...] = ()  # the tenant's own patterns, one regular expression each

    def is_usable(self, now: float) -> bool:
        return self.usable and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class Snapshot:
    models: dict[str, ModelInfo]
    global_rules: tuple[RuleInfo, ...]
    tenant_rules: dict[int, tuple[RuleInfo, ...]]
    simple_pattern: re.Pattern | None
    complex_pattern: re.Pattern | None
    loaded_at: float = field(default_factory=time.monotonic)

    @cached_property
    def reference_models(self) -> dict[str, ModelInfo]:
        """Per mode, the dearest active model (by output, then input price): what a request
        sent to ``auto`` or an alias is compared with to count what routing saved."""
        dearest: dict[str, ModelInfo] = {}
        for model in self.models.values():
            best = dearest.get(model.mode)
            if best is None or (model.output_price, model.input_price) > (best.output_price, best.input_price):
                dearest[model.mode] = model
        return dearest

    def rules_for(self, tenant_id: int) -> tuple[RuleInfo, ...]:
        """Tenant rules first, then global ones; each group already sorted by priority."""
        own = self.tenant_rules.get(tenant_id, ())
        return own + self.global_rules if own else self.global_rules


def _optional_decimal(value) -> Decimal | None:
    return None if value is None else Decimal(value)


def _same_api(kind: str, model_kind: str) -> bool:
    """A deployment must speak the API its model's requests are written for."""
    return (kind == Provider.Kind.ANTHROPIC) == (model_kind == Provider.Kind.ANTHROPIC)


def _deployment_info(model: ModelInfo, deployment: Deployment, provider: ProviderInfo) -> ModelInfo:
    """``model`` as served by ``deployment``: its provider, upstream id, prices and capacity."""

    def price(override, default: Decimal) -> Decimal:
        return default if override is None else Decimal(override)

    return replace(
        model, provider=provider, upstream_id=deployment.upstream_id or model.upstream_id,
        input_price=price(deployment.input_price_per_million, model.input_price),
        cached_input_price=price(deployment.cached_input_price_per_million, model.cached_input_price),
        output_price=price(deployment.output_price_per_million, model.output_price),
        deployment_id=deployment.pk,
        deployment_label=f"{provider.name}/{deployment.region}" if deployment.region else provider.name,
        weight=max(deployment.weight, 1), rpm=deployment.rpm or None, tpm=deployment.tpm or None,
    )


def _phrases_pattern(phrases: list[str]) -> re.Pattern | None:
    if not phrases:
        return None
    alternatives = "|".join(re.escape(phrase.lower()) for phrase in sorted(phrases, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b")


def _key_project(provider: Provider) -> str:
    """The ``project_id`` of a Vertex AI provider's service-account key ("" for any other kind)."""
    if provider.kind != Provider.Kind.VERTEX:
        return ""
    try:
        key = orjson.loads(provider.credential)
    except orjson.JSONDecodeError:
        return ""
    project = key.get("project_id") if isinstance(key, dict) else None
    return project if isinstance(project, str) else ""


def snapshot_load() -> Snapshot:
    """Read the active catalog, rules and classifier phrases (sync; call from a thread)."""
    models: dict[str, ModelInfo] = {}
    providers: dict[int, ProviderInfo] = {}
    latest_prices = Prefetch("prices", queryset=ModelPrice.objects.order_by("-effective_from", "-id"))
    deployments = Prefetch("deployments", queryset=Deployment.objects.filter(
        is_active=True, provider__is_active=True).select_related("provider").order_by("id"))

    def provider_info(p: Provider) -> ProviderInfo:
        info = providers.get(p.pk)
        if info is None:
            info = providers[p.pk] = ProviderInfo(
                id=p.pk, name=p.name, kind=p.kind, base_url=p.base_url.rstrip("/"), credential=p.credential,
                timeout=p.timeout_seconds, max_concurrency=p.max_concurrency, api_version=p.api_version,
                project=p.project or _key_project(p), location=p.location,
                batch_api=p.batch_api,
                responses_api=p.responses_api,
            )
        return info

    for model in Model.objects.filter(is_active=True, provider__is_active=True).select_related(
        "provider"
    ).prefetch_related(latest_prices, deployments):
        provider = provider_info(model.provider)
        versions = list(model.prices.all())
        price = versions[0] if versions else None
        info = ModelInfo(
            id=model.pk, name=model.name, upstream_id=model.upstream_id, provider=provider, mode=model.mode,
            tier=model.tier, price_id=price.pk if price else None,
            input_price=Decimal(price.input_price_per_million if price else model.input_price_per_million),
            cached_input_price=Decimal(
                price.cached_input_price_per_million if price else model.cached_input_price_per_million
            ),
            output_price=Decimal(price.output_price_per_million if price else model.output_price_per_million),
            context_window=model.context_window, max_output_tokens=model.max_output_tokens,
            cache_write_price=_optional_decimal(
                price.cache_write_price_per_million if price else model.cache_write_price_per_million),
            batch_discount=Decimal(price.batch_discount_percent if price else model.batch_discount_percent),
            strategy=model.pool_strategy, capabilities=capabilities_of(model),
        )
        pool = tuple(_deployment_info(info, d, provider_info(d.provider)) for d in model.deployments.all()
                     if _same_api(d.provider.kind, provider.kind))
        models[model.name] = replace(info, deployments=pool) if pool else info
    by_id = {info.id: info for info in models.values()}

    global_rules: list[RuleInfo] = []
    tenant_rules: dict[int, list[RuleInfo]] = {}
    fallbacks = Prefetch("fallbacks", queryset=RoutingFallback.objects.order_by("position", "id"))
    for rule in RoutingRule.objects.filter(is_active=True).prefetch_related(fallbacks).order_by("priority", "id"):
        chain = [by_id.get(rule.target_id)] + [by_id.get(fb.model_id) for fb in rule.fallbacks.all()]
        seen: set[int] = set()
        clean = tuple(m for m in chain if m is not None and not (m.id in seen or seen.add(m.id)))
        if not clean:
            continue  # every model of the rule is inactive
        info = RuleInfo(
            id=rule.pk, tenant_id=rule.tenant_id, priority=rule.priority, match_model=rule.match_model.strip(),
            match_tier=rule.match_tier, min_prompt_tokens=rule.min_prompt_tokens,
            max_prompt_tokens=rule.max_prompt_tokens,
            tags=frozenset(str(tag) for tag in (rule.match_tags or []) if isinstance(tag, str | int)),
            weight=rule.weight, chain=clean, learned=rule.learned, quality_target=rule.quality_target,
            explore_share=rule.explore_share,
        )
        if rule.tenant_id is None:
            global_rules.append(info)
        else:
            tenant_rules.setdefault(rule.tenant_id, []).append(info)

    indicators = {"simple": [], "complex": []}
    for phrase, tier in ComplexityIndicator.objects.filter(is_active=True).values_list("phrase", "tier"):
        if phrase.strip():
            indicators[tier].append(phrase.strip())

    return Snapshot(
        models=models,
        global_rules=tuple(global_rules),
        tenant_rules={tenant: tuple(rules) for tenant, rules in tenant_rules.items()},
        simple_pattern=_phrases_pattern(indicators["simple"]),
        complex_pattern=_phrases_pattern(indicators["complex"]),
    )


def _allowed(key_models: frozenset[str], tenant_models: frozenset[str]) -> frozenset[str] | None:
    """The models a key may use: None for every one; a set, possibly empty, when the key or its
    tenant has an allow-list (both: only the models on both)."""
    if key_models and tenant_models:
        return key_models & tenant_models
    return key_models or tenant_models or None


def key_info_load(prefix: str) -> KeyInfo | None:
    """Read one key by its visible prefix (sync; call from a thread)."""
    key = ApiKey.objects.select_related("tenant", "tenant__cache_embedding_model").filter(prefix=prefix).first()
    if key is None:
        return None
    allowed = _allowed(frozenset(key.allowed_models.values_list("name", flat=True)),
                       frozenset(key.tenant.allowed_models.values_list("name", flat=True)))
    limits = tuple(lim for lim in (scope_limits(key, tenant_id=key.tenant_id, api_key_id=key.pk),
                                   scope_limits(key.tenant, tenant_id=key.tenant_id, api_key_id=None)) if lim)
    attribution = {(row.kind, row.value): lim for row in AttributionLimit.objects.filter(tenant_id=key.tenant_id)
                   if (lim := attribution_scope_limits(row)) is not None}
    return KeyInfo(
        id=key.pk, prefix=key.prefix, key_hash=key.key_hash, tenant_id=key.tenant_id, tenant_slug=key.tenant.slug,
        allowed_models=allowed,
        expires_at=key.expires_at.timestamp() if key.expires_at else None,
        usable=key.revoked_at is None and key.tenant.is_active,
        cache_enabled=key.tenant.cache_enabled, cache_semantic=key.tenant.cache_semantic,
        cache_threshold=key.tenant.cache_similarity_threshold,
        cache_precision=key.tenant.cache_verify_precision, cache_ttl=key.tenant.cache_ttl_seconds,
        cache_max_temperature=key.tenant.cache_max_temperature,
        cache_tool_calls=key.tenant.cache_tool_calls, cache_namespace_by_user=key.tenant.cache_namespace_by_user,
        cache_embedding_model=key.tenant.cache_embedding_model.name if key.tenant.cache_embedding_model_id else None,
        limits=limits, attribution_limits=attribution, store_bodies=key.tenant.store_bodies,
        redact_patterns=tuple(line.strip() for line in key.tenant.redact_patterns.splitlines() if line.strip()),
    )
