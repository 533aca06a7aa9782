"""Usage rollups: what the dashboard and the usage API read instead of the request log.

One row per (period, bucket start, tenant, key, model, cache outcome), summed from RequestLog
by :func:`apps.reporting.services.usage_rollup`. Latency is kept as a histogram over fixed
bucket bounds (``LATENCY_BOUNDS_MS``) so that percentiles of any range are computed from
summed histograms, never from the log.
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib.postgres.fields import ArrayField
from django.db import models

_MONEY = {"max_digits": 20, "decimal_places": 10, "default": Decimal("0")}

# Upper bounds (ms) of the latency histogram's buckets; one more bucket holds everything above.
LATENCY_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000,
                     20000, 30000, 60000, 120000)
HISTOGRAM_SIZE = len(LATENCY_BOUNDS_MS) + 1


def _empty_histogram() -> list[int]:
    return [0] * HISTOGRAM_SIZE


class UsageRollup(models.Model):
    class Period(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"
        # A day per tenant and cache outcome only (key 0, model ""): what totals and charts read,
        # a few rows a day per tenant however many keys and models it has.
        TENANT_DAY = "tday", "Day, per tenant"

    period = models.CharField(max_length=4, choices=Period.choices)
    bucket = models.DateTimeField(help_text="Start of the hour or day (UTC).")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="usage_rollups")
    # The key's id, 0 for requests without one; a plain integer so that a revoked or deleted key
    # keeps its history and the unique constraint has no NULLs.
    api_key_id = models.BigIntegerField(default=0)
    model_name = models.CharField(max_length=200, blank=True, default="")
    cache_outcome = models.CharField(max_length=10, default="miss")
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0, db_default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(**_MONEY)
    saved_cost = models.DecimalField(**_MONEY)
    routing_saved_cost = models.DecimalField(**_MONEY)
    latency_ms_sum = models.FloatField(default=0)
    ttft_ms_sum = models.FloatField(default=0)
    ttft_count = models.BigIntegerField(default=0)
    overhead_ms_sum = models.FloatField(default=0)
    latency_histogram = ArrayField(models.BigIntegerField(), default=_empty_histogram)
    ttft_histogram = ArrayField(models.BigIntegerField(), default=_empty_histogram)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["period", "bucket", "tenant", "api_key_id", "model_name", "cache_outcome"],
                                    name="usage_rollup_unique"),
        ]
        indexes = [models.Index(fields=["period", "tenant", "bucket"], name="usage_rollup_tenant_time"),
                   models.Index(fields=["period", "bucket"], name="usage_rollup_time")]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.period} {self.bucket:%Y-%m-%d %H:%M}"


class AttributionRollup(models.Model):
    """A day of one tenant's requests by end user and tag set, summed from the log by the same
    runs as :class:`UsageRollup` (``/v1/usage?group_by=user|tags``). A request counts once, under
    its end user ("" for none) and its sorted tags ({} for none), so every grouping sums to the
    tenant's total."""

    bucket = models.DateTimeField(help_text="Start of the day (UTC).")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="attribution_rollups")
    end_user = models.CharField(max_length=256, blank=True, default="")
    tags = ArrayField(models.CharField(max_length=100), blank=True, default=list)
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(**_MONEY)
    saved_cost = models.DecimalField(**_MONEY)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bucket", "tenant", "end_user", "tags"],
                                               name="attribution_rollup_unique")]
        indexes = [models.Index(fields=["tenant", "bucket"], name="attribution_rollup_tenant_time")]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.bucket:%Y-%m-%d} {self.end_user or '-'} {self.tags}"


class FilterRollup(models.Model):
    """A day of one tenant's requests for one end user and one single tag, by cache outcome, with
    the figures of :class:`UsageRollup` (spend, savings, hits, latency histograms): what the
    dashboard reads when filtered by end user or tag (``?user=``, ``?tag=``).

    A request counts under each of its tags (``tag`` = the tag), and once more, when it names an
    end user, under ``tag`` = "" (every request of that end user, once). So a tag filter sums the
    rows of ``tag`` = T, an end-user filter the rows of ``end_user`` = U and ``tag`` = "", and both
    at once the rows of U and T; none counts a request twice. Requests with neither an end user
    nor a tag add no row."""

    bucket = models.DateTimeField(help_text="Start of the day (UTC).")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="filter_rollups")
    end_user = models.CharField(max_length=256, blank=True, default="")
    tag = models.CharField(max_length=100, blank=True, default="")
    cache_outcome = models.CharField(max_length=10, default="miss")
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(**_MONEY)
    saved_cost = models.DecimalField(**_MONEY)
    routing_saved_cost = models.DecimalField(**_MONEY)
    latency_histogram = ArrayField(models.BigIntegerField(), default=_empty_histogram)
    ttft_histogram = ArrayField(models.BigIntegerField(), default=_empty_histogram)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bucket", "tenant", "end_user", "tag", "cache_outcome"],
                                               name="filter_rollup_unique")]
        indexes = [models.Index(fields=["tenant", "end_user", "bucket"], name="filter_rollup_user"),
                   models.Index(fields=["tenant", "tag", "bucket"], name="filter_rollup_tag")]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.bucket:%Y-%m-%d} {self.end_user or '-'} {self.tag or '*'}"


class RollupWatermark(models.Model):
    """How far into RequestLog (by id) the rollups have summed, and the next safe point.

    ``candidate_id`` is the log's highest id seen by the previous run; a run sums rows up to it,
    never beyond, so a row whose id was taken by a transaction still committing when the log's
    maximum was read is not skipped: it has committed by the next run (usage rows are written in
    short COPY transactions)."""

    name = models.CharField(max_length=32, unique=True, default="request_log")
    last_id = models.BigIntegerField(default=0)
    candidate_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name}: {self.last_id}"


class TenantMember(models.Model):
    """A login (a Django user, not staff) that may read one tenant's usage page."""

    user = models.OneToOneField("auth.User", on_delete=models.CASCADE, related_name="tenant_membership")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="members")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user} → {self.tenant}"
