"""Admin for routing rules (fallbacks inline, in order) and the classifier's phrases."""

from __future__ import annotations

from django.contrib import admin, messages

from apps.core.confirm import TenantCountedDelete
from apps.routing.models import ComplexityIndicator, ModelPrior, RouteOutcome, RoutingFallback, RoutingRule
from apps.routing.services import outcomes_score


class RoutingFallbackInline(admin.TabularInline):
    model = RoutingFallback
    extra = 1
    fields = ("position", "model")
    ordering = ("position", "id")
    autocomplete_fields = ("model",)


@admin.register(RoutingRule)
class RoutingRuleAdmin(TenantCountedDelete, admin.ModelAdmin):
    list_display = ("name", "scope", "priority", "match_model", "match_tier", "target", "learned", "weight",
                    "is_active")
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
        ("Learned routing (the target and its fallbacks are the candidates)", {
            "fields": ("learned", "quality_target", "explore_share"),
        }),
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


@admin.register(RouteOutcome)
class RouteOutcomeAdmin(admin.ModelAdmin):
    """What learned rules routed, and the feedback each answer got: the tenants' routers."""

    list_display = ("created_at", "request_id", "tenant", "rule", "model_name", "score", "estimate", "best_model",
                    "explored")
    list_filter = ("explored", ("score", admin.EmptyFieldListFilter), "tenant")
    actions = ("grade_good", "grade_bad")
    list_select_related = ("tenant", "rule")
    search_fields = ("request_id",)
    exclude = ("embedding",)
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100

    def get_queryset(self, request):
        return super().get_queryset(request).defer("embedding")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        return (queryset.filter(request_id=term) if term else queryset), False

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields if field.name != "embedding"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def _grade(self, request, queryset, score: float) -> None:
        graded = outcomes_score(queryset, score=score, by=request.user.get_username())
        self.message_user(request, f"{graded} answer(s) graded {score:g}: the tenants' routers learn from them "
                                   "within seconds.", messages.SUCCESS)

    @admin.action(description="Grade the selected answers good (score 1)", permissions=["grade"])
    def grade_good(self, request, queryset):
        self._grade(request, queryset, 1.0)

    @admin.action(description="Grade the selected answers bad (score 0)", permissions=["grade"])
    def grade_bad(self, request, queryset):
        self._grade(request, queryset, 0.0)

    def has_grade_permission(self, request) -> bool:
        return request.user.has_perm("routing.view_routeoutcome") and request.user.has_perm("usage.add_feedback")


@admin.register(ModelPrior)
class ModelPriorAdmin(admin.ModelAdmin):
    """What every tenant's feedback says of each model (the ``routing.priors_refresh`` task writes it)."""

    list_display = ("model_name", "score", "outcomes", "tenants", "updated_at")
    search_fields = ("model_name",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
