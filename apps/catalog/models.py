"""Providers, the models they serve, and the price versions of each model."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.utils import timezone

from apps.core.fields import EncryptedTextField

_PRICE = {"max_digits": 14, "decimal_places": 6, "validators": [MinValueValidator(Decimal("0"))]}
_CACHE_READ_HELP = ("USD per 1M input tokens read from the provider's prompt cache (OpenAI's cached_tokens, "
                    "Anthropic's cache_read_input_tokens).")
_CACHE_WRITE_HELP = ("USD per 1M input tokens written to the provider's prompt cache (Anthropic's "
                     "cache_creation_input_tokens). Empty: the input price.")
_DISCOUNT = {
    "max_digits": 5, "decimal_places": 2, "default": Decimal("0"),
    "validators": [MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("100"))],
}
_UNPRICED = ("Give the model an input or an output price per 1M tokens, or mark it free: with neither, its "
             "requests would bill nothing.")
_API_VERSION = re.compile(r"v1|preview|\d{4}-\d{2}-\d{2}(-preview)?")
_DISCOUNT_HELP = "Percent taken off every price for lines of batch jobs (OpenAI's Batch API gives 50)."
_CAPABILITY_HELP = ("Whether the model takes it. A request that {} skips a model without it for the next one in "
                    "its chain (400 model_capability_missing when none has it).")


_BASE_URL_HELP = (
    "OpenAI-compatible and simulated: up to and including /v1 (https://api.openai.com/v1). "
    "Anthropic: https://api.anthropic.com/v1. "
    "Azure OpenAI: the resource's endpoint, with no path (https://RESOURCE.openai.azure.com). "
    "Google Gemini: https://generativelanguage.googleapis.com/v1beta. "
    "Vertex AI: the location's endpoint, with no path (https://us-central1-aiplatform.googleapis.com; "
    "https://aiplatform.googleapis.com for the global location). "
    "Amazon Bedrock: https://bedrock-runtime.REGION.amazonaws.com (the region is signed for).")
_CREDENTIAL_HELP = (
    "Encrypted at rest. OpenAI-compatible: the API key, sent as Authorization: Bearer. Anthropic: the API key "
    "(x-api-key). Azure OpenAI: the resource's key (api-key). Google Gemini: the API key (x-goog-api-key). "
    "Vertex AI: the service account's JSON key, exchanged for OAuth access tokens. "
    "Amazon Bedrock: ACCESS_KEY_ID:SECRET_ACCESS_KEY (or ...:SESSION_TOKEN), requests signed with AWS SigV4.")
_API_VERSION_HELP = (
    "Azure OpenAI only. Empty or v1: Azure's v1 API ({base}/openai/v1/chat/completions, the model's upstream id "
    "in the body); preview: the same with api-version=preview; a dated version such as 2024-10-21: "
    "{base}/openai/deployments/{upstream id}/chat/completions?api-version=2024-10-21 (the model's upstream id "
    "is its deployment's name).")
# Kinds whose base URL is the host alone: the protocol adds the whole path.
_HOST_ONLY_KINDS = ("azure", "bedrock", "vertex")
_PROJECT_HELP = "Vertex AI only: the Google Cloud project. Empty: the service-account key's project_id."
_LOCATION_HELP = "Vertex AI only: the location (region) of the endpoint, such as us-central1 or global."
_GOOGLE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class Provider(models.Model):
    """An upstream that speaks an API the gateway knows.

    ``openai`` and ``simulated`` providers take ``/chat/completions``; ``anthropic`` ones take
    ``/messages`` (Anthropic's Messages API, with ``x-api-key``), and serve only
    ``/v1/messages`` requests, which reach them byte for byte. ``azure`` (Azure OpenAI) and
    ``gemini`` (Google's Gemini API), ``vertex`` (Gemini models on Vertex AI, with a
    service account's OAuth tokens) and ``bedrock`` (Amazon Bedrock's Converse API, signed with
    AWS SigV4) take the chat form through their own protocols
    (``apps.providers.protocols``), from every door.
    """

    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible"
        ANTHROPIC = "anthropic", "Anthropic Messages API"
        AZURE = "azure", "Azure OpenAI"
        GEMINI = "gemini", "Google Gemini API"
        VERTEX = "vertex", "Google Vertex AI (Gemini models)"
        BEDROCK = "bedrock", "Amazon Bedrock (Converse API)"
        SIMULATED = "simulated", "Simulated (built in)"

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.OPENAI)
    base_url = models.URLField(max_length=500, help_text=_BASE_URL_HELP)
    credential = EncryptedTextField(blank=True, default="", help_text=_CREDENTIAL_HELP)
    api_version = models.CharField(max_length=40, blank=True, default="", help_text=_API_VERSION_HELP)
    project = models.CharField(max_length=63, blank=True, default="", help_text=_PROJECT_HELP)
    location = models.CharField(max_length=63, blank=True, default="", help_text=_LOCATION_HELP)
    responses_api = models.BooleanField(
        default=False, verbose_name="serves the Responses API",
        help_text="OpenAI-compatible only: the provider serves OpenAI's /responses itself, so /v1/responses "
                  "requests reach it as they came (the model id swapped) instead of translated to chat.")
    timeout_seconds = models.FloatField(default=60.0, validators=[MinValueValidator(0.1)])
    max_concurrency = models.PositiveIntegerField(default=100, help_text="In-flight requests per process.")
    batch_api = models.BooleanField(
        default=False, help_text="Send batch jobs here through the provider's own Batch API (OpenAI's Files and "
                                 "Batches), at its batch price, instead of line by line at the live price.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        if self.api_version and self.kind != self.Kind.AZURE:
            errors["api_version"] = "Only Azure OpenAI providers take an API version; leave it empty."
        if self.api_version and not _API_VERSION.fullmatch(self.api_version):
            errors["api_version"] = "An API version is v1, preview or a date such as 2024-10-21 (optionally -preview)."
        if self.responses_api and self.kind not in (self.Kind.OPENAI, self.Kind.SIMULATED):
            errors["responses_api"] = "Only an OpenAI-compatible (or simulated) provider serves the Responses API here."
        if self.kind in _HOST_ONLY_KINDS and self.base_url and urlsplit(self.base_url).path.strip("/"):
            errors["base_url"] = ("An Azure OpenAI, Vertex AI or Amazon Bedrock base URL is the endpoint with no "
                                  "path, such as https://RESOURCE.openai.azure.com, "
                                  "https://LOCATION-aiplatform.googleapis.com or "
                                  "https://bedrock-runtime.REGION.amazonaws.com")
        if self.batch_api and self.kind not in (self.Kind.OPENAI, self.Kind.SIMULATED):
            errors["batch_api"] = "Only OpenAI-compatible and simulated providers serve OpenAI's Batch API."
        if self.kind == self.Kind.BEDROCK and self.credential and self.credential.count(":") not in (1, 2):
            errors["credential"] = "A Bedrock credential is ACCESS_KEY_ID:SECRET_ACCESS_KEY, or ...:SESSION_TOKEN."
        errors |= self._vertex_errors()
        if errors:
            raise ValidationError(errors)

    def _vertex_errors(self) -> dict[str, str]:
        """What a Vertex AI provider lacks (its location, its project, a service-account key),
        or another kind has that only Vertex takes."""
        errors = {}
        if self.kind != self.Kind.VERTEX:
            for name in ("project", "location"):
                if getattr(self, name):
                    errors[name] = "Only Vertex AI providers take a project and a location; leave it empty."
            return errors
        for name in ("project", "location"):
            if getattr(self, name) and not _GOOGLE_NAME.fullmatch(getattr(self, name)):
                errors[name] = "Lower-case letters, digits and hyphens (such as my-project or us-central1)."
        if not self.location:
            errors["location"] = "A Vertex AI provider needs its location, such as us-central1 or global."
        key: dict = {}
        if self.credential:
            try:
                key = json.loads(self.credential)
            except ValueError:
                key = None
            if not isinstance(key, dict) or key.get("type") != "service_account" or not all(
                    isinstance(key.get(name), str) for name in ("client_email", "private_key", "token_uri")):
                errors["credential"] = ('A Vertex AI credential is a service account\'s JSON key ("type": '
                                        '"service_account", with client_email, private_key and token_uri).')
                key = {}
        if not self.project and not key.get("project_id") and "credential" not in errors:
            errors["project"] = "Name the project: the service-account key gives none."
        return errors


class ProviderCircuit(models.Model):
    """A gateway process's circuit breaker for one model of a provider, as that process last
    reported it.

    Each process keeps its own breakers in memory (``apps.providers.breaker``), one per provider,
    model and deployment, and writes a row here on every transition, so the admin shows which processes
    have stopped sending to which model. A process removes its rows when it shuts down.
    """

    class State(models.TextChoices):
        CLOSED = "closed", "closed"
        OPEN = "open", "open"
        HALF_OPEN = "half_open", "half-open (probing)"

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="circuits")
    model = models.ForeignKey("Model", on_delete=models.CASCADE, related_name="circuits")
    deployment = models.ForeignKey("Deployment", on_delete=models.CASCADE, related_name="circuits", null=True,
                                   blank=True, help_text="The deployment of a pooled model; empty: the model's own")
    process = models.CharField(max_length=100, help_text="host:pid of the gateway process")
    state = models.CharField(max_length=10, choices=State.choices)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_failure = models.TextField(blank=True, default="")
    retry_at = models.DateTimeField(null=True, blank=True, help_text="When an open circuit lets a probe through")
    changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["provider", "model__name", "process"]
        constraints = [models.UniqueConstraint(fields=["provider", "model", "deployment", "process"],
                                               nulls_distinct=False, name="circuit_per_deployment_per_process")]

    def __str__(self) -> str:
        return f"{self.provider_id}/{self.model_id} @ {self.process}: {self.state}"


class Model(models.Model):
    """A model exposed under ``name`` and called upstream as ``upstream_id``.

    The prices here are the ones in force; every change is recorded as a new
    :class:`ModelPrice` version, and a request's cost is frozen on its usage row, so a price
    change never rewrites past costs.
    """

    class Tier(models.TextChoices):
        SIMPLE = "simple", "Simple"
        MODERATE = "moderate", "Moderate"
        COMPLEX = "complex", "Complex"

    class Mode(models.TextChoices):
        CHAT = "chat", "Chat"
        EMBEDDING = "embedding", "Embedding"

    class PoolStrategy(models.TextChoices):
        WEIGHTED = "weighted", "Weighted (random by weight)"
        LEAST_BUSY = "least_busy", "Least busy (fewest requests in flight)"
        LOWEST_LATENCY = "lowest_latency", "Lowest latency (moving average)"
        MOST_HEADROOM = "most_headroom", "Most headroom (rate limits left)"

    name = models.CharField(max_length=200, unique=True, help_text="The name clients ask for.")
    upstream_id = models.CharField(max_length=200, help_text="The model id the provider knows.")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    mode = models.CharField(max_length=20, choices=Mode.choices, default=Mode.CHAT)
    input_price_per_million = models.DecimalField(**_PRICE, default=Decimal("0"))
    cached_input_price_per_million = models.DecimalField(**_PRICE, default=Decimal("0"), help_text=_CACHE_READ_HELP)
    output_price_per_million = models.DecimalField(**_PRICE, default=Decimal("0"))
    cache_write_price_per_million = models.DecimalField(**_PRICE, null=True, blank=True, help_text=_CACHE_WRITE_HELP)
    batch_discount_percent = models.DecimalField(**_DISCOUNT, help_text=_DISCOUNT_HELP)
    context_window = models.PositiveIntegerField(
        default=128000, validators=[MinValueValidator(1)],
        help_text="Tokens of prompt and answer together. A request whose prompt and answer (its max_tokens, else "
        "this model's max output) would not fit skips this model for the next one in its chain.")
    max_output_tokens = models.PositiveIntegerField(default=16384, help_text="Tokens an answer may take at most.")
    supports_tools = models.BooleanField(
        default=True, verbose_name="tools", help_text=_CAPABILITY_HELP.format("offers tools (function calling)"))
    supports_vision = models.BooleanField(
        default=True, verbose_name="image inputs", help_text=_CAPABILITY_HELP.format("has an image in a message"))
    supports_json_schema = models.BooleanField(
        default=True, verbose_name="JSON schema output",
        help_text=_CAPABILITY_HELP.format("asks for a response_format of type json_schema"))
    supports_reasoning = models.BooleanField(
        default=True, verbose_name="reasoning effort",
        help_text=_CAPABILITY_HELP.format("sets reasoning_effort (reasoning.effort; Anthropic's thinking)"))
    tier = models.CharField(max_length=20, choices=Tier.choices, default=Tier.MODERATE)
    is_free = models.BooleanField(
        default=False, verbose_name="free",
        help_text="Bill nothing for this model (a local or internal one). Otherwise it needs an input or an output "
        "price: a model with neither would answer for free by mistake.")
    pool_strategy = models.CharField(
        max_length=20, choices=PoolStrategy.choices, default=PoolStrategy.WEIGHTED,
        help_text="How a request picks one of the model's deployments (when it has any).")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(is_free=True) | models.Q(input_price_per_million__gt=0)
                | models.Q(output_price_per_million__gt=0),
                name="catalog_model_priced_or_free",
                violation_error_message=_UNPRICED,
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        with transaction.atomic():
            super().save(*args, **kwargs)
            self.record_price_version()

    def price_tuple(self) -> tuple[Decimal, Decimal, Decimal]:
        """Input, cached input and output prices per 1M tokens."""
        return _price_tuple(self)[:3]

    def record_price_version(self) -> ModelPrice:
        """Add a price version when the current prices differ from the latest one."""
        latest = self.prices.order_by("-effective_from", "-id").first()
        if latest is not None and _price_tuple(latest) == _price_tuple(self) and (
                Decimal(latest.batch_discount_percent) == Decimal(self.batch_discount_percent)):
            return latest
        return ModelPrice.objects.create(
            model=self,
            input_price_per_million=self.input_price_per_million,
            cached_input_price_per_million=self.cached_input_price_per_million,
            output_price_per_million=self.output_price_per_million,
            cache_write_price_per_million=self.cache_write_price_per_million,
            batch_discount_percent=self.batch_discount_percent,
        )


class Deployment(models.Model):
    """One place a model is served: a provider (with its credential), the id it knows the model
    by, and what it can take. A model with active deployments is served by them, picked by the
    model's ``pool_strategy``; a model with none is served by its own provider, as one
    deployment would be."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="deployments")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="deployments")
    upstream_id = models.CharField(max_length=200, blank=True, default="",
                                   help_text="The model id this provider knows. Empty: the model's own.")
    region = models.CharField(max_length=100, blank=True, default="", help_text="A label, e.g. eu-west.")
    weight = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)],
                                         help_text="Share of traffic under the weighted strategy (and tie-breaks).")
    rpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="RPM",
                                      help_text="Requests per minute it takes. Empty: no limit known.")
    tpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="TPM",
                                      help_text="Tokens per minute it takes. Empty: no limit known.")
    input_price_per_million = models.DecimalField(**_PRICE, null=True, blank=True,
                                                  help_text="Empty: the model's input price.")
    cached_input_price_per_million = models.DecimalField(**_PRICE, null=True, blank=True,
                                                         help_text="Empty: the model's cached input price.")
    output_price_per_million = models.DecimalField(**_PRICE, null=True, blank=True,
                                                   help_text="Empty: the model's output price.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["model", "id"]

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        """How the deployment is named on usage rows and in the admin: provider, region."""
        provider = self.provider.name if self.provider_id else "?"
        return f"{provider}/{self.region}" if self.region else provider

    def clean(self) -> None:
        anthropic = Provider.Kind.ANTHROPIC
        if self.model_id and self.provider_id and (
                (self.provider.kind == anthropic) != (self.model.provider.kind == anthropic)):
            raise ValidationError({"provider": "A deployment's provider must speak the same API as the model's own "
                                               "(Anthropic's Messages API, or OpenAI's chat completions)."})


class ModelPrice(models.Model):
    """One price version of a model, in force from ``effective_from``. Never edited."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="prices")
    input_price_per_million = models.DecimalField(**_PRICE)
    cached_input_price_per_million = models.DecimalField(**_PRICE, help_text=_CACHE_READ_HELP)
    output_price_per_million = models.DecimalField(**_PRICE)
    cache_write_price_per_million = models.DecimalField(**_PRICE, null=True, blank=True, help_text=_CACHE_WRITE_HELP)
    batch_discount_percent = models.DecimalField(**_DISCOUNT, help_text=_DISCOUNT_HELP)
    effective_from = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["model", "-effective_from"]
        get_latest_by = "effective_from"

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d %H:%M}"

    def price_tuple(self) -> tuple[Decimal, Decimal, Decimal]:
        """Input, cached input and output prices per 1M tokens."""
        return _price_tuple(self)[:3]

    def cost(self, *, input_tokens: int, cached_tokens: int, output_tokens: int,
             cache_write_tokens: int = 0, batch: bool = False) -> Decimal:
        """Exact cost in USD: input read from the prompt cache (``cached_tokens``), input written to
        it (``cache_write_tokens``), the rest of the input, and output, each at its price, less the
        batch discount for a line of a batch job. ``input_tokens`` counts every input token."""
        input_price = Decimal(self.input_price_per_million)
        write_price = input_price if self.cache_write_price_per_million is None else Decimal(
            self.cache_write_price_per_million)
        uncached = max(input_tokens - cached_tokens - cache_write_tokens, 0)
        total = (
            uncached * input_price
            + cached_tokens * Decimal(self.cached_input_price_per_million)
            + cache_write_tokens * write_price
            + output_tokens * Decimal(self.output_price_per_million)
        )
        if batch and self.batch_discount_percent:
            total = total * (100 - Decimal(self.batch_discount_percent)) / 100
        return total / Decimal(1_000_000)


def _price_tuple(row) -> tuple[Decimal, Decimal, Decimal, Decimal | None]:
    """Every price of a model or price version, the cache-write one included (None: the input price)."""
    write = row.cache_write_price_per_million
    return (
        Decimal(row.input_price_per_million),
        Decimal(row.cached_input_price_per_million),
        Decimal(row.output_price_per_million),
        None if write is None else Decimal(write),
    )
