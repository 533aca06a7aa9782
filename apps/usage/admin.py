"""Admin for request logs: read-only, and nothing on the page reads the whole log.

The log grows by one row per request, so every part of the changelist is bounded: filter
choices come from small tables or fixed lists, the row count stops at a cap, the date
hierarchy reads two timestamps instead of a DISTINCT over every row, facet counts are off,
and the page's foreign keys are joined, not fetched row by row.

The list shows what an operator reads first (model, cache outcome, cost, latency, status and
error code) in compact columns that fit a 1400-pixel window beside the filters, the request ID
last (tokens and the rest are on each row's page). Filters: time, tenant, key, model, status,
error code, cache outcome, stream.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from functools import cached_property

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.contrib.postgres.search import SearchQuery
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import F, Max, Min
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.text import capfirst

from apps.catalog.models import Model
from apps.tenants.models import ApiKey
from apps.tenants.services import KEY_PREFIX
from apps.usage.models import Feedback, RequestBody, RequestLog
from apps.usage.sessions import session_timeline, sessions_recent


class CappedCountPaginator(Paginator):
    """Counts at most ``limit`` rows: an exact count of a huge log is a full scan per page view.

    Past the cap the changelist says "more than N" and pages up to N; filters, the date
    hierarchy and search narrow the list to what an operator is looking for.
    """

    limit = 10_000
    capped = False

    @cached_property
    def count(self) -> int:
        counted = self.object_list.order_by()[: self.limit + 1].count()
        self.capped = counted > self.limit
        return min(counted, self.limit)


class RequestLogChangeList(ChangeList):
    @cached_property
    def date_links(self) -> dict:
        """The date hierarchy's links, from the first and last timestamps alone.

        Django's own links list the years, months or days that hold rows, found with a DISTINCT
        over every matching row. These come from MIN and MAX (two index probes) and offer every
        calendar unit between them, empty or not; they link the same ``created_at__year``,
        ``__month`` and ``__day`` filters that the ChangeList applies.
        """
        field = self.date_hierarchy
        year, month, day = (self.params.get(f"{field}__{part}") for part in ("year", "month", "day"))
        names = {"year": f"{field}__year", "month": f"{field}__month", "day": f"{field}__day"}

        def link(**filters) -> str:
            return self.get_query_string({names[part]: value for part, value in filters.items()}, [f"{field}__"])

        if year and month and day:
            chosen = date(int(year), int(month), int(day))
            return {
                "show": True,
                "back": {"link": link(year=year, month=month),
                         "title": capfirst(date_format(chosen, "YEAR_MONTH_FORMAT"))},
                "choices": [{"title": capfirst(date_format(chosen, "MONTH_DAY_FORMAT"))}],
            }
        bounds = self.queryset.aggregate(first=Min(field), last=Max(field))
        if bounds["first"] is None:
            back = {"link": link(), "title": "All dates"} if year else None
            return {"show": bool(year), "back": back, "choices": []}
        first, last = (timezone.localtime(bounds[end]).date() for end in ("first", "last"))
        if not year and first.year == last.year:
            year = first.year
            if first.month == last.month:
                month = first.month
        if year and month:
            return {
                "show": True,
                "back": {"link": link(year=year), "title": str(year)},
                "choices": [
                    {"link": link(year=year, month=month, day=number),
                     "title": capfirst(date_format(date(int(year), int(month), number), "MONTH_DAY_FORMAT"))}
                    for number in range(first.day, last.day + 1)
                ],
            }
        if year:
            return {
                "show": True,
                "back": {"link": link(), "title": "All dates"},
                "choices": [
                    {"link": link(year=year, month=number),
                     "title": capfirst(date_format(date(int(year), number, 1), "YEAR_MONTH_FORMAT"))}
                    for number in range(first.month, last.month + 1)
                ],
            }
        return {
            "show": True,
            "back": None,
            "choices": [{"link": link(year=number), "title": str(number)}
                        for number in range(first.year, last.year + 1)],
        }


class ModelUsedFilter(admin.SimpleListFilter):
    """Choices from the catalog, not a DISTINCT over the whole log (which scans every row)."""

    title = "model used"
    parameter_name = "model_used"

    def lookups(self, request, model_admin):
        return [(name, name) for name in Model.objects.order_by("name").values_list("name", flat=True)]

    def queryset(self, request, queryset):
        return queryset.filter(model_used=self.value()) if self.value() else queryset


def _searched(request) -> bool:
    """Whether the changelist's search is one of the ``kind:value`` terms (see ``SEARCH_TERMS``)."""
    kind, _, value = (request.GET.get("q") or "").strip().partition(":")
    return kind in ("user", "tag", "session", "text") and bool(value.strip())


