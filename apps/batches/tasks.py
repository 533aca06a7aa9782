"""Celery tasks: run a job (or resume it where its last worker stopped), and beat's resumer.

``batches.run`` is acknowledged late and requeued if its worker is lost; whatever happens to
the message, the job's lease decides who runs it, so a duplicate delivery does nothing.
``batches.resume`` (beat, every ``BATCH_RESUME_EVERY`` seconds) queues every active job no live
worker holds: jobs whose worker died, and jobs that waited for their tenant's previous job.
``batches.poll_upstream`` (beat, every ``BATCH_UPSTREAM_POLL_EVERY`` seconds) queues the jobs
waiting on their provider's Batch API: each run polls the provider once and, when its batch
has ended, finishes the job.
"""

from __future__ import annotations

import asyncio
import logging

from celery import shared_task

from apps.batches.models import BatchJob
from apps.batches.runner import job_run
from apps.batches.selectors import jobs_stale, jobs_upstream_waiting

logger = logging.getLogger(__name__)


@shared_task(name="batches.run", acks_late=True, reject_on_worker_lost=True)
def run(job_id: str) -> str:
    outcome = asyncio.run(job_run(job_id))
    logger.info("batch job %s: %s", job_id, outcome)
    if outcome not in ("held", "tenant_busy", "lease_lost", "gone", "submitted", "waiting"):
        # The tenant's next job (if any waited for this one) starts now rather than at the next resume.
        tenant_id = BatchJob.objects.filter(pk=job_id).values_list("tenant_id", flat=True).first()
        waiting = [pk for pk in jobs_stale() if BatchJob.objects.filter(pk=pk, tenant_id=tenant_id).exists()]
        if waiting:
            run.delay(waiting[0])
    return outcome


@shared_task(name="batches.resume")
def resume() -> int:
    stale = jobs_stale()
    for job_id in stale:
        run.delay(job_id)
    return len(stale)


@shared_task(name="batches.poll_upstream")
def poll_upstream() -> int:
    """Queue every job waiting on its provider's batch (beat, every ``BATCH_UPSTREAM_POLL_EVERY``)."""
    waiting = jobs_upstream_waiting()
    for job_id in waiting:
        run.delay(job_id)
    return len(waiting)
