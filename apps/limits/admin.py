"""Budget alerts in the admin: read-only, filterable by tenant."""

from __future__ import annotations

from django.contrib import admin

from apps.core.confirm import TenantCountedDelete
from apps.limits.models import BudgetAlert


@admin.register(BudgetAlert)
class BudgetAlertAdmin(TenantCountedDelete, admin.ModelAdmin):
    list_display = ("created_at", "tenant", "api_key", "threshold_percent", "spent_usd", "budget_usd", "period_start",
                    "delivered_at", "webhook_attempts", "last_error")
    list_filter = ("tenant",)
    list_select_related = ("tenant", "api_key")
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
