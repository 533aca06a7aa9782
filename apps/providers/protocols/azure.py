"""Azure OpenAI: OpenAI's chat form and answers, at Azure's URLs, with an ``api-key`` header.

The provider's base URL is the resource's endpoint (``https://RESOURCE.openai.azure.com``) and
a model's upstream id is its deployment's name (or, on the v1 API, the model or deployment the
body names). The provider's ``api_version`` picks the URL:

    a dated version (2024-10-21)  {base}/openai/deployments/{deployment}/chat/completions?api-version=2024-10-21
    empty, or "v1"                {base}/openai/v1/chat/completions (the model in the body)
    "preview"                     {base}/openai/v1/chat/completions?api-version=preview

Azure's errors are OpenAI's shape: a 400 whose code is ``content_filter`` (the prompt tripped
the content filter) is the client's request refused, passed on with its body and billed
nothing; a 429 carries ``Retry-After`` (and ``retry-after-ms``), which the transport honours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from apps.providers.protocols.openai import OpenAIChat

if TYPE_CHECKING:
    from apps.providers.transport import ModelRoute

AZURE_KIND = "azure"
V1 = "v1"


def azure_path(model: ModelRoute, operation: str = "chat/completions") -> str:
    """The path of ``operation`` for ``model`` under an Azure resource's endpoint."""
    version = (getattr(model.provider, "api_version", "") or "").strip()
    if not version or version == V1:
        return f"/openai/v1/{operation}"
    if version == "preview":
        return f"/openai/v1/{operation}?api-version=preview"
    deployment = quote(model.upstream_id, safe="")
    return f"/openai/deployments/{deployment}/{operation}?api-version={quote(version, safe='')}"


class AzureChat(OpenAIChat):
    """Azure OpenAI's chat completions."""

    def path(self, model: ModelRoute, *, stream: bool) -> str:
        return azure_path(model)
