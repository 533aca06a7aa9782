"""Tenants and their API keys."""

from __future__ import annotations

import secrets

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from apps.core.redact import patterns_check
from apps.limits.models import LimitSettings


def webhook_secret_new() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class Tenant(LimitSettings):
    """A customer of the gateway: every usage row, cache entry and key belongs to one."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    is_active = models.BooleanField(default=True)
    allowed_models = models.ManyToManyField(
        "catalog.Model", blank=True, related_name="+", verbose_name="models allowed",
        help_text="Empty: every active model. Otherwise the tenant's keys may use only these (a key's own list "
        "narrows it further).")
    cache_enabled = models.BooleanField(
        default=True, verbose_name="cache enabled",
        help_text="Off: no answer is read from or written to the cache, exact or semantic.")
    cache_semantic = models.BooleanField(
        default=True, db_default=True, verbose_name="semantic hits",
        help_text="Off: only exact repeats of a request are answered from the cache; prompts are not embedded "
        "for it.")
    cache_similarity_threshold = models.FloatField(
        default=0.80, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Cosine similarity a semantic candidate must reach (0-1) before verification."
    )
    cache_verify_precision = models.FloatField(
        default=0.97, choices=[(0.90, "0.90"), (0.95, "0.95"), (0.97, "0.97"), (0.98, "0.98"), (0.99, "0.99")],
        verbose_name="semantic hit precision",
        help_text="Share of semantic hits that must answer their prompt: the verifier's operating point, "
        "calibrated on held-out data (higher serves fewer hits; docs/benchmarks.md has what each target reaches).",
    )
    cache_ttl_seconds = models.PositiveIntegerField(default=86400, help_text="How long a cached answer lives.")
    cache_max_temperature = models.FloatField(
        default=0.0, help_text="Requests with a higher temperature are not cached (unset counts as 0)."
    )
    cache_tool_calls = models.BooleanField(default=False, help_text="Cache requests that offer tools.")
    cache_namespace_by_user = models.BooleanField(
        default=False, help_text="Keep a separate cache per end user (the request's 'user' field)."
    )
    cache_embedding_model = models.ForeignKey(
        "catalog.Model", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        limit_choices_to={"mode": "embedding"},
        help_text="An OpenAI-compatible embeddings model for semantic lookups (empty: the local model). "
        "Purge the tenant's cache after changing it: vectors of different models do not compare.",
    )
    cache_max_entries = models.PositiveIntegerField(
        null=True, blank=True, help_text="Evict least recently hit entries beyond this many (empty: no limit)."
    )
    store_bodies = models.BooleanField(
        default=False, db_default=False, verbose_name="keep request bodies",
        help_text="Keep each request's prompt and answer with its usage row (streams assembled), after "
        "redaction: emails, phone numbers, card numbers, keys and tokens, and the patterns below. Pruned with "
        "the request log.")
    redact_patterns = models.TextField(
        blank=True, default="", db_default="", verbose_name="redact also",
        help_text="Regular expressions, one per line: what they match is replaced by [REDACTED] before a body "
        "is stored.")
    log_retention_days = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="keep request log (days)", validators=[MinValueValidator(1)],
        help_text="Request log rows older than this are deleted in batches (empty: kept). The usage rollups, "
        "and so the dashboard's history, are kept.")
    alert_webhook_url = models.URLField(
        max_length=500, blank=True, default="",
        help_text="Budget alerts are POSTed here as JSON, signed with the secret below (HMAC-SHA256).")
    alert_webhook_secret = models.CharField(max_length=100, default=webhook_secret_new)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(cache_similarity_threshold__gte=0.0, cache_similarity_threshold__lte=1.0),
                name="tenant_cache_threshold_0_to_1",
                violation_error_message="The similarity threshold is a cosine similarity from 0 to 1.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        try:
            patterns_check(self.redact_patterns)
        except ValueError as exc:
            raise ValidationError({"redact_patterns": str(exc)}) from None


class ApiKey(LimitSettings):
    """A tenant's key. Only a visible prefix and the SHA-256 of the whole key are stored.

    Its limits apply on top of its tenant's: a request must pass both."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200, default="default")
    prefix = models.CharField(max_length=32, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    allowed_models = models.ManyToManyField(
        "catalog.Model", blank=True, related_name="+", help_text="Empty means every active model."
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_usable(self, now=None) -> bool:
        """Not revoked, not expired, and its tenant is active."""
        now = now or timezone.now()
        if self.revoked_at is not None:
            return False
        if self.expires_at is not None and self.expires_at <= now:
            return False
        return self.tenant.is_active
