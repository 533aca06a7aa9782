"""Admin for providers, models and their price history. Credentials are write-only."""

from __future__ import annotations

from datetime import UTC, datetime

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Exists, OuterRef
from django.utils.html import format_html, format_html_join

from apps.catalog.models import Deployment, Model, ModelPrice, Provider, ProviderCircuit
from apps.catalog.services import provider_check, rules_using
from apps.providers.pool_sync import pool_state_read
from apps.usage.models import RequestLog

_CREDENTIAL_MEANING = ("OpenAI-compatible: the API key (Authorization: Bearer). Anthropic: the API key "
                       "(x-api-key). Azure OpenAI: the resource's key (api-key). Google Gemini: the API key "
                       "(x-goog-api-key). Vertex AI: the service account's JSON key (exchanged for OAuth access "
                       "tokens). Amazon Bedrock: ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] (AWS SigV4).")


class ProviderForm(forms.ModelForm):
    """The credential is write-only: typed in, never rendered back; blank keeps the stored one."""

    base_url = forms.URLField(max_length=500, assume_scheme="https", help_text=Provider._meta.get_field(
        "base_url").help_text)
    credential = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Leave blank to keep the current credential.",
    )
    clear_credential = forms.BooleanField(required=False, help_text="Remove the stored credential.")

    class Meta:
        model = Provider
        fields = ("name", "kind", "base_url", "api_version", "project", "location", "responses_api", "credential",
                  "clear_credential", "timeout_seconds", "max_concurrency", "batch_api", "is_active")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Never hold the stored secret as the field's initial value: nothing can render it, and a
        # blank submission is "unchanged" rather than a change logged in the history.
        self.initial["credential"] = ""
        field = self.fields.get("credential")
        if field is not None:
            if self.instance.pk is None:
                field.help_text = "Write-only: stored encrypted and never shown again. Empty: no credential."
            elif self.instance.credential:
                field.help_text = ("A credential is set (write-only, never shown). Type a new one to replace it; "
                                   "leave blank to keep it.")
            else:
                field.help_text = "No credential is set. Write-only: stored encrypted and never shown again."
            field.help_text += " " + _CREDENTIAL_MEANING

    def clean(self) -> dict:
        cleaned = super().clean()
        if cleaned.get("clear_credential"):
            if cleaned.get("credential"):
                raise forms.ValidationError("Type a new credential or clear the current one, not both.")
            cleaned["credential"] = ""
        elif not cleaned.get("credential"):
            cleaned.pop("credential", None)  # not in cleaned_data: the instance keeps its value
        return cleaned


class ModelForm(forms.ModelForm):
    """Prices typed in, with their unit: a new model starts with none rather than a silent zero."""

    class Meta:
        model = Model
        fields = "__all__"  # noqa: DJ007 (every field of the model is the operator's to set)
        labels = {
            "input_price_per_million": "Input price (USD per 1M tokens)",
            "cached_input_price_per_million": "Cached input price (USD per 1M tokens)",
            "output_price_per_million": "Output price (USD per 1M tokens)",
            "cache_write_price_per_million": "Cache write price (USD per 1M tokens)",
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in ("input_price_per_million", "output_price_per_million"):
            field = self.fields.get(name)
            if field is not None:
                field.required = True
                if self.instance.pk is None:
                    self.initial[name] = None


class ModelInline(admin.TabularInline):
    model = Model
    form = ModelForm
    extra = 0
    show_change_link = True
    fields = ("name", "upstream_id", "mode", "tier", "input_price_per_million", "cached_input_price_per_million",
              "output_price_per_million", "cache_write_price_per_million", "is_free", "is_active")


def _circuit_name(circuit: ProviderCircuit) -> str:
    """The model, and the deployment's region when the circuit is one deployment's: "chat (eu-west)"."""
    deployment = circuit.deployment
    if deployment is None:
        return circuit.model.name
    return f"{circuit.model.name} ({deployment.region or f'deployment {deployment.pk}'})"


def _circuit_summary(circuits: list[ProviderCircuit]) -> str:
    """"closed", or "open in 1 of 2 processes" (of those that reported this circuit)."""
    tripped = [c for c in circuits if c.state != ProviderCircuit.State.CLOSED]
    if not tripped:
        return "closed"
    states = " / ".join(sorted({c.get_state_display() for c in tripped}))
    return f"{states} in {len(tripped)} of {len(circuits)} processes"


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ("name", "kind", "base_url", "credential_state", "circuit", "timeout_seconds", "max_concurrency",
                    "is_active")
    list_filter = ("kind", "is_active")
    search_fields = ("name", "base_url")
    readonly_fields = ("credential_state", "circuits_table", "created_at", "updated_at")
    inlines = [ModelInline]
    actions = ["test_connection"]

    def get_fieldsets(self, request, obj=None):
        # One credential field: a new provider has nothing to keep or clear.
        credential = ("credential", "clear_credential") if obj is not None and obj.credential else ("credential",)
        return (
            (None, {"fields": ("name", "kind", "base_url", "api_version", "project", "location", "responses_api",
                               "timeout_seconds", "max_concurrency", "batch_api", "is_active")}),
            ("Credential", {"fields": credential}),
            *((("Circuit breakers", {"fields": ("circuits_table",)}),
               ("Audit", {"fields": ("created_at", "updated_at")})) if obj is not None else ()),
        )

    @admin.action(description="Test the connection (list the provider's models)", permissions=["view"])
    def test_connection(self, request, queryset) -> None:
        for provider in queryset:
            result = provider_check(provider)
            self.message_user(request, f"{provider.name}: {result.summary}",
                              messages.SUCCESS if result.ok else messages.ERROR)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("circuits__model", "circuits__deployment")

    @admin.display(description="circuit")
    def circuit(self, provider: Provider) -> str:
        """Closed unless some process has opened a model's circuit: "mini: open in 1 of 2 processes"
        (out of the processes that reported a circuit for that model)."""
        by_model: dict[str, list[ProviderCircuit]] = {}
        for c in provider.circuits.all():
            by_model.setdefault(_circuit_name(c), []).append(c)
        parts = []
        for name, circuits in sorted(by_model.items()):
            summary = _circuit_summary(circuits)
            if summary != "closed":
                parts.append(f"{name}: {summary}")
        return "; ".join(parts) or "closed"

    @admin.display(description="by model and process")
    def circuits_table(self, provider: Provider) -> str:
        """Each gateway process's breaker for each model of this provider, as it last reported it."""
        circuits = list(provider.circuits.all()) if provider.pk else []
        if not circuits:
            return "closed in every process (no transition reported)"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((_circuit_name(c), c.process, c.get_state_display(), c.consecutive_failures, c.last_failure or "-",
              c.retry_at or "-", c.changed_at) for c in circuits))
        return format_html(
            "<table><thead><tr><th>model</th><th>process</th><th>state</th><th>failures in a row</th>"
            "<th>last failure</th><th>probe from</th><th>changed</th></tr></thead><tbody>{}</tbody></table>", rows)

    @admin.display(description="credential")
    def credential_state(self, provider: Provider) -> str:
        return "set" if provider.credential else "not set"


