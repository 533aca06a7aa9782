"""Provider protocols: how a chat request in OpenAI's form reaches a provider of each kind, and
how its answer comes back in OpenAI's form.

    kind        request                                             answer
    openai      POST {base}/chat/completions, Authorization Bearer  as it comes
    simulated   the same, to the built-in simulated upstream        as it comes
    azure       POST {base}/openai/deployments/{id}/chat/completions?api-version=V,
                or {base}/openai/v1/chat/completions with no version; ``api-key``
                                                                    as it comes (OpenAI's shape)
    gemini      POST {base}/models/{id}:generateContent or
                :streamGenerateContent?alt=sse; ``x-goog-api-key``  translated (:mod:`.gemini`)
    vertex      POST {base}/v1/projects/{project}/locations/{location}/publishers/google/models/{id}
                :generateContent or :streamGenerateContent?alt=sse; a service account's
                OAuth token as Authorization Bearer
                                                                    translated as Gemini's (:mod:`.vertex`)
    bedrock     POST {base}/model/{id}/converse or /converse-stream, signed with AWS SigV4
                                                                    translated (:mod:`.bedrock`)
    anthropic   reached by the Messages dialect with the client's own body (not here)

A dialect asks :func:`chat_protocol` for the model's provider kind: the protocol gives the path
and payload, and, when the provider speaks another wire format, reads its answer back (a JSON
answer, a stream, a refusal) so that every dialect sees OpenAI's chat form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from apps.providers.protocols.azure import AZURE_KIND, AzureChat, azure_path
from apps.providers.protocols.bedrock import BEDROCK_KIND, BedrockChat
from apps.providers.protocols.gemini import GEMINI_KIND, GeminiChat
from apps.providers.protocols.openai import OpenAIChat, chat_payload
from apps.providers.protocols.vertex import VERTEX_KIND, VertexChat

if TYPE_CHECKING:
    from apps.providers.transport import ModelRoute, ProviderStream, UpstreamClientError


class ChatProtocol(Protocol):
    """One wire protocol for chat requests."""

    translates: bool  # False: the provider speaks OpenAI's chat form, its answers pass as they come

    def path(self, model: ModelRoute, *, stream: bool) -> str:
        """Where the request goes, under the provider's base URL."""

    def payload(self, body: dict, model: ModelRoute, *, stream: bool, drop: tuple[str, ...] = ()) -> bytes:
        """The request body the provider is sent (``drop``: a translating dialect's own fields)."""

    def json_read(self, raw: bytes, parsed: dict, model: ModelRoute) -> tuple[bytes, dict]:
        """A JSON answer as a chat.completion (raw bytes and parsed)."""

    async def stream_read(self, opened: ProviderStream) -> ProviderStream:
        """A stream whose bytes are OpenAI chat chunks, ending with ``data: [DONE]``."""

    def refusal_read(self, exc: UpstreamClientError) -> UpstreamClientError:
        """A provider's 4xx in OpenAI's error shape."""


OPENAI_PROTOCOL = OpenAIChat()
_PROTOCOLS: dict[str, ChatProtocol] = {AZURE_KIND: AzureChat(), GEMINI_KIND: GeminiChat(), BEDROCK_KIND: BedrockChat(),
                                        VERTEX_KIND: VertexChat()}


def chat_protocol(kind: str) -> ChatProtocol:
    """The protocol a provider of ``kind`` speaks for chat (OpenAI's for any other kind)."""
    return _PROTOCOLS.get(kind, OPENAI_PROTOCOL)


def embeddings_path(model: ModelRoute) -> str | None:
    """Where an embeddings request for ``model`` goes (None: its provider has no
    OpenAI-compatible embeddings endpoint)."""
    kind = model.provider.kind
    if kind == AZURE_KIND:
        return azure_path(model, "embeddings")
    if kind in (GEMINI_KIND, BEDROCK_KIND, VERTEX_KIND):
        return None
    return "/embeddings"


__all__ = ["OPENAI_PROTOCOL", "ChatProtocol", "chat_payload", "chat_protocol", "embeddings_path"]
