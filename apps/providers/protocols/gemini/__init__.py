"""Google's Gemini API (``generateContent``), translated to and from OpenAI's chat form.

    request   POST {base}/models/{id}:generateContent, or :streamGenerateContent?alt=sse;
              the key in ``x-goog-api-key``; the base is https://generativelanguage.googleapis.com/v1beta
    messages  system and developer -> systemInstruction; user -> contents (role "user"),
              assistant -> role "model"; text, images (data: URLs as inlineData, other URLs as
              fileData), audio and files; tool calls -> functionCall parts, tool results ->
              functionResponse parts (the name found from the call's id)
    tools     functions -> functionDeclarations (the JSON schema as parametersJsonSchema);
              tool_choice none / auto / required / a named function -> functionCallingConfig
              NONE / AUTO / ANY / ANY with allowedFunctionNames
    settings  temperature, top_p, max(_completion)_tokens, stop, n, seed, presence and frequency
              penalties, response_format (JSON, JSON schema) -> generationConfig;
              reasoning_effort -> thinkingConfig.thinkingBudget
    answer    each candidate -> a choice: its text parts (thoughts left out) -> content, its
              functionCall parts -> tool_calls; finishReason STOP / MAX_TOKENS / SAFETY (and the
              other blocks) -> stop (tool_calls when it called) / length / content_filter; a
              prompt blocked outright (promptFeedback.blockReason, no candidate) -> a 400 refusal
              with code ``content_filter``
    usage     promptTokenCount (+ toolUsePromptTokenCount) -> prompt_tokens, with
              cachedContentTokenCount as prompt_tokens_details.cached_tokens (priced as cached
              input); candidatesTokenCount + thoughtsTokenCount -> completion_tokens, with
              thoughtsTokenCount as completion_tokens_details.reasoning_tokens (priced as output)
    stream    each SSE chunk -> OpenAI chat chunks; the finishing chunk -> the finish_reason
              chunk, then the usage chunk and ``data: [DONE]``
    errors    {"error": {"code", "message", "status"}} -> OpenAI's shape with the status in
              lower case as its code (``invalid_argument``); 429 RESOURCE_EXHAUSTED's RetryInfo
              delay and a 400 API_KEY_INVALID are read by the transport (retried as a rate limit;
              our credential, not the client's request)

Gemini's thought signatures (which a model that thought before calling a function needs back
with the call) travel inside the tool call's id, so a client that sends the call back as it
came returns the signature too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

import aiohttp
import orjson

from apps.providers.protocols.gemini.answer import (
    GeminiStream,
    blocked,
    completion_from_gemini,
    refusal_from_gemini,
    usage_from_gemini,
)
from apps.providers.protocols.gemini.request import gemini_request
from apps.providers.transport import UpstreamFailure

if TYPE_CHECKING:
    from apps.providers.transport import ModelRoute, ProviderStream, UpstreamClientError

GEMINI_KIND = "gemini"


def model_path(upstream_id: str, *, stream: bool) -> str:
    """``/models/{id}:generateContent`` (or the stream's), the path's end on Gemini's API and Vertex's."""
    name = "/models/" + quote(upstream_id.removeprefix("models/"), safe="-._~")
    return name + (":streamGenerateContent?alt=sse" if stream else ":generateContent")


class GeminiChat:
    """Chat requests to a Gemini API provider (and, with its own path, to Vertex AI)."""

    translates = True

    def path(self, model: ModelRoute, *, stream: bool) -> str:
        return model_path(model.upstream_id, stream=stream)

    def payload(self, body: dict, model: ModelRoute, *, stream: bool, drop: tuple[str, ...] = ()) -> bytes:
        return orjson.dumps(gemini_request(body))

    def json_read(self, raw: bytes, parsed: dict, model: ModelRoute) -> tuple[bytes, dict]:
        if not parsed.get("candidates"):
            reason = (parsed.get("promptFeedback") or {}).get("blockReason")
            if reason:
                raise blocked(model, str(reason))
            raise UpstreamFailure("no candidates in the answer")
        completion = completion_from_gemini(parsed, model.upstream_id)
        return orjson.dumps(completion), completion

    async def stream_read(self, opened: ProviderStream) -> ProviderStream:
        stream = GeminiStream(opened, opened.model.upstream_id)
        try:
            await stream.start()
        except BaseException as exc:
            await opened.close()
            if isinstance(exc, TimeoutError):
                raise UpstreamFailure("timeout before the first chunk", timeout=True) from exc
            if isinstance(exc, aiohttp.ClientError):
                raise UpstreamFailure(f"connection: {type(exc).__name__}") from exc
            raise
        return stream

    def refusal_read(self, exc: UpstreamClientError) -> UpstreamClientError:
        return refusal_from_gemini(exc)


__all__ = ["GEMINI_KIND", "GeminiChat", "GeminiStream", "completion_from_gemini", "gemini_request", "model_path",
           "refusal_from_gemini", "usage_from_gemini"]
