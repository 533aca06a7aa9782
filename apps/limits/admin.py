"""Budget alerts in the admin (read-only, filterable by tenant), and the limits of a tenant's
tags and end users."""

from __future__ import annotations

from django.contrib import admin

from apps.core.confirm import TenantCountedDelete
from apps.limits.models import AttributionLimit, BudgetAlert


@admin.register(BudgetAlert)
class BudgetAlertAdmin(TenantCountedDelete, admin.ModelAdmin):
    list_display = ("created_at", "tenant", "api_key", "attribution_kind", "attribution_value", "threshold_percent",
                    "spent_usd", "budget_usd", "period_start",
                    "delivered_at", "webhook_attempts", "last_error")
    list_filter = ("tenant", "attribution_kind")
    list_select_related = ("tenant", "api_key")
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AttributionLimit)
class AttributionLimitAdmin(TenantCountedDelete, admin.ModelAdmin):
    list_display = ("tenant", "kind", "value", "rpm_limit", "tpm_limit", "concurrency_limit", "budget_usd",
                    "budget_period", "budget_alert_percent", "created_at")
    list_filter = ("kind", "tenant")
    list_select_related = ("tenant",)
    search_fields = ("value", "tenant__name", "tenant__slug")
    autocomplete_fields = ("tenant",)
    fieldsets = (
        (None, {"fields": ("tenant", "kind", "value"),
                "description": "Requests carrying this tag (metadata.tags or x-switchyard-tags), or sent for this "
                               "end user (the body's user field), must pass these limits as well as their key's "
                               "and tenant's."}),
        ("Limits and budget", {"fields": ("rpm_limit", "tpm_limit", "concurrency_limit", "budget_usd",
                                          "budget_period", "budget_timezone", "budget_alert_percent"),
                               "description": "A budget's alert goes to the tenant's alert webhook, once per "
                                              "period, naming this tag or end user."}),
    )
