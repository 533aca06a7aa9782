"""OpenAI's Batch API, per tenant.

    POST /v1/batches              {"input_file_id", "endpoint", "completion_window", "metadata"?}
    GET  /v1/batches              ?limit=&after=
    GET  /v1/batches/{id}
    POST /v1/batches/{id}/cancel
"""

from __future__ import annotations

from apps.batches.api.common import json_body, json_response, limit_param, list_page, tenant_endpoint, unix
from apps.batches.models import BatchJob
from apps.batches.selectors import job_get, jobs_list
from apps.batches.services import batch_create, job_cancel

_STAMPS = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
           "cancelling_at", "cancelled_at")


def batch_object(job: BatchJob) -> dict:
    payload = {
        "id": job.pk, "object": "batch", "endpoint": job.endpoint, "errors": job.errors,
        "input_file_id": job.input_file_id, "completion_window": job.completion_window, "status": job.status,
        "output_file_id": job.output_file_id, "error_file_id": job.error_file_id,
        "request_counts": {"total": job.total, "completed": job.completed, "failed": job.failed},
        "metadata": job.metadata,
    }
    payload.update({name: unix(getattr(job, name)) for name in _STAMPS})
    return payload


@tenant_endpoint(("GET", "POST"))
def batches(request, key):
    if request.method == "POST":
        body = json_body(request)
        job = batch_create(tenant=key.tenant, api_key=key, input_file_id=body.get("input_file_id"),
                           endpoint=body.get("endpoint"), completion_window=body.get("completion_window", "24h"),
                           metadata=body.get("metadata"))
        return json_response(batch_object(job))
    limit = limit_param(request)
    rows = jobs_list(tenant_id=key.tenant_id, after=request.GET.get("after"), limit=limit + 1)
    return json_response(list_page(rows, limit, batch_object))


@tenant_endpoint(("GET",))
def batch_detail(request, key, batch_id: str):
    return json_response(batch_object(job_get(tenant_id=key.tenant_id, job_id=batch_id)))


@tenant_endpoint(("POST",))
def batch_cancel(request, key, batch_id: str):
    job = job_cancel(job_get(tenant_id=key.tenant_id, job_id=batch_id))
    return json_response(batch_object(job))
