"""Admin for providers, models and their price history. Credentials are write-only."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from apps.catalog.models import Model, ModelPrice, Provider


class ProviderForm(forms.ModelForm):
    base_url = forms.URLField(max_length=500, assume_scheme="https", help_text="Up to and including /v1")
    credential = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Leave blank to keep the current credential.",
    )
    clear_credential = forms.BooleanField(required=False, help_text="Remove the stored credential.")

    class Meta:
        model = Provider
        fields = ("name", "kind", "base_url", "credential", "clear_credential", "timeout_seconds", "max_concurrency",
                  "is_active")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.initial["credential"] = ""  # never echo the stored secret into the page

    def clean_credential(self) -> str:
        new = self.cleaned_data.get("credential") or ""
        if not new and self.instance.pk:
            return Provider.objects.get(pk=self.instance.pk).credential
        return new

    def save(self, commit: bool = True):
        if self.cleaned_data.get("clear_credential"):
            self.instance.credential = ""
        return super().save(commit)


class ModelInline(admin.TabularInline):
    model = Model
    extra = 0
    show_change_link = True
    fields = ("name", "upstream_id", "mode", "tier", "input_price_per_million", "cached_input_price_per_million",
              "output_price_per_million", "is_active")


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ("name", "kind", "base_url", "credential_state", "timeout_seconds", "max_concurrency",
                    "is_active")
    list_filter = ("kind", "is_active")
    search_fields = ("name", "base_url")
    inlines = [ModelInline]

    @admin.display(description="credential")
    def credential_state(self, provider: Provider) -> str:
        return "set" if provider.credential else "not set"


class ModelPriceInline(admin.TabularInline):
    model = ModelPrice
    extra = 0
    can_delete = False
    ordering = ("-effective_from", "-id")
    fields = ("effective_from", "input_price_per_million", "cached_input_price_per_million",
              "output_price_per_million")
    readonly_fields = fields
    verbose_name_plural = "price history (newest first)"

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ("name", "upstream_id", "provider", "mode", "tier", "input_price_per_million",
                    "cached_input_price_per_million", "output_price_per_million", "is_active")
    list_filter = ("provider", "tier", "mode", "is_active")
    list_select_related = ("provider",)
    search_fields = ("name", "upstream_id")
    readonly_fields = ("created_at", "updated_at")
    inlines = [ModelPriceInline]


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "effective_from", "input_price_per_million", "cached_input_price_per_million",
                    "output_price_per_million")
    list_filter = ("model",)
    list_select_related = ("model",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
