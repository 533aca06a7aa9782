"""What a client dialect must provide for the pipeline to serve it.

The pipeline works on OpenAI's chat form (what routing, limits and the cache see). A dialect
turns its client's body into that form, builds what each provider in the chain is sent, turns
the provider's answer (JSON or stream) into its client's form and prices it, and renders errors
and cache replays. Adding a dialect (the Responses API, say) is one new module: the pipeline's
steps and their order do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from apps.core.errors import GatewayError
from apps.gateway.snapshot import ModelInfo

if TYPE_CHECKING:
    from apps.gateway.pipeline.call import Call
    from apps.gateway.pipeline.stream import ChatStream
    from apps.gateway.runtime import Runtime
    from apps.providers.protocols import ChatProtocol
    from apps.providers.transport import ProviderStream, UpstreamClientError


@dataclass(slots=True)
class Prepared:
    """A client's request in the pipeline's chat form."""

    body: dict  # OpenAI chat form: what routing, limits and the cache see
    original: dict  # the client's own body
    native_only: str | None = None  # features only a provider speaking the client's protocol takes
    forwarded: dict[str, str] = field(default_factory=dict)  # client headers a native provider sees
    payloads: dict[tuple, bytes] = field(default_factory=dict)  # per model and deployment, serialized once


@dataclass(slots=True)
class UpstreamRequest:
    path: str  # under the provider's base URL
    payload: bytes
    headers: dict[str, str] | None = None
    # The provider's protocol when its answers are not OpenAI's chat form: it reads them back
    # into it (JSON, stream, refusal) before the dialect sees them. None: they are read as they come.
    reader: ChatProtocol | None = None


class Dialect(Protocol):
    """One client API, as the pipeline uses it."""

    name: str
    endpoint: str  # the usage row's endpoint

    def prepare(self, body: dict, forwarded: dict[str, str]) -> Prepared:
        """Validate the client's body and give its chat form; raise :class:`BadRequest`."""

    def reachable(self, chain: tuple[ModelInfo, ...], *, requested: str,
                  native_only: str | None) -> tuple[ModelInfo, ...]:
        """The models of ``chain`` this client's requests can be sent to (raise when none)."""

    def routed(self, call: Call, prepared: Prepared) -> None:
        """Routed and within its limits: start any work the answer will need (a no-op for most)."""

    def upstream_request(self, prepared: Prepared, model: ModelInfo, *, stream: bool) -> UpstreamRequest:
        """What ``model``'s provider is sent for this request."""

    def refusal(self, exc: UpstreamClientError, model: ModelInfo) -> UpstreamClientError:
        """A provider's 4xx as this client expects to see it."""

    def json_answer(self, call: Call, prepared: Prepared, model: ModelInfo, raw: bytes,
                    parsed: dict) -> tuple[bytes, dict | None]:
        """Price ``call`` from the provider's answer; return the client's answer bytes and the
        chat.completion the cache keeps (None: not cacheable)."""

    def stream_open(self, runtime: Runtime, call: Call, prepared: Prepared, opened: ProviderStream,
                    on_end: Callable[[ChatStream | None], None]) -> ChatStream:
        """The client's stream over the provider's opened one."""

    def stream_completion(self, stream: ChatStream) -> dict | None:
        """What the cache keeps of a stream that ended normally (None: not cacheable)."""

    def error_render(self, error: GatewayError, request_id: str | None) -> tuple[int, bytes, list]:
        """Status, body and headers of an error answer, in the client's shape."""

    def request_id_headers(self, request_id: str | None) -> list[tuple[bytes, bytes]]:
        """The headers that tell the client its request's id."""
