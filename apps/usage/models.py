"""One row per request: what was asked, what answered, and what it cost (frozen)."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.db.models import Q
from django.db.models.functions import Cast
from django.utils import timezone

_MONEY = {"max_digits": 16, "decimal_places": 10, "default": Decimal("0")}


class RequestLog(models.Model):
    """A request's record. Its cost is computed once, at request time, and never changes."""

    class CacheOutcome(models.TextChoices):
        MISS = "miss", "Miss"
        EXACT = "exact", "Exact hit"
        SEMANTIC = "semantic", "Semantic hit"
        BYPASS = "bypass", "Bypass"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="request_logs")
    # A key with usage is revoked, never deleted: its rows must keep saying which key made them.
    api_key = models.ForeignKey(
        "tenants.ApiKey", null=True, blank=True, on_delete=models.PROTECT, related_name="request_logs"
    )
    request_id = models.CharField(max_length=64, db_index=True)
    endpoint = models.CharField(max_length=64, default="/v1/chat/completions")
    requested_model = models.CharField(max_length=200, blank=True, default="")
    model_used = models.CharField(max_length=200, blank=True, default="")
    model = models.ForeignKey("catalog.Model", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    provider = models.ForeignKey(
        "catalog.Provider", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The deployment of the model that answered (None: the model's own provider, no pool).
    deployment = models.ForeignKey(
        "catalog.Deployment", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    route_reason = models.CharField(max_length=200, blank=True, default="", db_default="")
    # The routing decision: the prompt's tier when routing read it, and the chain of models it
    # was to try in order ("a > b > c"; each failed attempt is in upstream_failures).
    route_tier = models.CharField(max_length=10, blank=True, default="", db_default="")
    route_chain = models.CharField(max_length=500, blank=True, default="", db_default="")
    routing_rule = models.ForeignKey(
        "routing.RoutingRule", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    price = models.ForeignKey(
        "catalog.ModelPrice", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    cache_outcome = models.CharField(max_length=10, choices=CacheOutcome.choices, default=CacheOutcome.MISS)
    cache_similarity = models.FloatField(null=True, blank=True)
    # The cache entry that answered a hit (no foreign key: the entry may be evicted, the row stays).
    cache_entry_id = models.BigIntegerField(null=True, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    # Input tokens written to the provider's prompt cache (Anthropic's cache_creation_input_tokens),
    # part of input_tokens and priced at the model's cache-write price.
    cache_write_tokens = models.PositiveIntegerField(default=0, db_default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(default=False)
    cost = models.DecimalField(**_MONEY)
    saved_cost = models.DecimalField(**_MONEY)
    # What the answer would have cost on the model asked for (or, for "auto", the dearest model),
    # less what it cost on the model routing chose.
    routing_saved_cost = models.DecimalField(**_MONEY, db_default=Decimal("0"))
    latency_ms = models.FloatField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    overhead_ms = models.FloatField(default=0)
    is_stream = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField(default=200)
    error_code = models.CharField(max_length=64, blank=True, default="")
    # What went wrong upstream on the way to this answer (or error): each failed attempt, a
    # skipped open circuit, a stream broken mid-way, as "model: reason; ...".
    upstream_failures = models.TextField(blank=True, default="", db_default="")
    # Who and what the request was for, as the client said (apps.gateway.attribution): the
    # OpenAI ``user`` field (Anthropic's ``metadata.user_id``), the request's tags (``metadata.tags``
    # and ``x-switchyard-tags``, sorted), its ``metadata``, and its session
    # (``x-switchyard-session-id`` or ``metadata.session_id``).
    end_user = models.CharField(max_length=256, blank=True, default="", db_default="")
    tags = ArrayField(models.CharField(max_length=100), blank=True, default=list, db_default=[])
    metadata = models.JSONField(null=True, blank=True)
    session_id = models.CharField(max_length=128, blank=True, default="", db_default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="request_log_tenant_time"),
            models.Index(fields=["api_key", "-created_at"], name="request_log_key_time"),
            models.Index(fields=["-created_at"], name="request_log_time"),
            # A session's requests, in order (only rows that name a session are indexed).
            models.Index(fields=["tenant", "session_id", "created_at"], name="request_log_session",
                         condition=~Q(session_id="")),
            # The admin's search by end user (of every tenant, or of one: the tenant second, so that
            # a tenant's filter is an equality on the index, not a second index to AND with) and by
            # tag (only rows that carry one are indexed).
            models.Index(fields=["end_user", "tenant", "-created_at"], name="request_log_end_user_tenant",
                         condition=~Q(end_user="")),
            # The status and error filters: errors are a few rows in a hundred, and the changelist's
            # capped count must find 10,001 of them without reading the whole log.
            models.Index(fields=["status_code", "-created_at"], name="request_log_status_error",
                         condition=Q(status_code__gte=400)),
            models.Index(fields=["error_code", "-created_at"], name="request_log_error_code",
                         condition=~Q(error_code="")),
            GinIndex(fields=["tags"], name="request_log_tags", condition=~Q(tags=[])),
        ]

    def __str__(self) -> str:
        return self.request_id


class RequestBody(models.Model):
    """A request's prompt and answer, kept for tenants that turn it on (``Tenant.store_bodies``),
    redacted before it is written (``apps.core.redact``): written with its usage row by the usage
    buffer, off the response path, and pruned with the request log."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    request_id = models.CharField(max_length=64)
    prompt = models.JSONField(null=True, blank=True, help_text="The messages (or an embedding's input), redacted.")
    answer = models.TextField(blank=True, default="", help_text="The answer's text and tool calls, redacted.")
    created_at = models.DateTimeField(default=timezone.now)
    # The words of the prompt and answer, for the request log's text search (a GIN index).
    search = models.GeneratedField(
        expression=SearchVector(Cast("prompt", models.TextField()), "answer", config="simple"),
        output_field=SearchVectorField(), db_persist=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "request_id"], name="request_body_request"),
                   models.Index(fields=["tenant", "created_at"], name="request_body_tenant_time"),
                   GinIndex(fields=["search"], name="request_body_search")]

    def __str__(self) -> str:
        return self.request_id


class Feedback(models.Model):
    """What a client said about one of its requests, kept against its usage row.

    ``cache``: whether a cache hit answered the prompt (``POST /v1/cache/feedback``); a wrong hit
    also removes or demotes the entry that served it. ``outcome``: how good the answer was, a
    score in [0, 1] (``POST /v1/feedback``), the outcomes routing learns from. One of each kind
    per request: a second report replaces the first.
    """

    class Kind(models.TextChoices):
        CACHE = "cache", "cache hit"
        OUTCOME = "outcome", "answer quality"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="feedback")
    api_key = models.ForeignKey("tenants.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    request_id = models.CharField(max_length=64)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    score = models.FloatField(help_text="1 = right or good, 0 = wrong or bad.")
    comment = models.TextField(blank=True, default="")
    # Copied from the usage row when the feedback arrived.
    model_used = models.CharField(max_length=200, blank=True, default="")
    cache_outcome = models.CharField(max_length=10, blank=True, default="")
    cache_similarity = models.FloatField(null=True, blank=True)
    cache_entry_id = models.BigIntegerField(null=True, blank=True)
    action = models.CharField(max_length=32, blank=True, default="", help_text="What it did to the cache entry.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "feedback"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "request_id", "kind"], name="feedback_one_per_request_kind")
        ]
        indexes = [models.Index(fields=["tenant", "kind", "-created_at"], name="feedback_tenant_kind_time")]

    def __str__(self) -> str:
        return f"{self.kind} {self.request_id} {self.score:g}"
