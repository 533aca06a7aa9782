"""The runner's writes: the job's lease, its status and answered lines, and the output and error
files at its end. Every write but the claim is guarded by the lease's token, so a worker that
lost the lease (another one runs the job now) writes nothing more: it gets :class:`LeaseLost`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.batches.models import BatchJob, BatchLine, File
from apps.batches.selectors import job_lines
from apps.batches.storage import jsonl_store
from apps.tenants.models import Tenant


def _now():
    return timezone.now()


class LeaseLost(Exception):
    """Another worker holds the job now: this one must stop without writing anything more."""


def job_claim(*, job_id: str, token: str) -> tuple[BatchJob | None, str]:
    """Take the job's lease: ``(job, "ok")``, or ``(None, why)`` with why one of ``gone``,
    ``finished``, ``held`` (a live worker has it) or ``tenant_busy`` (another job of the tenant
    runs: a tenant's jobs run one at a time so its concurrency limit holds across workers)."""
    now = _now()
    with transaction.atomic():
        job = BatchJob.objects.filter(pk=job_id).first()
        if job is None:
            return None, "gone"
        # Serialise claims per tenant: two workers claiming two jobs of one tenant take turns.
        Tenant.objects.select_for_update().filter(pk=job.tenant_id).first()
        job = BatchJob.objects.select_for_update().get(pk=job_id)
        if not job.is_active:
            return None, "finished"
        if job.lease_until is not None and job.lease_until > now and job.lease_token != token:
            return None, "held"
        busy = BatchJob.objects.filter(tenant_id=job.tenant_id, status__in=BatchJob.ACTIVE,
                                       lease_until__gt=now).exclude(pk=job.pk).exists()
        if busy and job.status != BatchJob.Status.CANCELLING:
            return None, "tenant_busy"
        job.lease_token = token
        job.lease_until = now + timedelta(seconds=settings.BATCH_LEASE_SECONDS)
        job.save(update_fields=["lease_token", "lease_until"])
    return job, "ok"


def job_heartbeat(*, job_id: str, token: str) -> tuple[str, object]:
    """Renew the lease; returns the job's status and expiry. Raises :class:`LeaseLost`."""
    until = _now() + timedelta(seconds=settings.BATCH_LEASE_SECONDS)
    updated = BatchJob.objects.filter(pk=job_id, lease_token=token).update(lease_until=until)
    if not updated:
        raise LeaseLost(job_id)
    return BatchJob.objects.filter(pk=job_id).values_list("status", "expires_at").get()


def job_release(*, job_id: str, token: str) -> None:
    BatchJob.objects.filter(pk=job_id, lease_token=token).update(lease_until=None, lease_token="")  # nosec B106


def _guarded(job_id: str, token: str):
    return BatchJob.objects.filter(pk=job_id, lease_token=token)


def job_status_set(*, job_id: str, token: str, status: str, **fields) -> None:
    stamp = {
        BatchJob.Status.IN_PROGRESS: "in_progress_at", BatchJob.Status.FINALIZING: "finalizing_at",
        BatchJob.Status.COMPLETED: "completed_at", BatchJob.Status.FAILED: "failed_at",
        BatchJob.Status.EXPIRED: "expired_at", BatchJob.Status.CANCELLED: "cancelled_at",
    }.get(status)
    if stamp:
        fields.setdefault(stamp, _now())
    with transaction.atomic():
        current = _guarded(job_id, token).select_for_update().values_list("status", flat=True).first()
        if current is None:
            raise LeaseLost(job_id)
        if current == BatchJob.Status.CANCELLING and status in (BatchJob.Status.IN_PROGRESS,
                                                                BatchJob.Status.FINALIZING):
            return  # a cancel arrived meanwhile: the runner sees it at its next heartbeat
        _guarded(job_id, token).update(status=status, **fields)


def upstream_begin(*, job_id: str, token: str, upstream: dict) -> dict | None:
    """Mark the job as going to its provider's Batch API, before anything is sent there: the
    job's ``upstream`` as it now stands (a previous worker's, if one got this far), or None when
    the job has already started answering lines live."""
    with transaction.atomic():
        job = _guarded(job_id, token).select_for_update().first()
        if job is None:
            raise LeaseLost(job_id)
        if job.upstream:
            return job.upstream
        if job.completed or job.failed or job.cursor_line:
            return None
        job.upstream = {**upstream, "submitted_at": _now().isoformat()}
        job.save(update_fields=["upstream"])
        return job.upstream


def upstream_update(*, job_id: str, token: str, **fields) -> dict:
    """Add ``fields`` to the job's ``upstream`` (its budget reservation, its settlement): the
    job's ``upstream`` as it now stands."""
    with transaction.atomic():
        job = _guarded(job_id, token).select_for_update().first()
        if job is None:
            raise LeaseLost(job_id)
        job.upstream = {**(job.upstream or {}), **fields}
        job.save(update_fields=["upstream"])
        return job.upstream


def upstream_batch_save(*, job_id: str, token: str, batch_id: str) -> None:
    """Keep the provider's batch id: from now on the job is polled, never submitted again."""
    if not _guarded(job_id, token).filter(upstream_batch_id="").update(upstream_batch_id=batch_id):
        if not _guarded(job_id, token).exists():
            raise LeaseLost(job_id)


def lines_record(*, job_id: str, token: str, lines: list[tuple[int, str | None, bool, bytes]],
                 cursor: tuple[int, int] | None, also=None) -> None:
    """Persist answered lines with the job's counts (and cursor) in one transaction, only while
    this worker still holds the lease: a line is answered once, whatever dies when. ``also`` (a
    callable) writes more in the same transaction (a provider batch's usage rows)."""
    completed = sum(1 for line in lines if not line[2])
    with transaction.atomic():
        changes = {"completed": F("completed") + completed, "failed": F("failed") + len(lines) - completed}
        if cursor is not None:
            changes["cursor_line"], changes["cursor_offset"] = cursor
        if not _guarded(job_id, token).update(**changes):
            raise LeaseLost(job_id)
        BatchLine.objects.bulk_create([
            BatchLine(job_id=job_id, index=index, custom_id=custom_id, is_error=is_error, line=line.decode())
            for index, custom_id, is_error, line in lines])
        if also is not None:
            also()


def job_files_write(job: BatchJob, *, extra_errors: Iterable[bytes] = ()) -> tuple[File | None, File | None]:
    """Write the output and error files from the answered lines, streamed in input order
    (``extra_errors`` appends lines, e.g. those left when the job expired)."""
    def lines(errors: bool):
        for _index, _custom_id, _is_error, line in job_lines(job, errors=errors).iterator(chunk_size=2000):
            yield line.encode()
        if errors:
            yield from extra_errors

    output = error = None
    if BatchLine.objects.filter(job=job, is_error=False).exists():
        output = jsonl_store(tenant=job.tenant, filename=f"{job.pk}_output.jsonl", lines=lines(False),
                             purpose=File.Purpose.BATCH_OUTPUT)
    error_lines = lines(True)
    first = next(error_lines, None)
    if first is not None:
        def chained():
            yield first
            yield from error_lines
        error = jsonl_store(tenant=job.tenant, filename=f"{job.pk}_error.jsonl", lines=chained(),
                            purpose=File.Purpose.BATCH_OUTPUT)
    return output, error
