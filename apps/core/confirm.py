"""Admin actions that delete ask first.

Such an action answers its first POST with a page that says what it will delete, per tenant,
and deletes only on a second POST carrying ``confirm=yes`` (as Django's own ``delete_selected``
does with ``post=yes``). The page posts back what the operator sent (the action, the ticked
rows, "select all") to the same URL, so the changelist's filters scope the second POST exactly
as they scoped the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.admin import helpers
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
