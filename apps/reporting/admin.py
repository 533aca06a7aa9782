from __future__ import annotations

from django.contrib import admin

from apps.core.confirm import TenantCountedDelete
from apps.reporting.models import TenantMember


@admin.register(TenantMember)
class TenantMemberAdmin(TenantCountedDelete, admin.ModelAdmin):
    list_display = ("user", "tenant", "created_at")
    list_select_related = ("user", "tenant")
    search_fields = ("user__username", "tenant__name")
    autocomplete_fields = ("tenant",)
    raw_id_fields = ("user",)
