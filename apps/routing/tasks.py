"""Learning off the request path: beat runs ``routing.priors_refresh`` every
``ROUTING_PRIORS_EVERY`` seconds (60); gateway processes read the priors with each tenant's router."""

from __future__ import annotations

from celery import shared_task

from apps.routing.services import priors_refresh


@shared_task(name="routing.priors_refresh")
def refresh_priors() -> int:
    return priors_refresh()
