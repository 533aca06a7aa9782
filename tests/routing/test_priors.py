"""The global prior of each model: every tenant's feedback, each tenant weighing the same, written
by a real Celery worker; never one tenant's own figure, never older than its window."""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from apps.routing.models import ModelPrior, RouteOutcome
from apps.routing.tasks import refresh_priors
from apps.tenants.services import tenant_create


def _scored(tenant, model: str, scores: list[float], *, days_ago: float = 0) -> None:
    vector = [0.0] * 383 + [1.0]
    when = timezone.now() - timedelta(days=days_ago)
    for score in scores:
        RouteOutcome.objects.create(tenant=tenant, request_id=f"{model}-{RouteOutcome.objects.count()}",
                                    model_name=model, embedding=vector, score=score, created_at=when)


def test_a_real_worker_writes_each_models_prior_from_at_least_two_tenants(celery_worker, tenant_a, tenant_b):
    third = tenant_create(name="Initech", slug="initech")
    _scored(tenant_a, "sim-mini", [1.0] * 10)
    _scored(tenant_b, "sim-mini", [0.0, 0.0])
    _scored(tenant_b, "sim-mini", [1.0] * 50, days_ago=45)  # outside the window
    _scored(third, "sim-premium", [1.0, 1.0])  # one tenant's model: no prior
    RouteOutcome.objects.create(tenant=tenant_a, request_id="unscored", model_name="sim-premium",
                                embedding=[0.0] * 383 + [1.0])
    ModelPrior.objects.create(model_name="retired", score=0.9, outcomes=5, tenants=2)
    refresh_priors.delay()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and ModelPrior.objects.filter(model_name="retired").exists():
        assert celery_worker.poll() is None, "the worker died"
        time.sleep(0.2)
    priors = {p.model_name: (p.score, p.outcomes, p.tenants) for p in ModelPrior.objects.all()}
    assert priors == {"sim-mini": (0.5, 12, 2)}


def test_beat_refreshes_the_priors_every_minute():
    entry = settings.CELERY_BEAT_SCHEDULE["routing-priors"]
    assert entry == {"task": "routing.priors_refresh", "schedule": 60.0}
    assert refresh_priors.name == "routing.priors_refresh"
