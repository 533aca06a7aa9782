"""Admin for routing rules (fallbacks inline, in order) and the classifier's phrases."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.db.models import Prefetch

from apps.core.confirm import TenantCountedDelete
from apps.routing.models import ComplexityIndicator, ModelPrior, RouteOutcome, RoutingFallback, RoutingRule
from apps.routing.services import outcomes_score
from apps.tenants.models import Tenant


class RoutingFallbackInline(admin.TabularInline):
    model = RoutingFallback
    extra = 1
    fields = ("position", "model")
    ordering = ("position", "id")
    autocomplete_fields = ("model",)
    verbose_name = "fallback (tried in order of position, lowest first)"
    verbose_name_plural = "fallbacks, tried in order of position after the target fails"


class TagsField(forms.CharField):
    """Tags as the operator types them, ``batch, internal``; stored as a JSON list."""

    def prepare_value(self, value):
        if isinstance(value, list):
            return ", ".join(str(tag) for tag in value)
        return value

    def to_python(self, value):
        text = super().to_python(value)
        if isinstance(text, list):
            return text
        text = (text or "").strip()
        if text.startswith("["):  # a JSON list, as the field used to take
            try:
                parsed = json.loads(text)
            except ValueError:
                raise forms.ValidationError("Tags are comma-separated: batch, internal.") from None
            if not isinstance(parsed, list) or not all(isinstance(tag, str) for tag in parsed):
                raise forms.ValidationError("Tags are comma-separated: batch, internal.")
            text = ",".join(parsed)
        tags = [tag.strip() for tag in text.split(",") if tag.strip()]
        if any(len(tag) > 100 for tag in tags):
            raise forms.ValidationError("A tag is at most 100 characters.")
        return list(dict.fromkeys(tags))


class RoutingRuleForm(forms.ModelForm):
    match_tags = TagsField(required=False, label="Match tags",
                           help_text="Comma-separated, e.g. <code>batch, internal</code>: a request matches when "
                                     "it carries every one (x-switchyard-tags). Empty: any request.")

    class Meta:
        model = RoutingRule
        fields = ("name", "tenant", "priority", "is_active", "weight", "match_model", "match_tier",
                  "min_prompt_tokens", "max_prompt_tokens", "match_tags", "target", "learned", "quality_target",
                  "explore_share")
        help_texts = {
            "match_tier": "The prompt's complexity as the classifier reads it (simple, moderate, complex; "
                          "Routing, Complexity indicators). Empty: any prompt.",
            "priority": "Lower runs first. A tenant's own rules are tried before global ones; among rules of "
                        "the first matching priority one is drawn by weight.",
        }


class ScopeFilter(admin.SimpleListFilter):
    """One filter for where a rule applies: every tenant (global) or one tenant."""

    title = "scope"
    parameter_name = "scope"

    def lookups(self, request, model_admin):
        tenants = Tenant.objects.filter(routing_rules__isnull=False).distinct().order_by("name")
        return [("global", "Global (every tenant)"), *((str(t.pk), t.name) for t in tenants)]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "global":
            return queryset.filter(tenant__isnull=True)
        if value and value.isdigit():
            return queryset.filter(tenant_id=int(value))
        return queryset


@admin.register(RoutingRule)
class RoutingRuleAdmin(TenantCountedDelete, admin.ModelAdmin):
    form = RoutingRuleForm
    list_display = ("name", "scope", "priority", "match_model", "match_tier", "target", "fallback_chain", "learned",
                    "weight", "is_active")
    list_filter = ("is_active", "match_tier", ScopeFilter)
    list_select_related = ("tenant", "target")
    search_fields = ("name", "match_model")
    autocomplete_fields = ("tenant", "target")
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "tenant", "priority", "is_active", "weight"),
                "description": "A tenant's rules are tried before the global ones (no tenant), each group by "
                               "ascending priority; the first rule whose conditions all match routes the request."}),
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

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related(
            Prefetch("fallbacks", queryset=RoutingFallback.objects.select_related("model").order_by("position", "id")))

    @admin.display(description="scope", ordering="tenant__name")
    def scope(self, rule: RoutingRule) -> str:
        return rule.tenant.name if rule.tenant_id else "global"

    @admin.display(description="then (fallbacks in order)")
    def fallback_chain(self, rule: RoutingRule) -> str:
        return " → ".join(f"{n}. {fallback.model.name}" for n, fallback in enumerate(rule.fallbacks.all(), 1)) or "-"


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
