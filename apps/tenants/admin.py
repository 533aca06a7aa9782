"""Admin for tenants and API keys. A new key's secret is shown once, right after creation; a
tenant or key with usage is deactivated or revoked, never deleted."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone
from django.utils.html import format_html

from apps.cache.services import cache_purge
from apps.core.confirm import Doomed, TenantCountedDelete, action_confirmation, action_confirmed
from apps.limits.selectors import spend_current
from apps.tenants.models import ApiKey, Tenant
from apps.tenants.services import key_create, key_revoke
from apps.usage.models import RequestLog

admin.site.site_header = "Switchyard"
admin.site.site_title = "Switchyard admin"
admin.site.index_title = "Operate the gateway"


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
    readonly_fields = ("created_at", "updated_at", "spend_this_period")
    fieldsets = (
        (None, {"fields": ("name", "slug", "is_active")}),
        ("Limits and budget", {"fields": _LIMIT_FIELDS, "description":
                               "Apply to all the tenant's keys together; a key's own limits apply on top."}),
        ("Budget alerts", {"fields": ("alert_webhook_url", "alert_webhook_secret")}),
        ("Request log", {"fields": ("log_retention_days",)}),
        ("Cache", {"fields": ("cache_enabled", "cache_semantic", "cache_similarity_threshold", "cache_verify_precision",
                                       "cache_ttl_seconds",
                                       "cache_max_temperature", "cache_tool_calls", "cache_namespace_by_user",
                                       "cache_embedding_model", "cache_max_entries")}),
        ("Audit", {"fields": ("created_at", "updated_at")}),
    )
    inlines = [ApiKeyInline]
    actions = ["purge_cache"]

    @admin.display(description="spend this period")
    def spend_this_period(self, tenant: Tenant) -> str:
        return _spend(tenant)

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
    readonly_fields = ("prefix", "tenant", "created_at", "revoked_at", "last_used_at", "spend_this_period")
    fields = ("tenant", "name", "prefix", "expires_at", "allowed_models", *_LIMIT_FIELDS, "created_at",
              "revoked_at", "last_used_at")
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
        messages.warning(
            request,
            format_html(
                "New API key for {}: <code>{}</code> Copy it now: it is shown only this once and "
                "cannot be recovered.", created.api_key.tenant, created.secret,
            ),
        )

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
