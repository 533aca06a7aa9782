"""A batch job sent to its provider's own batch API, so that the provider bills its batch price
and the usage rows record that price: OpenAI's Files and Batches (:mod:`.openai`, for any
OpenAI-compatible provider) or Anthropic's Message Batches (:mod:`.anthropic`, for a native
Anthropic provider). The two differ only in their :class:`ProviderBatches`; what is sent,
resumed, mapped back and priced is this module's, and the budget reservation is :mod:`.spend`'s.

A job goes this way when every one of its lines is a chat request naming (not ``auto``) an
active, unpooled chat model whose provider has ``batch_api`` on, all on one provider; any other
job runs its lines live through the pipeline, at the live price.

    upstream_plan     the job's provider, or None (the job runs live)
    upstream_submit   each line as the provider's request (each model's upstream id; for
                      Anthropic the chat form translated to Messages params), and a batch
                      created; a batch already created for the job (its worker died before
                      saving the id) is found and adopted. A line the provider cannot take (a
                      chat request Anthropic's Messages API refuses) or the budget refused is
                      not sent: it is answered here at the end. Nothing to send: no batch.
    upstream_poll     None while the provider's batch runs; then the job's output and error lines
                      in the live path's format, and one usage row per answered line at the
                      model's batch price

These run on a worker thread (sync): they make a handful of HTTP calls per poll, not per line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import orjson
from django.db.models import Sum

from apps.batches.executor import NOTHING_SENT
from apps.batches.storage import lines_read
from apps.core.errors import BadRequest, BudgetExceeded, GatewayError
from apps.gateway.doors.batch_lines import request_id_for
from apps.gateway.snapshot import ModelInfo, ProviderInfo, snapshot_load
from apps.gateway.upstream_batches.anthropic import AnthropicBatches
from apps.gateway.upstream_batches.base import ENDPOINT, Ended, ProviderBatches
from apps.gateway.upstream_batches.openai import OpenAIBatches
from apps.gateway.upstream_batches.spend import line_estimate
from apps.providers.transport import ANTHROPIC_KIND
from apps.usage.models import RequestLog

ROUTE_REASON = "provider batch api"


def _line_id(job_id: str, index: int) -> str:
    return f"batch_req_{job_id.split('_', 1)[-1]}_{index}"


def batches_for(provider: ProviderInfo) -> ProviderBatches:
    """The provider's batch API."""
    if provider.kind == ANTHROPIC_KIND:
        return AnthropicBatches(provider)
    return OpenAIBatches(provider)


def _eligible(raw: bytes, models: dict[str, ModelInfo]) -> ModelInfo | None:
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(item, dict) or set(item) - {"custom_id", "method", "url", "body"}:
        return None  # eval, quality_target: features of the live path
    body = item.get("body")
    if (not isinstance(item.get("custom_id"), str) or item.get("method", "POST") != "POST"
            or item.get("url") != ENDPOINT or not isinstance(body, dict) or body.get("stream")):
        return None
    model = models.get(body.get("model")) if isinstance(body.get("model"), str) else None
    if model is None or model.mode != "chat" or model.deployments or not model.provider.batch_api:
        return None
    return model


def upstream_plan(*, endpoint: str, storage_name: str) -> dict | None:
    """``{"provider_id": ...}`` when every line can go to one provider's batch API, else None."""
    if endpoint != ENDPOINT:
        return None
    models = snapshot_load().models
    provider_id = None
    for _index, _offset, raw in lines_read(storage_name):
        model = _eligible(raw, models)
        if model is None or provider_id not in (None, model.provider.id):
            return None
        provider_id = model.provider.id
    return None if provider_id is None else {"provider_id": provider_id}


@dataclass
class _Provider:
    info: ProviderInfo
    models: dict[str, ModelInfo] = field(default_factory=dict)


def provider_load(provider_id: int) -> _Provider:
    """The job's provider with its models by exposed name."""
    found = None
    for model in snapshot_load().models.values():
        if model.provider.id == provider_id:
            found = found or _Provider(model.provider)
            found.models[model.name] = model
    if found is None:
        raise RuntimeError("the job's provider is no longer active")
    return found


def _refused(upstream: dict) -> dict | None:
    """The OpenAI error body every line gets when the budget refused the job, or None."""
    return (upstream.get("budget") or {}).get("refused")


def _requests(batches: ProviderBatches, provider: _Provider, storage_name: str
              ) -> Iterator[tuple[int, dict, ModelInfo | None, dict | GatewayError]]:
    """Each line with its model and its request for the provider (or why it cannot go)."""
    for index, _offset, raw in lines_read(storage_name):
        item = orjson.loads(raw)
        model = provider.models.get(item["body"]["model"])
        try:
            if model is None:  # deactivated since the job was planned
                raise BadRequest(f"The model '{item['body']['model']}' is no longer served.", param="model")
            params = batches.params(item["body"], model)
        except GatewayError as error:
            params = error
        yield index, item, model, params