class StatusCodeFilter(admin.SimpleListFilter):
    """Status classes and the codes the gateway answers with: a fixed list, not a DISTINCT."""

    title = "status"
    parameter_name = "status_code"
    _CLASSES = {"2xx": (200, 300), "4xx": (400, 500), "5xx": (500, 600)}
    _CODES = (200, 400, 401, 403, 404, 405, 413, 429, 500, 502, 504)

    def lookups(self, request, model_admin):
        return [("2xx", "Success (2xx)"), ("4xx", "Client error (4xx)"), ("5xx", "Server error (5xx)")] + [
            (str(code), str(code)) for code in self._CODES]

    def queryset(self, request, queryset):
        value = self.value()
        if _searched(request):
            # A user:, tag:, session: or text: search finds its rows on its own index, thousands at
            # most; the status is then checked on those rows. Compared as an expression, so that the
            # planner does not also read the errors' index (a percent of the whole log) to AND with it.
            queryset, column = queryset.alias(status_plain=F("status_code") + 0), "status_plain"
        else:
            column = "status_code"
        if value in self._CLASSES:
            low, high = self._CLASSES[value]
            return queryset.filter(**{f"{column}__gte": low, f"{column}__lt": high})
        if value and value.isdigit():
            return queryset.filter(**{column: int(value)})
        return queryset


class CreatedAtFilter(admin.DateFieldListFilter):
    """Django's time filter with the recent spans an operator looks at first."""

    def __init__(self, field, request, params, model, model_admin, field_path) -> None:
        super().__init__(field, request, params, model, model_admin, field_path)
        now = timezone.now()
        recent = [(title, {self.lookup_kwarg_since: str(now - span)})
                  for title, span in (("Past hour", timedelta(hours=1)), ("Past 24 hours", timedelta(days=1)))]
        self.links = (self.links[0], *recent, *self.links[1:])


class KeyFilter(admin.SimpleListFilter):
    """Choices from the keys table (the chosen tenant's keys when a tenant is chosen), newest
    first and at most :attr:`limit` of them; any key can still be chosen by id in the URL or
    found by its prefix in the search box."""

    title = "API key"
    parameter_name = "key"
    limit = 50

    def lookups(self, request, model_admin):
        keys = ApiKey.objects.select_related("tenant").order_by("-created_at")
        tenant = request.GET.get("tenant__id__exact")
        if tenant and tenant.isdigit():
            keys = keys.filter(tenant_id=int(tenant))
        return [(str(key.pk), f"{key.prefix}… ({key.name}, {key.tenant.name})") for key in keys[: self.limit]]

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(api_key_id=int(value)) if value and value.isdigit() else queryset


class ErrorCodeFilter(admin.SimpleListFilter):
    """Any error, none, or one code of those a request's row can carry: a fixed list, not a
    DISTINCT over the log (another code can be given in the URL)."""

    title = "error code"
    parameter_name = "error_code"
    CODES = (
        "rate_limit_exceeded", "budget_exceeded", "concurrency_limit_exceeded", "max_tokens_per_request",
        "limits_unavailable", "model_not_found", "model_not_allowed", "context_length_exceeded", "invalid_request",
        "upstream_error", "upstream_timeout", "upstream_unavailable", "upstream_rate_limited",
        "upstream_client_error", "upstream_stream_cut", "upstream_stream_error", "client_closed_request",
        "server_shutdown",
    )

    def lookups(self, request, model_admin):
        return [("any", "Any error"), ("none", "No error")] + [(code, code) for code in self.CODES]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "any":
            return queryset.exclude(error_code="")
        if value == "none":
            return queryset.filter(error_code="")
        return queryset.filter(error_code=value) if value else queryset