class ModelPriceInline(admin.TabularInline):
    model = ModelPrice
    extra = 0
    can_delete = False
    ordering = ("-effective_from", "-id")
    fields = ("effective_from", "input_price_per_million", "cached_input_price_per_million",
              "output_price_per_million", "cache_write_price_per_million", "batch_discount_percent")
    readonly_fields = fields
    verbose_name_plural = "price history (newest first)"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class DeploymentInline(admin.TabularInline):
    model = Deployment
    extra = 0
    fields = ("provider", "upstream_id", "region", "weight", "rpm", "tpm", "input_price_per_million",
              "cached_input_price_per_million", "output_price_per_million", "is_active")
    verbose_name_plural = ("deployments (empty: the model's own provider serves it; otherwise these do, picked by "
                           "the pool strategy)")


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    form = ModelForm
    list_display = ("name", "upstream_id", "provider", "mode", "tier", "input_price_per_million",
                    "cached_input_price_per_million", "output_price_per_million", "cache_write_price_per_million",
                    "batch_discount_percent", "is_free", "is_active")
    list_filter = ("provider", "tier", "mode", "is_free", "is_active", "supports_tools", "supports_vision",
                   "supports_json_schema", "supports_reasoning")
    list_select_related = ("provider",)
    search_fields = ("name", "upstream_id")
    readonly_fields = ("pool_state", "created_at", "updated_at")
    inlines = [DeploymentInline, ModelPriceInline]

    @admin.display(description="deployments now")
    def pool_state(self, model: Model) -> str:
        """Each deployment's live state, as every gateway process shares it through Redis."""
        deployments = list(model.deployments.select_related("provider")) if model.pk else []
        if not deployments:
            return "no deployments: the model's own provider serves every request"
        if not settings.REDIS_URL:
            return ("shared only through Redis (REDIS_URL): without it each gateway process keeps its own "
                    "in flight, cooldowns and latency")
        try:
            live = pool_state_read(settings.REDIS_URL, [d.pk for d in deployments],
                                   live_seconds=settings.POOL_SYNC_INTERVAL * 4 + 1)
        except OSError as exc:
            return f"Redis did not answer: {exc}"
        circuits: dict[int, list[ProviderCircuit]] = {}
        for circuit in ProviderCircuit.objects.filter(deployment__in=deployments):
            circuits.setdefault(circuit.deployment_id, []).append(circuit)
        rows = []
        for d in deployments:
            state = live.get(d.pk) or {}
            until = state.get("cooling_until")
            latency = state.get("latency_ms")
            rows.append((d.label, "yes" if d.is_active else "no", state.get("in_flight", 0),
                         datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if until else "-",
                         f"{latency:.1f} ms" if latency is not None else "-", state.get("sent_this_minute", 0),
                         _circuit_summary(circuits.get(d.pk, []))))
        body = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows)
        return format_html(
            "<table><thead><tr><th>deployment</th><th>active</th><th>in flight</th><th>cooling down until</th>"
            "<th>recent latency</th><th>requests this minute</th><th>circuit</th></tr></thead><tbody>{}</tbody>"
            "</table>", body)

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if change and "is_active" in form.changed_data and not obj.is_active:
            rules = rules_using(obj)
            if rules:
                self.message_user(request, format_html(
                    "{} is deactivated, and active routing rules use it: {}. Their requests now go to their "
                    "other models (check those models' prices).", obj.name, ", ".join(rules)), messages.WARNING)

    def get_deleted_objects(self, objs, request):
        """Refuse models whose prices priced requests, before loading those requests.

        Request logs protect the price versions they were charged at; Django would load every
        such log only to list it as protected. Deactivate the model instead.
        """
        priced = Model.objects.filter(pk__in=[model.pk for model in objs]).filter(
            Exists(RequestLog.objects.filter(price__model=OuterRef("pk"))))
        protected = [format_html("Request logs charged at prices of {} (deactivate the model instead)", model)
                     for model in priced]
        if protected:
            return [], {}, set(), protected
        return super().get_deleted_objects(objs, request)


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "effective_from", "input_price_per_million", "cached_input_price_per_million",
                    "output_price_per_million", "cache_write_price_per_million", "batch_discount_percent")
    list_filter = ("model",)
    list_select_related = ("model",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
