"""What the provider batch APIs (:mod:`.openai`, :mod:`.anthropic`) and the package that drives
them (:mod:`apps.gateway.upstream_batches`) share: the endpoint their lines take, the refusal of a
whole batch, a batch that has ended, and the interface each API implements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from apps.core.errors import GatewayError
from apps.gateway.snapshot import ModelInfo

ENDPOINT = "/v1/chat/completions"


class ProviderBatchRefused(GatewayError):
    """The provider refused the batch itself (a 4xx other than a rate limit: a bad key, a batch
    too big): its lines cannot go, and asking again will not help."""

    status = 502
    code = "provider_batch_refused"


@dataclass
class Ended:
    """A provider's batch that has ended: each answered line by the ``custom_id`` it was sent
    with, as ``(status, chat-form body)`` or, when the provider did not answer it,
    ``{"code", "message"}``; and why the rest went unanswered."""

    answers: dict[str, tuple[int, dict] | dict]
    status: str  # the batch's end, for the unanswered lines' code: provider_batch_<status>
    reason: str
    errors: dict | None = None  # the provider's errors, kept on a failed job


class ProviderBatches(Protocol):
    """One provider's batch API (sync, on a worker thread)."""

    def custom_id(self, index: int, item: dict) -> str:
        """The id line ``index`` is sent with."""

    def params(self, body: dict, model: ModelInfo) -> dict:
        """The chat-form ``body`` as this provider's request; raises :class:`GatewayError` for
        one it cannot take."""

    def find(self, *, job_id: str, since: datetime, count: int) -> str | None:
        """A batch this job already created, if any."""

    def create(self, *, job_id: str, requests: list[tuple[str, dict]]) -> str:
        """A new batch of ``(custom_id, params)``; its id."""

    def ended(self, batch_id: str) -> Ended | None:
        """None while the batch runs."""

    def chat_answer(self, status: int, answer: dict, body: dict) -> dict:
        """An answer of :meth:`ended` in the chat form (``body``: the line's chat request)."""
