"""Admin for tenants and API keys. A new key's secret is shown once, right after creation; a
tenant or key with usage is deactivated or revoked, never deleted."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Exists, OuterRef, Q
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from apps.cache.services import cache_purge
from apps.core.confirm import Doomed, TenantCountedDelete, action_confirmation, action_confirmed
from apps.limits.selectors import spend_current
from apps.tenants.models import ApiKey, Tenant
from apps.tenants.services import key_create, key_revoke
from apps.usage.models import RequestLog

admin.site.site_header = "Switchyard"
admin.site.site_title = "Switchyard admin"
admin.site.index_title = "Operate the gateway"


_NEW_KEY_SESSION = "switchyard_new_api_key"

_LIMIT_FIELDS = ("rpm_limit", "tpm_limit", "concurrency_limit", "budget_usd", "budget_period", "budget_timezone",
                 "budget_alert_percent", "spend_this_period")


def _usd(value) -> str:
    return f"{value.normalize():f}"


def _spend(obj) -> str:
    """This period's spend against the budget, and the alert state, as enforcement counts it."""
    if obj is None or obj.pk is None:
        return "-"
    try:
        spend = spend_current(obj)
    except Exception:  # the counter store is down: the page still renders
        return "unavailable (the counter store did not answer)"
    if spend is None:
        return "no budget"
    text = f"${_usd(spend.spent)} of ${_usd(spend.budget)} ({spend.percent:.1f}%)"
    if spend.reserved:
        text += f", ${_usd(spend.reserved)} reserved by running requests"
    state = spend.alert_state
    if spend.alerted_at is not None:
        state = f"alerted at {spend.alert_percent}% on {spend.alerted_at:%Y-%m-%d %H:%M} UTC"
    return f"{text}; period from {spend.period_start:%Y-%m-%d %H:%M} UTC; {state}"


def _key_status(key: ApiKey) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= timezone.now():
        return "expired"
    return "active"


class ApiKeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked"), ("expired", "Expired")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        return queryset


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("prefix", "name", "status", "created_at", "expires_at", "revoked_at", "last_used_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # keys are created on the API key page, which shows the secret once

    @admin.display(description="status")
    def status(self, key: ApiKey) -> str:
        return _key_status(key)


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "is_active", "cache_enabled", "cache_similarity_threshold", "budget",
                    "created_at")
    list_filter = ("is_active", "cache_enabled")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("created_at", "updated_at", "spend_this_period", "shortcuts")
    fieldsets = (
        (None, {"fields": ("name", "slug", "is_active", "shortcuts")}),
        ("Limits and budget", {"fields": _LIMIT_FIELDS, "description":
                               "Apply to all the tenant's keys together; a key's own limits apply on top."}),
        ("Budget alerts", {"fields": ("alert_webhook_url", "alert_webhook_secret")}),
        ("Models", {"fields": ("allowed_models",)}),
        ("Request log", {"fields": ("log_retention_days", "store_bodies", "redact_patterns")}),
        ("Cache", {"fields": ("cache_enabled", "cache_semantic", "cache_similarity_threshold", "cache_verify_precision",
                                       "cache_ttl_seconds",
                                       "cache_max_temperature", "cache_tool_calls", "cache_namespace_by_user",
                                       "cache_embedding_model", "cache_max_entries")}),
        ("Audit", {"fields": ("created_at", "updated_at")}),
    )
    inlines = [ApiKeyInline]
    actions = ["purge_cache"]
    filter_horizontal = ("allowed_models",)

    @admin.display(description="spend this period")
    def spend_this_period(self, tenant: Tenant) -> str:
        return _spend(tenant)

    @admin.display(description="go to")
    def shortcuts(self, tenant: Tenant) -> str:
        """Everything of this tenant's, one click away (nothing before the tenant is saved)."""
        if tenant.pk is None:
            return "-"
        links = (
            (reverse("admin:tenants_apikey_add") + f"?tenant={tenant.pk}", "Add an API key"),
            (reverse("admin:tenants_apikey_changelist") + f"?tenant__id__exact={tenant.pk}", "API keys"),
            (reverse("admin:routing_routingrule_changelist") + f"?scope={tenant.pk}", "Routing rules"),
            (reverse("admin:cache_cacheentry_changelist") + f"?tenant__id__exact={tenant.pk}", "Cache entries"),
            (reverse("admin:usage_requestlog_changelist") + f"?tenant__id__exact={tenant.pk}", "Request log"),
            (reverse("admin:usage_feedback_changelist") + f"?tenant__id__exact={tenant.pk}", "Feedback"),
            (reverse("admin:limits_attributionlimit_changelist") + f"?tenant__id__exact={tenant.pk}",
             "Tag and end-user limits"),
            (reverse("dashboard") + f"?tenant={tenant.pk}", "Spend and savings (dashboard)"),
        )
        return format_html_join(" · ", '<a href="{}">{}</a>', links)

    def has_purge_cache_permission(self, request) -> bool:
        return request.user.has_perm("cache.delete_cacheentry")

    @admin.action(description="Purge the selected tenants' caches", permissions=["purge_cache"])
    def purge_cache(self, request, queryset):
        if not action_confirmed(request):
            counts = queryset.order_by().annotate(entries=Count("cache_entries")).values_list("name", "entries")
            return action_confirmation(self, request, action="purge_cache", title="Purge tenants' caches",
                                       noun="cache entries",
                                       doomed=[Doomed(name, "every cache entry", entries) for name, entries in counts])
        tenants = list(queryset.values_list("pk", flat=True))
        total = sum(cache_purge(tenant_id=tenant_id) for tenant_id in tenants)
        self.message_user(request, f"Purged {total} cache entries of {len(tenants)} tenant(s).", messages.SUCCESS)
        return None

    @admin.display(description="budget")
    def budget(self, tenant: Tenant) -> str:
        return "-" if tenant.budget_usd is None else _spend(tenant).split(";")[0]

    def get_deleted_objects(self, objs, request):
        """Refuse tenants with usage history before loading any of it.

        Django's confirmation page loads and lists every row a deletion cascades to: for a busy
        tenant, millions of request logs (minutes of work), only to end on "cannot delete" since
        logs are not deletable here. The log is the billing record: such a tenant is deactivated.
        """
        with_usage = Tenant.objects.filter(pk__in=[tenant.pk for tenant in objs]).filter(
            Exists(RequestLog.objects.filter(tenant=OuterRef("pk"))))
        protected = [format_html("Request logs of {} (the billing record: deactivate the tenant instead)", tenant)
                     for tenant in with_usage]
        if protected:
            return [], {}, set(), protected
        return super().get_deleted_objects(objs, request)


class ApiKeyAddForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ("tenant", "name", "expires_at", "allowed_models", *_LIMIT_FIELDS[:-1])

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in ("budget_period", "budget_timezone"):  # left out: the model's default
            self.fields[name].required = False

    def clean(self):
        data = super().clean()
        for name in ("budget_period", "budget_timezone"):
            if not data.get(name):
                data[name] = ApiKey._meta.get_field(name).get_default()
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(TenantCountedDelete, admin.ModelAdmin):
    list_display = ("prefix", "name", "tenant", "status", "expires_at", "last_used_at", "created_at")
    list_filter = (ApiKeyStatusFilter, "tenant")
    list_select_related = ("tenant",)
    search_fields = ("prefix", "name", "tenant__name", "tenant__slug")
    autocomplete_fields = ("tenant",)
    filter_horizontal = ("allowed_models",)
    readonly_fields = ("prefix", "tenant", "created_at", "revoked_at", "revoke_link", "last_used_at",
                       "spend_this_period")
    fields = ("tenant", "name", "prefix", "expires_at", "allowed_models", *_LIMIT_FIELDS, "created_at",
              "revoked_at", "revoke_link", "last_used_at")
    actions = ["revoke_selected"]

    @admin.display(description="spend this period")
    def spend_this_period(self, key: ApiKey) -> str:
        return _spend(key)

    @admin.display(description="status")
    def status(self, key: ApiKey) -> str:
        return _key_status(key)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
            kwargs["fields"] = ApiKeyAddForm.Meta.fields
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def get_fields(self, request, obj=None):
        return ApiKeyAddForm.Meta.fields if obj is None else self.fields

    def save_model(self, request, obj, form, change) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        limits = {name: form.cleaned_data[name] for name in _LIMIT_FIELDS[:-1] if name in form.cleaned_data}
        created = key_create(tenant=form.cleaned_data["tenant"], name=form.cleaned_data["name"],
                             expires_at=form.cleaned_data.get("expires_at"), **limits)
        obj.pk = created.api_key.pk
        obj._state.adding = False
        obj.prefix = created.api_key.prefix
        # Shown once, on the page the add form leads to (response_add), then gone from the session.
        request.session[_NEW_KEY_SESSION] = {"pk": obj.pk, "secret": created.secret}

    def response_add(self, request, obj, post_url_continue=None):
        return HttpResponseRedirect(reverse("admin:tenants_apikey_created", args=[obj.pk]))

    def get_urls(self):
        own = [
            path("<int:pk>/created/", self.admin_site.admin_view(self.created_view), name="tenants_apikey_created"),
            path("<int:pk>/revoke/", self.admin_site.admin_view(self.revoke_view), name="tenants_apikey_revoke"),
        ]
        return own + super().get_urls()

    def created_view(self, request, pk: int):
        """The new key's secret, once: a reload (or anyone else's session) finds it gone."""
        key = get_object_or_404(ApiKey.objects.select_related("tenant"), pk=pk)
        if not self.has_view_permission(request, key):
            raise PermissionDenied
        shown = request.session.get(_NEW_KEY_SESSION) or {}
        secret = shown.get("secret") if shown.get("pk") == key.pk else None
        if secret is not None:
            del request.session[_NEW_KEY_SESSION]
        return TemplateResponse(request, "admin/tenants/apikey/created.html", {
            **self.admin_site.each_context(request), "title": f"API key {key.prefix}… created", "opts": self.opts,
            "key": key, "secret": secret,
            "change_url": reverse("admin:tenants_apikey_change", args=[key.pk])})

    def revoke_view(self, request, pk: int):
        """Revoke one key, after a page that says what it does."""
        key = get_object_or_404(ApiKey.objects.select_related("tenant"), pk=pk)
        if not self.has_change_permission(request, key):
            raise PermissionDenied
        change_url = reverse("admin:tenants_apikey_change", args=[key.pk])
        if request.method == "POST" and key.revoked_at is None:
            key_revoke(api_key=key)
            self.message_user(request, f"Revoked {key.prefix}…: it stops authenticating within seconds.",
                              messages.SUCCESS)
            return HttpResponseRedirect(change_url)
        return TemplateResponse(request, "admin/tenants/apikey/revoke.html", {
            **self.admin_site.each_context(request), "title": f"Revoke API key {key.prefix}…", "opts": self.opts,
            "key": key, "change_url": change_url})

    @admin.display(description="revoke")
    def revoke_link(self, key: ApiKey) -> str:
        if key.pk is None:
            return "-"
        if key.revoked_at is not None:
            return "revoked"
        return format_html('<a class="button" href="{}">Revoke this key…</a>',
                           reverse("admin:tenants_apikey_revoke", args=[key.pk]))

    def save_related(self, request, form, formsets, change) -> None:
        if change:
            super().save_related(request, form, formsets, change)
            return
        form.instance = ApiKey.objects.get(pk=form.instance.pk)
        form.instance.allowed_models.set(form.cleaned_data.get("allowed_models") or [])

    def get_deleted_objects(self, objs, request):
        """Refuse keys that made requests, before loading their logs.

        Their request logs are the billing record and keep the key that made them: such a key
        is revoked instead (the page offers it). A key that never made a request can go.
        """
        used = ApiKey.objects.filter(pk__in=[key.pk for key in objs]).filter(
            Exists(RequestLog.objects.filter(api_key=OuterRef("pk"))))
        protected = [format_html("Request logs of {} (the billing record: revoke the key instead)", key)
                     for key in used]
        if protected:
            return [], {}, set(), protected
        return super().get_deleted_objects(objs, request)

    def delete_view(self, request, object_id, extra_context=None):
        key = self.get_object(request, unquote(object_id))
        if key is not None and key.revoked_at is None and self.has_change_permission(request, key):
            extra_context = {**(extra_context or {}), "revoke_instead": key}
        return super().delete_view(request, object_id, extra_context)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request, queryset) -> None:
        count = 0
        for key in queryset.filter(revoked_at__isnull=True):
            key_revoke(api_key=key)
            count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)
