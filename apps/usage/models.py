"""One row per request: what was asked, what answered, and what it cost (frozen)."""

from __future__ import annotations

from decimal import Decimal

from django.db import models
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
    routing_rule = models.ForeignKey(
        "routing.RoutingRule", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    price = models.ForeignKey(
        "catalog.ModelPrice", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    cache_outcome = models.CharField(max_length=10, choices=CacheOutcome.choices, default=CacheOutcome.MISS)
    cache_similarity = models.FloatField(null=True, blank=True)
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
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="request_log_tenant_time"),
            models.Index(fields=["api_key", "-created_at"], name="request_log_key_time"),
            models.Index(fields=["-created_at"], name="request_log_time"),
        ]

    def __str__(self) -> str:
        return self.request_id
