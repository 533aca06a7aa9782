"""Admin for routing rules (fallbacks inline, in order) and the classifier's phrases."""

from __future__ import annotations

from django.contrib import admin

from apps.core.confirm import TenantCountedDelete
from apps.routing.models import ComplexityIndicator, RoutingFallback, RoutingRule


class RoutingFallbackInline(admin.TabularInline):
    model = RoutingFallback
    extra = 1
    fields = ("position", "model")
    ordering = ("position", "id")
    autocomplete_fields = ("model",)


@admin.register(RoutingRule)
class RoutingRuleAdmin(TenantCountedDelete, admin.ModelAdmin):
    list_display = ("name", "scope", "priority", "match_model", "match_tier", "target", "weight", "is_active")
    list_filter = ("is_active", "match_tier", ("tenant", admin.EmptyFieldListFilter), "tenant")
    list_select_related = ("tenant", "target")
    search_fields = ("name", "match_model")
    autocomplete_fields = ("tenant", "target")
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "tenant", "priority", "is_active", "weight")}),
        ("Conditions (empty matches anything)", {
            "fields": ("match_model", "match_tier", "min_prompt_tokens", "max_prompt_tokens", "match_tags"),
        }),
        ("Target", {"fields": ("target",)}),
        ("Audit", {"fields": ("created_at", "updated_at")}),
    )
    inlines = [RoutingFallbackInline]

    @admin.display(description="scope", ordering="tenant__name")
    def scope(self, rule: RoutingRule) -> str:
        return rule.tenant.name if rule.tenant_id else "global"


@admin.register(ComplexityIndicator)
class ComplexityIndicatorAdmin(admin.ModelAdmin):
    list_display = ("id", "phrase", "tier", "is_active")
    list_editable = ("phrase", "tier", "is_active")
    list_filter = ("tier", "is_active")
    search_fields = ("phrase",)
