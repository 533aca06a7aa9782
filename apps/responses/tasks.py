"""Stored responses' housekeeping on Celery: beat runs ``responses.prune`` with ``usage.prune``."""

from __future__ import annotations

from celery import shared_task

from apps.responses.services import responses_prune


@shared_task(name="responses.prune")
def prune(batch_size: int = 5000) -> int:
    return responses_prune(batch_size=batch_size)
