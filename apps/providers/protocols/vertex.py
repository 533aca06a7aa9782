"""Vertex AI: Gemini models on Google Cloud, reached with a service account's OAuth token.

    request   POST {base}/v1/projects/{project}/locations/{location}/publishers/google/models/{id}
              :generateContent, or :streamGenerateContent?alt=sse; the base is the location's
              endpoint (https://us-central1-aiplatform.googleapis.com, or
              https://aiplatform.googleapis.com for the ``global`` location)
    auth      ``Authorization: Bearer <access token>``, the token obtained from the provider's
              service-account key (:mod:`apps.providers.access_tokens`, through the transport)
    bodies    Gemini's, both ways: the translation of :mod:`apps.providers.protocols.gemini`
              (messages, tools, images, settings; candidates, usage with cached and reasoning
              tokens, streams, blocked prompts, errors in Google's shape)

The project is the provider's, or else the key's ``project_id``; the location is the provider's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from apps.providers.protocols.gemini import GeminiChat, model_path

if TYPE_CHECKING:
    from apps.providers.transport import ModelRoute

VERTEX_KIND = "vertex"


def vertex_path(model: ModelRoute, *, stream: bool) -> str:
    """The path of a chat request for ``model`` under its location's endpoint."""
    provider = model.provider
    project = quote(getattr(provider, "project", "") or "", safe="-._~")
    location = quote(getattr(provider, "location", "") or "", safe="-._~")
    return (f"/v1/projects/{project}/locations/{location}/publishers/google"
            + model_path(model.upstream_id, stream=stream))


class VertexChat(GeminiChat):
    """Chat requests to Gemini models on Vertex AI: Gemini's protocol at Vertex's URLs."""

    def path(self, model: ModelRoute, *, stream: bool) -> str:
        return vertex_path(model, stream=stream)


__all__ = ["VERTEX_KIND", "VertexChat", "vertex_path"]
