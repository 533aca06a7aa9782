"""Rollups on Celery: beat runs ``reporting.rollup`` every ``USAGE_ROLLUP_EVERY`` seconds (10)."""

from __future__ import annotations

from celery import shared_task

from apps.reporting.services import usage_rollup


@shared_task(name="reporting.rollup")
def rollup(max_rows: int = 200_000) -> int:
    return usage_rollup(max_rows=max_rows)