def upstream_submit(*, job_id: str, storage_name: str, upstream: dict) -> str:
    """The provider's batch id for the job: one created now, or the one a previous worker
    created (:data:`NOTHING_SENT` when no line goes to the provider). Raises
    :class:`ProviderBatchRefused` when the provider refuses the batch."""
    if _refused(upstream):
        return NOTHING_SENT
    provider = provider_load(upstream["provider_id"])
    batches = batches_for(provider.info)
    requests = [(batches.custom_id(index, item), params)
                for index, item, _model, params in _requests(batches, provider, storage_name)
                if not isinstance(params, GatewayError)]
    if not requests:
        return NOTHING_SENT
    since = datetime.fromisoformat(upstream["submitted_at"])
    found = batches.find(job_id=job_id, since=since, count=len(requests))
    return found or batches.create(job_id=job_id, requests=requests)


def upstream_estimate(*, storage_name: str, upstream: dict) -> Decimal:
    """The most the job's lines may cost at their models' batch prices."""
    models = provider_load(upstream["provider_id"]).models
    total = Decimal(0)
    for _index, _offset, raw in lines_read(storage_name):
        body = orjson.loads(raw)["body"]
        model = models.get(body.get("model"))
        if model is not None:
            total += line_estimate(body, model)
    return total


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
    written = int(usage.get("cache_creation_input_tokens") or 0)  # Anthropic's prompt-cache writes
    cost = model.cost(prompt, cached, completion, written, batch=True) if usage else Decimal(0)
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return RequestLog(
        tenant_id=job["tenant_id"], api_key_id=job["api_key_id"], request_id=request_id_for(job["id"], index),
        endpoint=f"batch:{job['endpoint']}", requested_model=model.name, model_used=model.name, model_id=model.id,
        provider_id=model.provider.id, price_id=model.price_id, route_reason=ROUTE_REASON,
        input_tokens=prompt, cached_tokens=cached, cache_write_tokens=written, output_tokens=completion,
        cost=cost, saved_cost=Decimal(0), status_code=status,
        error_code=str(error.get("code") or error.get("type") or "")[:64] if error else "", created_at=now)


def _response_line(job_id: str, index: int, custom_id: str, status: int, body: dict) -> bytes:
    return orjson.dumps({"id": _line_id(job_id, index), "custom_id": custom_id, "response": {
        "status_code": status, "request_id": request_id_for(job_id, index), "body": body}, "error": None})


def upstream_poll(*, job: dict, storage_name: str) -> UpstreamResult | None:
    """The job's lines once its provider batch has ended (None while it runs).

    ``job``: ``id``, ``tenant_id``, ``api_key_id``, ``endpoint``, ``upstream`` and
    ``upstream_batch_id``.
    """
    provider = provider_load(job["upstream"]["provider_id"])
    batches = batches_for(provider.info)
    if job["upstream_batch_id"] == NOTHING_SENT:
        refusal = job["upstream"].get("provider_refusal") or {}
        ended = Ended({}, "refused", refusal.get("message") or "The line was not sent to the provider.")
    else:
        ended = batches.ended(job["upstream_batch_id"])
        if ended is None:
            return None
    refused = _refused(job["upstream"])
    now = datetime.now(UTC)
    lines, rows = [], []
    for index, item, model, params in _requests(batches, provider, storage_name):
        custom_id = item["custom_id"]
        if refused is not None:
            lines.append((index, custom_id, True, _response_line(job["id"], index, custom_id,
                                                                 BudgetExceeded.status, refused)))
            continue
        if isinstance(params, GatewayError):  # never sent: answered as the live path would
            lines.append((index, custom_id, True, _response_line(job["id"], index, custom_id, params.status,
                                                                 params.body())))
            continue
        answer = ended.answers.get(batches.custom_id(index, item))
        if not isinstance(answer, tuple):
            error = answer or {"code": f"provider_batch_{ended.status}", "message": ended.reason}
            lines.append((index, custom_id, True, orjson.dumps({
                "id": _line_id(job["id"], index), "custom_id": custom_id, "response": None, "error": error})))
            continue
        status, body = answer[0], batches.chat_answer(answer[0], answer[1], item["body"])
        if status == 200 and body.get("model") == model.upstream_id:
            body["model"] = model.name
        lines.append((index, custom_id, status != 200, _response_line(job["id"], index, custom_id, status, body)))
        rows.append(_usage_row(job=job, index=index, model=model, status=status, body=body, now=now))
    return UpstreamResult(lines, rows, ended.errors)


def job_cost(job_id: str) -> Decimal:
    """What the job's usage rows cost (its spend, settled against the budget)."""
    total = RequestLog.objects.filter(request_id__startswith=f"{job_id}-", route_reason=ROUTE_REASON).aggregate(
        total=Sum("cost"))["total"]
    return total or Decimal(0)
