"""Admin actions that delete ask first.

Such an action answers its first POST with a page that says what it will delete, per tenant,
and deletes only on a second POST carrying ``confirm=yes`` (as Django's own ``delete_selected``
does with ``post=yes``). The page posts back what the operator sent (the action, the ticked
rows, "select all") to the same URL, so the changelist's filters scope the second POST exactly
as they scoped the first.

Django's own "delete selected" asks too; on the admins of tenant-owned rows
(:class:`TenantCountedDelete`) its page also counts the rows per tenant.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.admin import helpers
from django.contrib.admin.actions import delete_selected
from django.db.models import Count
from django.template.response import TemplateResponse

CONFIRM_FIELD = "confirm"


@dataclass(frozen=True)
class Doomed:
    """``count`` rows of ``what`` that belong to ``tenant`` and an action will delete."""

    tenant: str
    what: str
    count: int


def action_confirmed(request) -> bool:
    """Whether this POST is the operator's answer to the confirmation page."""
    return request.POST.get(CONFIRM_FIELD) == "yes"


def action_confirmation(modeladmin, request, *, action: str, title: str, doomed: Iterable[Doomed],
                        noun: str) -> TemplateResponse:
    """The page asking to confirm ``action``, listing what it deletes tenant by tenant."""
    rows = sorted(doomed, key=lambda row: (row.tenant, row.what))
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "subtitle": None,
        "opts": opts,
        "rows": rows,
        "total": sum(row.count for row in rows),
        "tenants": len({row.tenant for row in rows}),
        "noun": noun,
        "action": action,
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across") == "1",
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "confirm_field": CONFIRM_FIELD,
        "media": modeladmin.media,
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, "admin/action_confirmation.html", context)


def delete_selected_per_tenant(modeladmin, request, queryset):
    """Django's ``delete_selected``, whose confirmation page also counts the rows per tenant."""
    response = delete_selected(modeladmin, request, queryset)
    if isinstance(response, TemplateResponse):
        counts = queryset.order_by().values("tenant__name").annotate(count=Count("pk"))
        response.context_data["per_tenant"] = sorted(
            (row["tenant__name"] or "(global)", row["count"]) for row in counts)
        response.template_name = "admin/delete_selected_per_tenant.html"
    return response


class TenantCountedDelete:
    """For the admin of a model with a ``tenant`` key: "delete selected" counts per tenant."""

    def get_actions(self, request):
        actions = super().get_actions(request)
        if "delete_selected" in actions:
            _, name, description = actions["delete_selected"]
            actions["delete_selected"] = (delete_selected_per_tenant, name, description)
        return actions
