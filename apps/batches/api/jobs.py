"""Map-reduce jobs: many prompts in parallel, then one answer over their answers.

    POST /v1/jobs/map-reduce   {"items": [...], "map_prompt": "... {item} ...",
                                "reduce_prompt": "... {results} ...", "model"?: "auto",
                                "max_tokens"?, "completion_window"?: "24h", "metadata"?}
    GET  /v1/jobs              ?limit=&after=
    GET  /v1/jobs/{id}         status, counts and, once completed, the final answer and each
                               item's answer (or error)
    POST /v1/jobs/{id}/cancel

Statuses and counts follow a batch's; the map answers are also in ``output_file_id`` and
failed items in ``error_file_id``, as for a batch.
"""

from __future__ import annotations

import orjson

from apps.batches.api.batches import batch_object
from apps.batches.api.common import json_body, json_response, limit_param, list_page, tenant_endpoint
from apps.batches.models import BatchJob
from apps.batches.selectors import job_get, job_lines, jobs_list
from apps.batches.services import job_cancel, map_reduce_create
from apps.core.completions import completion_text

MAP_REDUCE = BatchJob.Kind.MAP_REDUCE


def job_object(job: BatchJob, *, items: bool = False) -> dict:
    payload = batch_object(job)
    payload["object"] = "map_reduce_job"
    payload["model"] = job.params.get("model")
    payload["result"] = job.result
    if items:
        payload["items"] = [_item(index, custom_id, is_error, line)
                            for index, custom_id, is_error, line in job_lines(job).iterator(chunk_size=2000)]
    return payload


def _item(index: int, custom_id: str | None, is_error: bool, line: str) -> dict:
    parsed = orjson.loads(line)
    response = parsed.get("response") or {}
    body = response.get("body") or {}
    if is_error:
        error = parsed.get("error") or body.get("error") or {}
        return {"index": index, "custom_id": custom_id, "output": None, "error": error}
    content = completion_text(body)
    return {"index": index, "custom_id": custom_id, "output": content, "error": None}


@tenant_endpoint(("POST",))
def map_reduce(request, key):
    body = json_body(request)
    job = map_reduce_create(
        tenant=key.tenant, api_key=key, items=body.get("items"), map_prompt=body.get("map_prompt"),
        reduce_prompt=body.get("reduce_prompt"), model=body.get("model", "auto"), max_tokens=body.get("max_tokens"),
        completion_window=body.get("completion_window", "24h"), metadata=body.get("metadata"))
    return json_response(job_object(job))


@tenant_endpoint(("GET",))
def jobs(request, key):
    limit = limit_param(request)
    rows = jobs_list(tenant_id=key.tenant_id, kind=MAP_REDUCE, after=request.GET.get("after"), limit=limit + 1)
    return json_response(list_page(rows, limit, job_object))


@tenant_endpoint(("GET",))
def job_detail(request, key, job_id: str):
    job = job_get(tenant_id=key.tenant_id, job_id=job_id, kind=MAP_REDUCE)
    return json_response(job_object(job, items=job.status == BatchJob.Status.COMPLETED))


@tenant_endpoint(("POST",))
def job_cancel_view(request, key, job_id: str):
    job = job_cancel(job_get(tenant_id=key.tenant_id, job_id=job_id, kind=MAP_REDUCE))
    return json_response(job_object(job))
