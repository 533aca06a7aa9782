"""Admin for cache entries: browse per tenant, see hits and savings, purge (after confirming, and
only in the tenants of the entries selected)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count, F, Q, Sum

from apps.cache.models import CacheEntry
from apps.cache.services import cache_purge
from apps.core.confirm import Doomed, action_confirmation, action_confirmed


@admin.register(CacheEntry)
class CacheEntryAdmin(admin.ModelAdmin):
    list_display = ("short_prompt", "tenant", "namespace", "model_name", "hit_count", "wrong_hits", "cost", "saved",
                    "created_at", "expires_at", "last_hit_at")
    list_filter = ("tenant", "model")
    list_select_related = ("tenant",)
    search_fields = ("prompt_text", "request_hash")
    exclude = ("embedding",)
    readonly_fields = ("tenant", "namespace", "request_hash", "context_hash", "prompt_text", "response", "model",
                       "model_name", "input_tokens", "output_tokens", "cost", "created_at", "expires_at", "hit_count",
                       "last_hit_at", "wrong_hits", "min_similarity", "embedding_model")
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

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # "Purge selected entries" says what it deletes per tenant
        return actions

    @admin.action(description="Purge the selected entries", permissions=["delete"])
    def purge_selected(self, request, queryset):
        if not action_confirmed(request):
            counts = queryset.order_by().values("tenant_id", "tenant__name").annotate(count=Count("id"))
            return action_confirmation(self, request, action="purge_selected", title="Purge the selected entries",
                                       noun="entries", doomed=[Doomed(row["tenant__name"], "selected entries",
                                                                      row["count"]) for row in counts])
        saved = queryset.aggregate(total=Sum(F("cost") * F("hit_count")))["total"] or 0
        count, _ = queryset.delete()
        self.message_user(request, f"Purged {count} entries (they had saved ${saved:.6f}).", messages.SUCCESS)
        return None

    @admin.action(description="Purge every entry of the selected entries' tenants", permissions=["delete"])
    def purge_tenants(self, request, queryset):
        tenant_ids = set(queryset.order_by().values_list("tenant_id", flat=True).distinct())
        if not action_confirmed(request):
            counts = CacheEntry.objects.filter(tenant_id__in=tenant_ids).values("tenant_id", "tenant__name").annotate(
                count=Count("id"))
            return action_confirmation(self, request, action="purge_tenants", title="Purge whole tenants' caches",
                                       noun="entries", doomed=[Doomed(row["tenant__name"], "every entry",
                                                                      row["count"]) for row in counts])
        total = sum(cache_purge(tenant_id=tenant_id) for tenant_id in tenant_ids)
        self.message_user(request, f"Purged {total} entries of {len(tenant_ids)} tenant(s).", messages.SUCCESS)
        return None

    @admin.action(description="Purge every entry answered by the selected entries' models, in their tenants only",
                  permissions=["delete"])
    def purge_models(self, request, queryset):
        pairs = set(queryset.exclude(model_name="").order_by().values_list("tenant_id", "model_name").distinct())
        if not action_confirmed(request):
            counts = CacheEntry.objects.filter(_any_pair(pairs)).values(
                "tenant_id", "tenant__name", "model_name").annotate(count=Count("id")) if pairs else []
            return action_confirmation(self, request, action="purge_models", title="Purge entries by model",
                                       noun="entries", doomed=[Doomed(row["tenant__name"],
                                                                      f"entries answered by {row['model_name']}",
                                                                      row["count"]) for row in counts])
        total = sum(cache_purge(tenant_id=tenant_id, model_name=name) for tenant_id, name in pairs)
        names = ", ".join(sorted({name for _, name in pairs})) or "no model"
        self.message_user(request, f"Purged {total} entries answered by {names} in {len({t for t, _ in pairs})} "
                          "tenant(s).", messages.SUCCESS)
        return None


def _any_pair(pairs: set[tuple[int, str]]) -> Q:
    """Entries of any of these (tenant, model name) pairs."""
    condition = Q(pk__in=[])
    for tenant_id, name in pairs:
        condition |= Q(tenant_id=tenant_id, model_name=name)
    return condition
