"""Admin for request logs: read-only, fast on big tables (no counts, no N+1)."""

from __future__ import annotations

from django.contrib import admin

from apps.catalog.models import Model
from apps.usage.models import RequestLog


class ModelUsedFilter(admin.SimpleListFilter):
    """Choices from the catalog, not a DISTINCT over the whole log (which scans every row)."""

    title = "model used"
    parameter_name = "model_used"

    def lookups(self, request, model_admin):
        return [(name, name) for name in Model.objects.order_by("name").values_list("name", flat=True)]

    def queryset(self, request, queryset):
        return queryset.filter(model_used=self.value()) if self.value() else queryset


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    list_display = ("created_at", "request_id", "tenant", "key_prefix", "requested_model", "model_used",
                    "cache_outcome", "input_tokens", "output_tokens", "cost", "latency_ms", "status_code")
    # Every filter's choices come from small tables or fixed lists: nothing scans the log.
    list_filter = ("created_at", "cache_outcome", "is_stream", "tenant", ModelUsedFilter)
    list_select_related = ("tenant", "api_key")
    search_fields = ("=request_id",)
    show_full_result_count = False
    list_per_page = 100
    raw_id_fields = ("tenant", "api_key", "model", "provider", "routing_rule", "price")

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    @admin.display(description="key", ordering="api_key__prefix")
    def key_prefix(self, log: RequestLog) -> str:
        return log.api_key.prefix if log.api_key_id else "-"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
