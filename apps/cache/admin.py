"""Admin for cache entries: browse per tenant, see hits and savings, purge."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import F, Sum

from apps.cache.models import CacheEntry
from apps.cache.services import cache_purge
from apps.tenants.models import Tenant


@admin.register(CacheEntry)
class CacheEntryAdmin(admin.ModelAdmin):
    list_display = ("short_prompt", "tenant", "namespace", "model_name", "hit_count", "cost", "saved",
                    "created_at", "expires_at", "last_hit_at")
    list_filter = ("tenant", "model")
    list_select_related = ("tenant",)
    search_fields = ("prompt_text", "request_hash")
    exclude = ("embedding",)
    readonly_fields = ("tenant", "namespace", "request_hash", "context_hash", "prompt_text", "response", "model",
                       "model_name", "input_tokens", "output_tokens", "cost", "created_at", "expires_at", "hit_count",
                       "last_hit_at")
    ordering = ("-id",)  # newest first along the primary key: no sort over the table
    # The filtered count stays exact, unlike the request log's: "select all N" before a purge must
    # say the true N, and TTLs and eviction keep this table bounded.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a facet is a COUNT per choice over the table
    list_per_page = 100
    actions = ["purge_selected", "purge_tenants", "purge_models"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("embedding", "response")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="prompt")
    def short_prompt(self, entry: CacheEntry) -> str:
        return entry.prompt_text[:80] + ("…" if len(entry.prompt_text) > 80 else "")

    @admin.display(description="saved")
    def saved(self, entry: CacheEntry):
        return entry.cost * entry.hit_count

    @admin.action(description="Purge selected entries", permissions=["delete"])
    def purge_selected(self, request, queryset) -> None:
        saved = queryset.aggregate(total=Sum(F("cost") * F("hit_count")))["total"] or 0
        count, _ = queryset.delete()
        self.message_user(request, f"Purged {count} entries (they had saved ${saved:.6f}).", messages.SUCCESS)

    @admin.action(description="Purge every entry of the selected entries' tenants", permissions=["delete"])
    def purge_tenants(self, request, queryset) -> None:
        total = sum(cache_purge(tenant=tenant) for tenant in Tenant.objects.filter(
            pk__in=queryset.values("tenant_id")))
        self.message_user(request, f"Purged {total} entries.", messages.SUCCESS)

    @admin.action(description="Purge every entry answered by the selected entries' models", permissions=["delete"])
    def purge_models(self, request, queryset) -> None:
        names = set(queryset.values_list("model_name", flat=True))
        total = sum(cache_purge(model_name=name) for name in names if name)
        self.message_user(request, f"Purged {total} entries answered by {', '.join(sorted(names))}.",
                          messages.SUCCESS)
