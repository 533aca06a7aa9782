"""Anthropic's Message Batches API as a :class:`~apps.gateway.upstream_batches.ProviderBatches`,
for a native Anthropic provider.

    create   ``POST /v1/messages/batches`` with ``{"custom_id": "line-<n>", "params"}`` per line:
             the chat form translated to Messages params as the live path translates it
             (:func:`apps.gateway.dialects.anthropic.from_chat.messages_request`); a tenant's
             ``custom_id`` need not fit Anthropic's ``^[a-zA-Z0-9_-]{1,64}$``, so lines go by index
    ended    ``GET /v1/messages/batches/{id}`` until ``processing_status`` is ``ended``; then
             the JSONL at ``results_url``: ``succeeded`` messages become chat completions (usage
             with the prompt-cache reads and writes), ``errored`` ones OpenAI error bodies,
             ``canceled`` and ``expired`` lines errors ``provider_batch_canceled`` / ``_expired``
    find     Anthropic's batches carry no metadata: a batch created since the job was marked as
             going upstream with as many requests as the job sends is taken as the job's own
"""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import orjson

from apps.gateway.dialects.anthropic.from_chat import (
    chat_usage,
    completion_of_message,
    json_tool_name,
    messages_request,
    openai_error_body,
)
from apps.gateway.snapshot import ModelInfo, ProviderInfo
from apps.gateway.upstream_batches.base import Ended, ProviderBatchRefused
from apps.gateway.validation import chat_body_validate
from apps.providers.transport import ANTHROPIC_VERSION

# An errored request's status, by Anthropic's error type.
_STATUS_OF = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
              "permission_error": 403, "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
              "api_error": 500, "timeout_error": 504, "overloaded_error": 529}
_CLOCK_SKEW = timedelta(seconds=60)


class AnthropicBatches:
    def __init__(self, provider: ProviderInfo) -> None:
        self.base = provider.base_url.rstrip("/")
        self.client = httpx.Client(timeout=max(provider.timeout, 30.0), transport=httpx.HTTPTransport(retries=2),
                                   headers={"x-api-key": provider.credential, "anthropic-version": ANTHROPIC_VERSION})

    def _call(self, method: str, url: str, **kwargs) -> httpx.Response:
        response = self.client.request(method, url, **kwargs)
        if response.status_code != 200:
            _raise(response)
        return response

    def custom_id(self, index: int, item: dict) -> str:
        return f"line-{index}"

    def params(self, body: dict, model: ModelInfo) -> dict:
        chat_body_validate(body)
        return orjson.loads(messages_request(body, model.upstream_id, stream=False,
                                             max_tokens=model.max_output_tokens))

    def find(self, *, job_id: str, since: datetime, count: int) -> str | None:
        listed = self._call("GET", f"{self.base}/messages/batches", params={"limit": 100}).json()
        for batch in listed.get("data") or []:
            created = datetime.fromisoformat(batch["created_at"])
            if created >= since - _CLOCK_SKEW and sum((batch.get("request_counts") or {}).values()) == count:
                return batch["id"]
        return None

    def create(self, *, job_id: str, requests: list[tuple[str, dict]]) -> str:
        body = orjson.dumps({"requests": [{"custom_id": custom_id, "params": params}
                                          for custom_id, params in requests]})
        return self._call("POST", f"{self.base}/messages/batches", content=body,
                          headers={"content-type": "application/json"}).json()["id"]

    def ended(self, batch_id: str) -> Ended | None:
        batch = self._call("GET", f"{self.base}/messages/batches/{batch_id}").json()
        if batch.get("processing_status") != "ended":
            return None
        answers: dict[str, tuple[int, dict] | dict] = {}
        with self.client.stream("GET", batch["results_url"]) as results:
            if results.status_code != 200:
                results.read()
                _raise(results)
            for raw in results.iter_lines():
                item = orjson.loads(raw) if raw.strip() else None
                if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
                    answers[item["custom_id"]] = _answer(item.get("result") or {})
        return Ended(answers, "ended", "The provider's batch ended without an answer for this line.")

    def chat_answer(self, status: int, answer: dict, body: dict) -> dict:
        if status != 200:
            return answer
        usage = answer.get("usage") or {}
        read = int(usage.get("cache_read_input_tokens") or 0)
        written = int(usage.get("cache_creation_input_tokens") or 0)
        total = int(usage.get("input_tokens") or 0) + read + written
        return completion_of_message(answer, completion_id=f"chatcmpl-{answer.get('id', '')}",
                                     json_tool=json_tool_name(body),
                                     usage=chat_usage(total, read, written, int(usage.get("output_tokens") or 0)))


def _raise(response: httpx.Response):
    """A refusal (4xx but 429) as :class:`ProviderBatchRefused`; anything else is retried later."""
    message = f"Anthropic's Message Batches API answered {response.status_code}: {response.text[:300]}"
    if 400 <= response.status_code < 500 and response.status_code != 429:
        raise ProviderBatchRefused(message)
    raise RuntimeError(message)


def _answer(result: dict) -> tuple[int, dict] | dict:
    kind = result.get("type")
    if kind == "succeeded" and isinstance(result.get("message"), dict):
        return 200, result["message"]
    if kind == "errored":
        error = result.get("error") or {}
        if isinstance(error.get("error"), dict):  # Anthropic's error response, nested
            error = error["error"]
        status = _STATUS_OF.get(error.get("type"), 500)
        return status, orjson.loads(openai_error_body(status, orjson.dumps({"type": "error", "error": error})))
    return {"code": f"provider_batch_{kind or 'failed'}",
            "message": f"The provider's batch did not answer this line ({kind})."}
