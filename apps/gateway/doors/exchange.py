"""One HTTP request at a raw ASGI door, and the table entry that routes a path to its door."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apps.gateway.asgi_io import header
from apps.gateway.dialects.base import Dialect

if TYPE_CHECKING:
    from apps.gateway.pipeline.run import ChatRequest
    from apps.gateway.runtime import Runtime
    from apps.gateway.snapshot import KeyInfo


@dataclass(slots=True)
class Exchange:
    scope: dict
    receive: Callable
    send: Callable
    started: float
    chat: ChatRequest | None = None  # set by a door that asked the pipeline for a chat answer

    @property
    def request_id(self) -> str | None:
        """The request's id once the pipeline has accepted it (errors before then carry none)."""
        call = self.chat.call if self.chat is not None else None
        return call.request_id if call is not None else None


@dataclass(frozen=True, slots=True)
class Route:
    handler: Callable[[Runtime, Exchange, KeyInfo], Awaitable[None]]
    dialect: Dialect  # renders the door's errors
    credentials: Callable[[dict], str | None]  # the ``Bearer ...`` value the door was sent


def chat_options(scope) -> dict[str, str | None]:
    """A chat request's options as an HTTP door reads them from its headers (the keywords of
    :class:`apps.gateway.pipeline.run.ChatRequest`): every HTTP door takes the same ones."""
    return {"cache_control": header(scope, b"cache-control"),
            "namespace": header(scope, b"x-switchyard-cache-namespace"),
            "tags": header(scope, b"x-switchyard-tags"),
            "session": header(scope, b"x-switchyard-session-id"),
            "quality_target": header(scope, b"x-switchyard-quality-target"),
            "traceparent": header(scope, b"traceparent")}
