"""Request log housekeeping on Celery: beat runs ``usage.prune`` every ``USAGE_PRUNE_EVERY`` s."""

from __future__ import annotations

from celery import shared_task

from apps.usage.services import usage_prune


@shared_task(name="usage.prune")
def prune(batch_size: int = 5000) -> int:
    return usage_prune(batch_size=batch_size)
