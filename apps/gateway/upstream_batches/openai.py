"""OpenAI's Files and Batches API (and any OpenAI-compatible provider that serves it) as a
:class:`~apps.gateway.upstream_batches.ProviderBatches`: the lines uploaded as JSONL
(``purpose=batch``), a batch created with ``metadata.switchyard_job`` (which finds it again
among the provider's 100 most recent batches), its output and error files read once it ends."""

from __future__ import annotations

import contextlib
import tempfile
from datetime import datetime

import openai
import orjson

from apps.gateway.snapshot import ModelInfo, ProviderInfo
from apps.gateway.upstream_batches.base import ENDPOINT, Ended, ProviderBatchRefused

RUNNING = ("validating", "in_progress", "finalizing", "cancelling")


@contextlib.contextmanager
def _refusals():
    """A refusal (4xx but 429) as :class:`ProviderBatchRefused`; anything else is retried later."""
    try:
        yield
    except openai.APIStatusError as exc:
        if 400 <= exc.status_code < 500 and exc.status_code != 429:
            raise ProviderBatchRefused(f"The provider refused the batch ({exc.status_code}): {exc.message}") from exc
        raise


class OpenAIBatches:
    def __init__(self, provider: ProviderInfo) -> None:
        self.client = openai.OpenAI(base_url=provider.base_url, api_key=provider.credential or "none",
                                    timeout=max(provider.timeout, 30.0), max_retries=2)

    def custom_id(self, index: int, item: dict) -> str:
        return item["custom_id"]

    def params(self, body: dict, model: ModelInfo) -> dict:
        return {**body, "model": model.upstream_id}  # the provider checks the rest, as it would live

    def chat_answer(self, status: int, answer: dict, body: dict) -> dict:
        return answer  # already in the chat form

    def find(self, *, job_id: str, since: datetime, count: int) -> str | None:
        with _refusals():
            listed = self.client.batches.list(limit=100).data
        for batch in listed:
            if (batch.metadata or {}).get("switchyard_job") == job_id:
                return batch.id
        return None

    def create(self, *, job_id: str, requests: list[tuple[str, dict]]) -> str:
        with _refusals(), tempfile.TemporaryFile() as spool:
            for custom_id, body in requests:
                spool.write(orjson.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT,
                                          "body": body}) + b"\n")
            spool.seek(0)
            uploaded = self.client.files.create(file=(f"{job_id}.jsonl", spool.read()), purpose="batch")
        return self.client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h",
                                          metadata={"switchyard_job": job_id}).id

    def ended(self, batch_id: str) -> Ended | None:
        batch = self.client.batches.retrieve(batch_id)
        if batch.status in RUNNING:
            return None
        answers: dict[str, tuple[int, dict] | dict] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for raw in self.client.files.content(file_id).content.splitlines():
                item = orjson.loads(raw) if raw.strip() else None
                if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
                    continue
                response = item.get("response")
                if isinstance(response, dict):
                    body = response.get("body") if isinstance(response.get("body"), dict) else {}
                    answers[item["custom_id"]] = (int(response.get("status_code") or 500), body)
                elif isinstance(item.get("error"), dict):
                    answers[item["custom_id"]] = item["error"]
        reason = (batch.errors.data[0].message if batch.errors and batch.errors.data
                  else f"The provider's batch ended {batch.status}.")
        errors = batch.errors.model_dump() if batch.status == "failed" and batch.errors else None
        return Ended(answers, batch.status, reason, errors)
