"""Routing rules, their ordered fallbacks, and the complexity classifier's phrases."""

from __future__ import annotations

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from pgvector.django import VectorField

from apps.catalog.models import Model


class RoutingRule(models.Model):
    """Send matching requests to ``target``; on failure, try the fallbacks in order.

    A rule is global (no tenant) or belongs to one tenant; tenant rules are tried before
    global ones, each group by ascending ``priority``. Empty conditions match anything.
    """

    name = models.CharField(max_length=200)
    tenant = models.ForeignKey(
        "tenants.Tenant", null=True, blank=True, on_delete=models.CASCADE, related_name="routing_rules",
        help_text="Empty: applies to every tenant.",
    )
    priority = models.IntegerField(default=100, help_text="Lower runs first.")
    match_model = models.CharField(
        max_length=200, blank=True, default="auto", help_text="Requested model or alias, 'auto', or empty for any."
    )
    match_tier = models.CharField(max_length=20, choices=Model.Tier.choices, blank=True, default="")
    min_prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    max_prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    match_tags = models.JSONField(
        default=list, blank=True, help_text='Metadata tags that must all be present, e.g. ["batch", "internal"].'
    )
    target = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="+")
    weight = models.PositiveIntegerField(default=100, help_text="Share among rules of equal priority.")
    learned = models.BooleanField(
        default=False, db_default=False, verbose_name="learned routing",
        help_text="Choose among the target and its fallbacks, per prompt, the cheapest model expected to keep "
        "the quality target, from the tenant's feedback on similar prompts (POST /v1/feedback).")
    quality_target = models.FloatField(
        default=0.95, db_default=0.95, validators=[MinValueValidator(0.5), MaxValueValidator(1.0)],
        help_text="Learned routing: keep at least this share of the best candidate's expected quality (0.5-1).")
    explore_share = models.FloatField(
        default=0.05, db_default=0.05, validators=[MinValueValidator(0.0), MaxValueValidator(0.5)],
        help_text="Learned routing: share of requests sent to the candidate the router knows least about, "
        "so that it keeps learning (0-0.5).")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority", "id"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """The target answers chat requests and is not also one of the rule's fallbacks."""
        target = _model_or_none(self, "target")
        if target is None:
            return
        if target.mode != Model.Mode.CHAT:
            raise ValidationError({"target": f"{target} is an {target.get_mode_display().lower()} model: "
                                             "rules route chat requests, so the target must be a chat model."})
        if self.pk is not None and self.fallbacks.filter(model_id=target.pk).exists():
            raise ValidationError({"target": f"{target} is already a fallback of this rule: remove that fallback "
                                             "first (a model cannot be tried twice)."})


class RoutingFallback(models.Model):
    """One step of a rule's ordered fallback chain."""

    rule = models.ForeignKey(RoutingRule, on_delete=models.CASCADE, related_name="fallbacks")
    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="+")
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["rule", "position", "id"]
        constraints = [models.UniqueConstraint(fields=["rule", "model"], name="routing_fallback_unique_model")]

    def __str__(self) -> str:
        return f"{self.position}: {self.model}"

    def clean(self) -> None:
        """A fallback is a chat model other than its rule's target."""
        model = _model_or_none(self, "model")
        if model is None:
            return
        if model.mode != Model.Mode.CHAT:
            raise ValidationError({"model": f"{model} is an {model.get_mode_display().lower()} model: a fallback "
                                            "answers the same chat request, so it must be a chat model."})
        rule = _model_or_none(self, "rule")
        if rule is not None and rule.target_id == model.pk:
            raise ValidationError({"model": f"{model} is the rule's target: a fallback is another model."})


class ComplexityIndicator(models.Model):
    """A phrase that marks a prompt as simple or complex for the classifier."""

    phrase = models.CharField(max_length=200)
    tier = models.CharField(
        max_length=20, choices=[(Model.Tier.SIMPLE, "Simple"), (Model.Tier.COMPLEX, "Complex")]
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["tier", "phrase"]
        constraints = [models.UniqueConstraint(fields=["phrase", "tier"], name="complexity_indicator_unique")]

    def __str__(self) -> str:
        return f"{self.phrase} ({self.tier})"


def _model_or_none(row: models.Model, field: str):
    """The row's related object, or None while the form has not set it."""
    try:
        return getattr(row, field)
    except ObjectDoesNotExist:
        return None


class RouteOutcome(models.Model):
    """A request a learned rule routed: its prompt's embedding, the model that answered, and
    (once the client sends ``POST /v1/feedback``) how good the answer was. The learned router of
    the tenant is these rows; no tenant reads another's."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    request_id = models.CharField(max_length=64)
    rule = models.ForeignKey(RoutingRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model_name = models.CharField(max_length=200)
    embedding = VectorField(dimensions=384)
    score = models.FloatField(null=True, blank=True)
    explored = models.BooleanField(default=False)
    # What the router expected when it chose: the chosen model's estimate, and the candidate it
    # rated best with that one's (the dashboard weighs the quality kept against the money saved).
    estimate = models.FloatField(null=True, blank=True)
    best_model = models.CharField(max_length=200, blank=True, default="", db_default="")
    best_estimate = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "request_id"], name="route_outcome_unique_request")]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="route_outcome_tenant_time"),
                   models.Index(fields=["created_at"], name="route_outcome_time")]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model_name}"


class ModelPrior(models.Model):
    """What every tenant's feedback says of a model, on average: the prior a tenant's learned
    router leans on for a model it has little feedback on. Written by the ``routing.priors_refresh``
    task from the scored :class:`RouteOutcome` rows of at least two tenants (each tenant weighs the
    same, however much feedback it sends); it holds no prompt and no tenant's own figure."""

    model_name = models.CharField(max_length=200, unique=True)
    score = models.FloatField(help_text="Mean of the tenants' mean outcomes, 0-1.")
    outcomes = models.PositiveIntegerField(help_text="Scored outcomes behind it.")
    tenants = models.PositiveIntegerField(help_text="Tenants behind it.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "model prior"

    def __str__(self) -> str:
        return f"{self.model_name} {self.score:.3f}"