def _text_matches(queryset, words: str):
    """Requests whose kept body holds every word (the bodies' full-text index, then the log's
    request ids): the latest 1,000 matches."""
    found = RequestBody.objects.filter(search=SearchQuery(words, config="simple")).order_by("-created_at")
    pairs = list(found.values_list("tenant_id", "request_id")[:1000])
    return queryset.filter(request_id__in={request_id for _, request_id in pairs},
                           tenant_id__in={tenant_id for tenant_id, _ in pairs})


# ``kind:value`` search terms, each served by an index of the log (or of the kept bodies).
SEARCH_TERMS = {
    "user": lambda queryset, value: queryset.filter(end_user=value).exclude(end_user=""),
    "tag": lambda queryset, value: queryset.filter(tags__contains=[value]).exclude(tags=[]),
    "session": lambda queryset, value: queryset.filter(session_id=value).exclude(session_id=""),
    "text": _text_matches,
}


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    list_display = ("when", "tenant", "key_prefix", "model_column", "cache_column", "cost_column", "latency_column",
                    "status", "error_column", "request_id")
    list_filter = (("created_at", CreatedAtFilter), "tenant", KeyFilter, ModelUsedFilter, StatusCodeFilter,
                   ErrorCodeFilter, "cache_outcome", "is_stream")
    list_select_related = ("tenant", "api_key")
    search_fields = ("request_id",)  # searched exactly, below
    search_help_text = ("An exact request ID (the x-switchyard-request-id header, req_…), an API key's prefix "
                        f"({KEY_PREFIX}…), user:<end user>, tag:<tag>, session:<session id>, or text:<words> "
                        "(in the kept request bodies); with the filters for the rest.")
    date_hierarchy = "created_at"
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a facet is a COUNT per choice over the log
    paginator = CappedCountPaginator
    list_per_page = 100
    raw_id_fields = ("tenant", "api_key", "model", "provider", "deployment", "routing_rule", "price")

    def get_changelist(self, request, **kwargs):
        return RequestLogChangeList

    def get_search_results(self, request, queryset, search_term):
        """Exact, index-backed matches: Django's ``=request_id`` is case-insensitive, a full scan."""
        term = search_term.strip()
        if not term:
            return queryset, False
        kind, _, value = term.partition(":")
        value = value.strip()
        if kind in SEARCH_TERMS and value:
            return SEARCH_TERMS[kind](queryset, value), False
        if term.startswith(KEY_PREFIX):
            return queryset.filter(api_key__prefix=term.rstrip("…")), False
        return queryset.filter(request_id=term), False

    def get_readonly_fields(self, request, obj=None):
        return [*(field.name for field in self.model._meta.fields), "session_timeline", "request_body"]

    @admin.display(description="request body (redacted)")
    def request_body(self, log: RequestLog) -> str:
        """The prompt and answer, for a tenant that keeps them."""
        body = RequestBody.objects.filter(tenant_id=log.tenant_id, request_id=log.request_id).first()
        if body is None:
            return "-"
        prompt = json.dumps(body.prompt, indent=2, ensure_ascii=False)
        return format_html('<div id="sy-body"><strong>Prompt</strong><pre style="white-space:pre-wrap">{}</pre>'
                           '<strong>Answer</strong><pre style="white-space:pre-wrap">{}</pre></div>',
                           prompt, body.answer)

    @admin.display(description="session timeline")
    def session_timeline(self, log: RequestLog) -> str:
        if not log.session_id:
            return "-"
        return format_html('<a href="{}">Every request of session {}</a>', reverse(
            "admin:usage_requestlog_session", args=[log.tenant_id, log.session_id]), log.session_id)

    def get_urls(self):
        own = [
            path("sessions/", self.admin_site.admin_view(self.sessions_view), name="usage_requestlog_sessions"),
            path("sessions/<int:tenant_id>/<path:session_id>/", self.admin_site.admin_view(self.session_view),
                 name="usage_requestlog_session"),
        ]
        return own + super().get_urls()

    def sessions_view(self, request):
        """The latest sessions of the last 7 days, of every tenant or of one (``?tenant=``)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        tenant_id = request.GET.get("tenant")
        tenant_id = int(tenant_id) if tenant_id and tenant_id.isdigit() else None
        return TemplateResponse(request, "admin/usage/requestlog/sessions.html", {
            **self.admin_site.each_context(request), "title": "Sessions of the last 7 days", "opts": self.opts,
            "sessions": sessions_recent(tenant_id=tenant_id), "tenant_id": tenant_id})

    def session_view(self, request, tenant_id: int, session_id: str):
        """One session as a timeline of its requests."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        spans, totals = session_timeline(tenant_id=tenant_id, session_id=session_id)
        if not spans:
            raise Http404("No request of this tenant has this session id.")
        return TemplateResponse(request, "admin/usage/requestlog/session.html", {
            **self.admin_site.each_context(request), "title": f"Session {session_id}", "opts": self.opts,
            "spans": spans, "totals": totals, "tenant": spans[0].log.tenant, "session_id": session_id})

    @admin.display(description="time", ordering="created_at")
    def when(self, log: RequestLog) -> str:
        """Month, day and time: the year is the date hierarchy's, above the list."""
        return timezone.localtime(log.created_at).strftime("%m-%d %H:%M:%S")

    @admin.display(description="status", ordering="status_code")
    def status(self, log: RequestLog) -> int:
        return log.status_code

    @admin.display(description="key", ordering="api_key__prefix")
    def key_prefix(self, log: RequestLog) -> str:
        return log.api_key.prefix if log.api_key_id else "-"

    @admin.display(description="model", ordering="model_used")
    def model_column(self, log: RequestLog) -> str:
        """The model that answered, and the one asked for when it differs (``auto``, an alias)."""
        if log.requested_model and log.requested_model != log.model_used:
            return f"{log.model_used or '-'} ({log.requested_model})"
        return log.model_used or "-"

    @admin.display(description="cache", ordering="cache_outcome")
    def cache_column(self, log: RequestLog) -> str:
        if log.cache_outcome == RequestLog.CacheOutcome.SEMANTIC and log.cache_similarity is not None:
            return f"semantic {log.cache_similarity:.3f}"
        return log.cache_outcome

    @admin.display(description="cost", ordering="cost")
    def cost_column(self, log: RequestLog) -> str:
        """Dollars to six places, without trailing zeros (the row keeps ten)."""
        shown = log.cost.quantize(Decimal("0.000001"))
        if not shown:
            return "<$0.000001" if log.cost > 0 else "$0"
        return f"${shown.normalize():f}"

    @admin.display(description="latency", ordering="latency_ms")
    def latency_column(self, log: RequestLog) -> str:
        return f"{log.latency_ms:,.0f} ms"

    @admin.display(description="error", ordering="error_code")
    def error_column(self, log: RequestLog) -> str:
        return log.error_code or "-"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    """What clients said about their requests (``POST /v1/cache/feedback`` and ``/v1/feedback``)."""

    list_display = ("created_at", "request_id", "tenant", "kind", "score", "model_used", "cache_outcome",
                    "cache_similarity", "action")
    list_filter = ("kind", "cache_outcome", "action", "tenant")
    list_select_related = ("tenant",)
    search_fields = ("request_id",)
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        return (queryset.filter(request_id=term) if term else queryset), False

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
