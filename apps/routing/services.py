"""The global prior of every model that learned rules route to, from every tenant's feedback."""

from __future__ import annotations

from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from apps.routing.models import ModelPrior, RouteOutcome
from apps.usage.models import Feedback

PRIOR_MIN_TENANTS = 2  # a prior is never one tenant's own figure
PRIOR_WINDOW = timedelta(days=30)


def priors_refresh(*, min_tenants: int = PRIOR_MIN_TENANTS, window: timedelta = PRIOR_WINDOW) -> int:
    """Rewrite :class:`ModelPrior` from the scored route outcomes of the last ``window``: per model,
    the mean over tenants of each tenant's mean outcome, for models scored by at least
    ``min_tenants`` tenants. Returns the number of priors kept."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT model_name, avg(tenant_mean), sum(n), count(*) FROM ("
            "  SELECT tenant_id, model_name, avg(score) AS tenant_mean, count(*) AS n FROM routing_routeoutcome"
            "  WHERE score IS NOT NULL AND created_at >= %s GROUP BY tenant_id, model_name"
            ") per_tenant GROUP BY model_name HAVING count(*) >= %s",
            [timezone.now() - window, min_tenants])
        rows = cursor.fetchall()
    now = timezone.now()
    with transaction.atomic():
        ModelPrior.objects.exclude(model_name__in=[row[0] for row in rows]).delete()
        for name, score, outcomes, tenants in rows:
            ModelPrior.objects.update_or_create(model_name=name, defaults={
                "score": float(score), "outcomes": int(outcomes), "tenants": int(tenants), "updated_at": now})
    return len(rows)


def outcomes_score(outcomes, *, score: float, by: str) -> int:
    """An operator's grade of learned routes' answers (the admin's actions): each outcome's score,
    and a feedback row as ``POST /v1/feedback`` would keep (a later grade replaces it)."""
    rows = list(outcomes.select_related(None).values_list("pk", "tenant_id", "request_id", "model_name"))
    with transaction.atomic():
        for _pk, tenant_id, request_id, model_name in rows:
            Feedback.objects.update_or_create(
                tenant_id=tenant_id, request_id=request_id, kind=Feedback.Kind.OUTCOME,
                defaults={"score": score, "comment": f"graded in the admin by {by}"[:4000], "api_key": None,
                          "model_used": model_name, "action": "admin grade", "created_at": timezone.now()})
        RouteOutcome.objects.filter(pk__in=[row[0] for row in rows]).update(score=score)
    return len(rows)
