"""Rate limits and budgets: the settings a tenant and a key share, the counters the Postgres
path enforces them with, and the alert rows.

With ``REDIS_URL`` set the counters live in Redis (``apps.limits.counters.RedisCounters``);
otherwise in :class:`Counter` and :class:`Lease`, updated only by the ``switchyard_limits_*``
SQL functions (migration 0002) so that each reservation is one atomic round trip.
"""

from __future__ import annotations

import zoneinfo
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone


def timezone_validate(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"'{value}' is not an IANA time zone (for example Europe/Paris).") from exc


class BudgetPeriod(models.TextChoices):
    DAY = "day", "Day"
    WEEK = "week", "Week (from Monday)"
    MONTH = "month", "Month"
    NEVER = "never", "Never resets"


class LimitSettings(models.Model):
    """Limits a tenant and each of its keys can carry; a request must pass both (the stricter wins)."""

    rpm_limit = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests per minute",
                                            help_text="Empty: no limit.")
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, verbose_name="tokens per minute",
                                            help_text="Prompt plus max_tokens are reserved, then settled to "
                                            "the tokens used. Empty: no limit.")
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True, verbose_name="concurrent requests",
                                                    help_text="Empty: no limit.")
    budget_usd = models.DecimalField(
        max_digits=14, decimal_places=4, null=True, blank=True, validators=[MinValueValidator(Decimal("0"))],
        verbose_name="budget (USD)", help_text="Spend allowed per period. Empty: no budget.")
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    budget_timezone = models.CharField(max_length=64, default="UTC", validators=[timezone_validate],
                                       help_text="Where the period's midnight is, e.g. America/New_York.")
    budget_alert_percent = models.PositiveSmallIntegerField(
        null=True, blank=True, default=80, validators=[MinValueValidator(1), MaxValueValidator(100)],
        verbose_name="alert at (% of budget)", help_text="Soft threshold: an alert once per period. Empty: none.")

    class Meta:
        abstract = True

    def has_limits(self) -> bool:
        return any(value is not None for value in (self.rpm_limit, self.tpm_limit, self.concurrency_limit,
                                                   self.budget_usd))


class AttributionLimit(LimitSettings):
    """Limits and a budget for one tag or one end user of a tenant: every request carrying the
    tag (``metadata.tags`` or ``x-switchyard-tags``), or sent for the end user (the body's
    ``user``), must pass them too, counted by the same atomic counters as the tenant's and the
    key's. Its budget alerts as a tenant's do (``budget_alert_percent``, once per period, to the
    tenant's webhook), naming the tag or the end user."""

    class Kind(models.TextChoices):
        TAG = "tag", "Tag"
        USER = "user", "End user"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="attribution_limits")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.TAG)
    value = models.CharField(max_length=256, help_text="The tag (at most 100 characters) or the end user's id, "
                             "exactly as clients send it.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        verbose_name = "tag or end-user limit"
        ordering = ["tenant", "kind", "value"]
        constraints = [models.UniqueConstraint(fields=["tenant", "kind", "value"], name="attribution_limit_unique")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.value!r} of tenant {self.tenant_id}"

    def clean(self) -> None:
        self.value = (self.value or "").strip()
        if not self.value:
            raise ValidationError({"value": "Name the tag or the end user."})
        if self.kind == self.Kind.TAG and (len(self.value) > 100 or "," in self.value):
            raise ValidationError({"value": "A tag is at most 100 characters, without commas."})
        if not self.has_limits():
            raise ValidationError("Set at least one limit or a budget.")


class Counter(models.Model):
    """One counter of the Postgres path: a minute window, a budget period or a concurrency lock."""

    scope = models.CharField(max_length=32)  # "t:<tenant id>" or "k:<key id>"
    kind = models.CharField(max_length=1)  # b(udget), c(oncurrency), r(equests), t(okens)
    window_id = models.BigIntegerField()  # minute number, period start (epoch seconds) or 0
    used = models.BigIntegerField(default=0)  # requests, tokens or settled nano-dollars
    reserved = models.BigIntegerField(default=0)  # nano-dollars of requests still running
    expires_ms = models.BigIntegerField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "kind", "window_id"], name="limits_counter_key")]
        indexes = [models.Index(fields=["expires_ms"], name="limits_counter_expires")]

    def __str__(self) -> str:
        return f"{self.scope} {self.kind} {self.window_id}"


class Lease(models.Model):
    """A running request's concurrency slot (kind ``c``) or budget reservation (kind ``b``, of
    ``cost`` nano-dollars in period ``window_id``). It expires, so that what a crashed process
    held comes back."""

    scope = models.CharField(max_length=32)
    kind = models.CharField(max_length=1, default="c")
    window_id = models.BigIntegerField(default=0)
    request_id = models.CharField(max_length=64)
    cost = models.BigIntegerField(default=0)
    expires_ms = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["scope", "kind", "window_id", "expires_ms"], name="limits_lease_scope"),
                   models.Index(fields=["request_id"], name="limits_lease_request")]

    def __str__(self) -> str:
        return f"{self.scope} {self.request_id}"


class BudgetAlert(models.Model):
    """A soft-threshold crossing: at most one per scope and period. The scope is the tenant, one
    of its keys, or one of its tags or end users (``attribution_kind`` and ``attribution_value``)."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="budget_alerts")
    api_key = models.ForeignKey("tenants.ApiKey", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="budget_alerts")
    attribution_kind = models.CharField(max_length=8, blank=True, default="", db_default="",
                                        choices=[("tag", "Tag"), ("user", "End user")], verbose_name="tag or user")
    attribution_value = models.CharField(max_length=256, blank=True, default="", db_default="",
                                         verbose_name="tag or end user")
    scope = models.CharField(max_length=32, editable=False)
    period_start = models.DateTimeField()
    threshold_percent = models.PositiveSmallIntegerField()
    spent_usd = models.DecimalField(max_digits=20, decimal_places=10)
    budget_usd = models.DecimalField(max_digits=14, decimal_places=4)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    webhook_attempts = models.PositiveIntegerField(default=0)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["scope", "period_start"], name="budget_alert_once")]

    def __str__(self) -> str:
        if self.attribution_kind:
            who = f"{self.get_attribution_kind_display().lower()} {self.attribution_value!r} of {self.tenant}"
        else:
            who = f"key {self.api_key}" if self.api_key_id else str(self.tenant)
        return f"{who}: {self.threshold_percent}% of ${self.budget_usd} from {self.period_start:%Y-%m-%d}"
