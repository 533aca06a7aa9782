"""Stored responses' housekeeping on Celery: beat runs ``responses.prune`` with ``usage.prune``,
and ``responses.fail_stale`` every ``RESPONSES_BACKGROUND_STALE`` seconds."""

from __future__ import annotations

from celery import shared_task

from apps.responses.services import responses_prune, responses_stale_fail


@shared_task(name="responses.prune")
def prune(batch_size: int = 5000) -> int:
    return responses_prune(batch_size=batch_size)


@shared_task(name="responses.fail_stale")
def fail_stale() -> int:
    return responses_stale_fail()
