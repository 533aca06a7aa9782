"""Reads of files and jobs, always inside one tenant: another tenant's ids are simply not found.
Only :func:`jobs_stale`, beat's resumer's read, spans every tenant."""

from __future__ import annotations

import orjson
from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.batches.models import BatchJob, BatchLine, File
from apps.core.completions import completion_text
from apps.core.errors import BadRequest, NotFound

MAX_PAGE = 10_000


def file_get(*, tenant_id: int, file_id: str) -> File:
    file = File.objects.filter(tenant_id=tenant_id, pk=file_id).first()
    if file is None:
        raise NotFound(f"No such file: '{file_id}'.", param="file_id", code="file_not_found")
    return file


def files_list(*, tenant_id: int, purpose: str | None = None, after: str | None = None,
               limit: int = MAX_PAGE) -> list[File]:
    """Newest first; ``after`` is the id of the last file of the previous page."""
    files = File.objects.filter(tenant_id=tenant_id)
    if purpose:
        files = files.filter(purpose=purpose)
    return list(_page(files, File, tenant_id, after, limit))


def job_get(*, tenant_id: int, job_id: str, kind: str = BatchJob.Kind.BATCH) -> BatchJob:
    job = BatchJob.objects.filter(tenant_id=tenant_id, pk=job_id, kind=kind).first()
    if job is None:
        noun = "batch" if kind == BatchJob.Kind.BATCH else "job"
        raise NotFound(f"No such {noun}: '{job_id}'.", param=f"{noun}_id", code=f"{noun}_not_found")
    return job


def jobs_list(*, tenant_id: int, kind: str = BatchJob.Kind.BATCH, after: str | None = None,
              limit: int = 20) -> list[BatchJob]:
    jobs = BatchJob.objects.filter(tenant_id=tenant_id, kind=kind)
    return list(_page(jobs, BatchJob, tenant_id, after, limit))


def _page(rows: QuerySet, model, tenant_id: int, after: str | None, limit: int) -> QuerySet:
    rows = rows.order_by("-created_at", "-pk")
    if after:
        anchor = model.objects.filter(tenant_id=tenant_id, pk=after).values("created_at", "pk").first()
        if anchor is None:
            raise BadRequest(f"'after' names no object of yours: '{after}'.", param="after")
        rows = rows.filter(created_at__lte=anchor["created_at"]).exclude(
            created_at=anchor["created_at"], pk__gte=anchor["pk"])
    return rows[:limit]


def job_lines(job: BatchJob, *, errors: bool | None = None) -> QuerySet:
    """A job's answered lines in input order, as values (iterate with ``.iterator()``)."""
    lines = BatchLine.objects.filter(job=job)
    if errors is not None:
        lines = lines.filter(is_error=errors)
    return lines.order_by("index").values_list("index", "custom_id", "is_error", "line")


def jobs_active_for_tenant(*, tenant_id: int) -> QuerySet:
    return BatchJob.objects.filter(tenant_id=tenant_id, status__in=BatchJob.ACTIVE)


def jobs_stale() -> list[str]:
    """Active jobs no live worker holds (never started, or their worker died), oldest first."""
    stale = BatchJob.objects.filter(status__in=BatchJob.ACTIVE).filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=timezone.now())).exclude(
        Q(status=BatchJob.Status.IN_PROGRESS) & ~Q(upstream_batch_id=""))  # polled by jobs_upstream_waiting
    return list(stale.order_by("created_at").values_list("pk", flat=True))


def jobs_upstream_waiting() -> list[str]:
    """Jobs waiting on their provider's Batch API (the id is saved) that no live worker holds."""
    waiting = BatchJob.objects.filter(status=BatchJob.Status.IN_PROGRESS).exclude(upstream_batch_id="").filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=timezone.now()))
    return list(waiting.order_by("created_at").values_list("pk", flat=True))


def lines_answered(job_id: str, first: int, last: int) -> set[int]:
    """Which lines of a job, between two indexes, are already answered (a resumed run skips them)."""
    return set(BatchLine.objects.filter(job_id=job_id, index__gte=first, index__lte=last)
               .values_list("index", flat=True))


def map_answers(job_id: str) -> list[str]:
    """The texts of a map-reduce job's answered map calls, in input order."""
    answers = []
    for line in BatchLine.objects.filter(job_id=job_id, is_error=False).order_by("index").values_list(
            "line", flat=True).iterator(chunk_size=2000):
        body = orjson.loads(line)["response"]["body"]
        answers.append(completion_text(body))
    return answers
