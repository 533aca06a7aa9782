"""Writes for files and batch jobs. Views and the CLI call these; execution of a job's lines
lives in :mod:`apps.batches.runner`, its writes in :mod:`apps.batches.leases`.

Tenant scoping: every service takes the tenant (or reads the job through a tenant-scoped
selector first), so an id of another tenant is never touched.
"""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.batches.models import BatchJob, File
from apps.batches.selectors import file_get, jobs_active_for_tenant
from apps.batches.storage import file_store, files_storage, jsonl_store
from apps.batches.tasks import run
from apps.core.errors import BadRequest, Conflict, PayloadTooLarge

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
_WINDOW = re.compile(r"^(\d{1,4})([mhd])$")
_WINDOW_UNITS = {"m": 60, "h": 3600, "d": 86400}
MIN_WINDOW, MAX_WINDOW = 60, 7 * 86400


def _now():
    return timezone.now()


# --- files --------------------------------------------------------------------------------

def file_create(*, tenant, content, filename: str, purpose: str = File.Purpose.BATCH) -> File:
    """Store an uploaded file (any file-like object, copied to storage in chunks)."""
    if purpose != File.Purpose.BATCH:
        raise BadRequest("'purpose' must be 'batch' (the only purpose this gateway stores).", param="purpose")
    size = getattr(content, "size", None)
    if size is not None and size > settings.BATCH_FILE_MAX_BYTES:
        raise PayloadTooLarge(f"The file exceeds {settings.BATCH_FILE_MAX_BYTES} bytes.", param="file")
    if size == 0:
        raise BadRequest("The file is empty.", param="file")
    return file_store(tenant=tenant, content=content, filename=filename, purpose=purpose)


def file_delete(*, tenant_id: int, file_id: str) -> File:
    file = file_get(tenant_id=tenant_id, file_id=file_id)
    in_use = jobs_active_for_tenant(tenant_id=tenant_id).filter(
        Q(input_file_id=file.pk) | Q(output_file_id=file.pk)).exists()
    if in_use:
        raise Conflict(f"The file '{file_id}' is the input of a running batch; cancel it first.",
                       param="file_id", code="file_in_use")
    file.delete()
    transaction.on_commit(lambda: files_storage().delete(file.storage_name))
    return file


# --- jobs ---------------------------------------------------------------------------------

def completion_window_seconds(window) -> int:
    """OpenAI accepts only "24h"; any ``<n>m``, ``<n>h`` or ``<n>d`` from 1m to 7d is accepted here."""
    match = _WINDOW.match(window) if isinstance(window, str) else None
    seconds = int(match.group(1)) * _WINDOW_UNITS[match.group(2)] if match else 0
    if not MIN_WINDOW <= seconds <= MAX_WINDOW:
        raise BadRequest("'completion_window' must be like '24h' (from 1m to 7d).", param="completion_window")
    return seconds


def _metadata_check(metadata) -> dict | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > 16 or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items()):
        raise BadRequest("'metadata' must be an object of up to 16 string values (keys up to 64 characters, "
                         "values up to 512).", param="metadata")
    return metadata


def _job_queue(job: BatchJob) -> None:
    transaction.on_commit(lambda: run.delay(job.pk))


@transaction.atomic
def batch_create(*, tenant, api_key, input_file_id, endpoint, completion_window="24h", metadata=None) -> BatchJob:
    """A batch over an uploaded JSONL file; it starts validating at once on a worker."""
    if not isinstance(input_file_id, str) or not input_file_id:
        raise BadRequest("'input_file_id' is required.", param="input_file_id")
    if endpoint not in ENDPOINTS:
        raise BadRequest(f"'endpoint' must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
    window = completion_window_seconds(completion_window)
    metadata = _metadata_check(metadata)
    file = file_get(tenant_id=tenant.pk, file_id=input_file_id)
    if file.purpose != File.Purpose.BATCH:
        raise BadRequest(f"The file '{input_file_id}' has purpose '{file.purpose}', not 'batch'.",
                         param="input_file_id")
    now = _now()
    job = BatchJob.objects.create(
        tenant=tenant, api_key=api_key, kind=BatchJob.Kind.BATCH, endpoint=endpoint,
        completion_window=completion_window, metadata=metadata, input_file=file, created_at=now,
        expires_at=now + timedelta(seconds=window))
    _job_queue(job)
    return job


def _template_fill(template: str, name: str, value: str) -> str:
    placeholder = "{" + name + "}"
    return template.replace(placeholder, value) if placeholder in template else f"{template}\n\n{value}"


@transaction.atomic
def map_reduce_create(*, tenant, api_key, items, map_prompt, reduce_prompt, model="auto", max_tokens=None,
                      completion_window="24h", metadata=None) -> BatchJob:
    """A map-reduce job: ``map_prompt`` with ``{item}`` over every item in parallel, then
    ``reduce_prompt`` with ``{results}`` over the answers (hierarchically when they do not fit
    the model's context window)."""
    if not isinstance(items, list) or not items:
        raise BadRequest("'items' must be a non-empty list.", param="items")
    if len(items) > settings.BATCH_MAP_REDUCE_MAX_ITEMS:
        raise BadRequest(f"'items' may hold at most {settings.BATCH_MAP_REDUCE_MAX_ITEMS} items.", param="items")
    for name, value in (("map_prompt", map_prompt), ("reduce_prompt", reduce_prompt), ("model", model)):
        if not isinstance(value, str) or not value.strip():
            raise BadRequest(f"'{name}' must be a non-empty string.", param=name)
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                   or max_tokens < 1):
        raise BadRequest("'max_tokens' must be a positive integer.", param="max_tokens")
    window = completion_window_seconds(completion_window)
    metadata = _metadata_check(metadata)

    def lines():
        for index, item in enumerate(items):
            text = item if isinstance(item, str) else orjson.dumps(item).decode()
            body = {"model": model, "messages": [{"role": "user", "content": _template_fill(map_prompt, "item", text)}]}
            if max_tokens is not None:
                body["max_tokens"] = max_tokens
            yield orjson.dumps({"custom_id": f"item-{index}", "method": "POST", "url": "/v1/chat/completions",
                                "body": body})

    file = jsonl_store(tenant=tenant, filename="map-reduce-items.jsonl", lines=lines(), purpose=File.Purpose.BATCH)
    now = _now()
    job = BatchJob.objects.create(
        id=f"job_{secrets.token_hex(12)}", tenant=tenant, api_key=api_key, kind=BatchJob.Kind.MAP_REDUCE,
        endpoint="/v1/chat/completions", completion_window=completion_window, metadata=metadata,
        params={"model": model, "map_prompt": map_prompt, "reduce_prompt": reduce_prompt, "max_tokens": max_tokens},
        input_file=file, created_at=now, expires_at=now + timedelta(seconds=window))
    _job_queue(job)
    return job


def job_cancel(job: BatchJob) -> BatchJob:
    """Ask a job to stop: its worker notices within a second, keeps what is answered and writes
    the output and error files; a job not started yet is cancelled by the next worker to see it."""
    with transaction.atomic():
        job = BatchJob.objects.select_for_update().get(pk=job.pk)
        if job.status in (BatchJob.Status.CANCELLING, BatchJob.Status.CANCELLED):
            return job
        if not job.is_active:
            raise Conflict(f"Cannot cancel a job that is {job.status}.", code="batch_not_cancellable")
        job.status = BatchJob.Status.CANCELLING
        job.cancelling_at = _now()
        job.save(update_fields=["status", "cancelling_at"])
        if job.lease_until is None or job.lease_until < _now():
            _job_queue(job)
    return job
