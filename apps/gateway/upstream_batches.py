"""A batch job sent to its provider's own Batch API (OpenAI's Files and Batches), so that the
provider bills its batch price and the usage rows record that price.

A job goes this way when every one of its lines is a chat request naming (not ``auto``) an
active, unpooled chat model whose provider has ``batch_api`` on, all on one provider; any other
job runs its lines live through the pipeline, at the live price.

    upstream_plan     the job's provider, or None (the job runs live)
    upstream_submit   the provider's JSONL (each model's upstream id), uploaded, and a batch
                      created with ``metadata.switchyard_job``; a batch already created for the
                      job (its worker died before saving the id) is found by that and adopted
    upstream_poll     None while the provider's batch runs; then the job's output and error lines
                      in the live path's format, and one usage row per answered line at the
                      model's batch price

These run on a worker thread (sync): they make a handful of HTTP calls per poll, not per line.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import openai
import orjson

from apps.batches.storage import lines_read
from apps.gateway.doors.batch_lines import request_id_for
from apps.gateway.snapshot import ModelInfo, ProviderInfo, snapshot_load
from apps.usage.models import RequestLog

logger = logging.getLogger(__name__)

RUNNING = ("validating", "in_progress", "finalizing", "cancelling")
ROUTE_REASON = "provider batch api"


def _line_id(job_id: str, index: int) -> str:
    return f"batch_req_{job_id.split('_', 1)[-1]}_{index}"


def _client(provider: ProviderInfo) -> openai.OpenAI:
    return openai.OpenAI(base_url=provider.base_url, api_key=provider.credential or "none",
                         timeout=max(provider.timeout, 30.0), max_retries=2)


def _eligible(raw: bytes, endpoint: str, models: dict[str, ModelInfo]) -> ModelInfo | None:
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(item, dict) or set(item) - {"custom_id", "method", "url", "body"}:
        return None  # eval, quality_target: features of the live path
    body = item.get("body")
    if (not isinstance(item.get("custom_id"), str) or item.get("method", "POST") != "POST"
            or item.get("url") != endpoint or not isinstance(body, dict) or body.get("stream")):
        return None
    model = models.get(body.get("model")) if isinstance(body.get("model"), str) else None
    if model is None or model.mode != "chat" or model.deployments or not model.provider.batch_api:
        return None
    return model


def upstream_plan(*, endpoint: str, storage_name: str) -> dict | None:
    """``{"provider_id": ...}`` when every line can go to one provider's Batch API, else None."""
    if endpoint != "/v1/chat/completions":
        return None
    models = snapshot_load().models
    provider_id = None
    for _index, _offset, raw in lines_read(storage_name):
        model = _eligible(raw, endpoint, models)
        if model is None or provider_id not in (None, model.provider.id):
            return None
        provider_id = model.provider.id
    return None if provider_id is None else {"provider_id": provider_id}


@dataclass
class _Provider:
    info: ProviderInfo
    models: dict[str, ModelInfo] = field(default_factory=dict)


def _provider(provider_id: int) -> _Provider | None:
    models = snapshot_load().models
    found = None
    for model in models.values():
        if model.provider.id == provider_id:
            found = found or _Provider(model.provider)
            found.models[model.name] = model
    return found


def upstream_submit(*, job_id: str, endpoint: str, storage_name: str, upstream: dict) -> str:
    """The provider's batch id for the job: one created now, or the one a previous worker created."""
    provider = _provider(upstream["provider_id"])
    if provider is None:
        raise RuntimeError("the job's provider is no longer active")
    client = _client(provider.info)
    for batch in client.batches.list(limit=100).data:
        if (batch.metadata or {}).get("switchyard_job") == job_id:
            return batch.id
    with tempfile.TemporaryFile() as spool:
        for _index, _offset, raw in lines_read(storage_name):
            item = orjson.loads(raw)
            body = dict(item["body"])
            body["model"] = provider.models[body["model"]].upstream_id
            spool.write(orjson.dumps({"custom_id": item["custom_id"], "method": "POST", "url": endpoint,
                                      "body": body}) + b"\n")
        spool.seek(0)
        uploaded = client.files.create(file=(f"{job_id}.jsonl", spool.read()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h",
                                  metadata={"switchyard_job": job_id})
    return batch.id


@dataclass
class UpstreamResult:
    """A finished provider batch, mapped back: the job's lines and their usage rows."""

    lines: list[tuple[int, str | None, bool, bytes]]
    rows: list[RequestLog]
    errors: dict | None = None

    def rows_write(self) -> None:
        RequestLog.objects.bulk_create(self.rows)


def _usage_row(*, job: dict, index: int, model: ModelInfo, status: int, body: dict, now: datetime) -> RequestLog:
    usage = body.get("usage") if status == 200 and isinstance(body.get("usage"), dict) else {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    cost = model.cost(prompt, cached, completion, batch=True) if usage else Decimal(0)
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return RequestLog(
        tenant_id=job["tenant_id"], api_key_id=job["api_key_id"], request_id=request_id_for(job["id"], index),
        endpoint=f"batch:{job['endpoint']}", requested_model=model.name, model_used=model.name, model_id=model.id,
        provider_id=model.provider.id, price_id=model.price_id, route_reason=ROUTE_REASON,
        input_tokens=prompt, cached_tokens=cached, output_tokens=completion, cost=cost, saved_cost=Decimal(0),
        status_code=status, error_code=str(error.get("code") or error.get("type") or "")[:64] if error else "",
        created_at=now)


def upstream_poll(*, job: dict, storage_name: str) -> UpstreamResult | None:
    """The job's lines once its provider batch has ended (None while it runs).

    ``job``: ``id``, ``tenant_id``, ``api_key_id``, ``endpoint``, ``upstream`` and
    ``upstream_batch_id``.
    """
    provider = _provider(job["upstream"]["provider_id"])
    if provider is None:
        raise RuntimeError("the job's provider is no longer active")
    client = _client(provider.info)
    batch = client.batches.retrieve(job["upstream_batch_id"])
    if batch.status in RUNNING:
        return None
    answers: dict[str, dict] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            for raw in client.files.content(file_id).content.splitlines():
                if raw.strip():
                    item = orjson.loads(raw)
                    if isinstance(item.get("custom_id"), str):
                        answers[item["custom_id"]] = item
    reason = (batch.errors.data[0].message if batch.errors and batch.errors.data
              else f"The provider's batch ended {batch.status}.")
    now = datetime.now(UTC)
    lines, rows = [], []
    for index, _offset, raw in lines_read(storage_name):
        item = orjson.loads(raw)
        custom_id, model = item["custom_id"], provider.models.get(item["body"]["model"])
        answer = answers.get(custom_id)
        line_id = _line_id(job["id"], index)
        response = (answer or {}).get("response")
        if not isinstance(response, dict) or model is None:
            error = (answer or {}).get("error") or {"code": f"provider_batch_{batch.status}", "message": reason}
            lines.append((index, custom_id, True, orjson.dumps({
                "id": line_id, "custom_id": custom_id, "response": None, "error": error})))
            continue
        status = int(response.get("status_code") or 500)
        body = response.get("body") if isinstance(response.get("body"), dict) else {}
        if status == 200 and body.get("model") == model.upstream_id:
            body["model"] = model.name
        lines.append((index, custom_id, status != 200, orjson.dumps({
            "id": line_id, "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id_for(job["id"], index), "body": body},
            "error": None})))
        rows.append(_usage_row(job=job, index=index, model=model, status=status, body=body, now=now))
    errors = batch.errors.model_dump() if batch.status == "failed" and batch.errors else None
    return UpstreamResult(lines, rows, errors)
