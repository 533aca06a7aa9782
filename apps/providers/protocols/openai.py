"""OpenAI's chat completions, spoken by OpenAI-compatible providers and the simulated upstream:
requests go as they came (the model id swapped, usage always asked of a stream), answers come
back byte for byte."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from apps.providers.transport import ModelRoute, ProviderStream, UpstreamClientError


def chat_payload(body: dict, upstream_id: str, *, stream: bool, drop: tuple[str, ...] = ()) -> bytes:
    """``body`` as an OpenAI-compatible provider is sent it: its model id, without the fields in
    ``drop`` (a translating dialect's own), and usage asked of a stream (recorded whether or not
    the client sees it)."""
    out = {name: value for name, value in body.items() if name not in drop} if drop else dict(body)
    out["model"] = upstream_id
    if stream:
        out["stream"] = True
        options = dict(out.get("stream_options") or {})
        options["include_usage"] = True
        out["stream_options"] = options
    return orjson.dumps(out)


class OpenAIChat:
    """OpenAI's chat completions, spoken by OpenAI-compatible providers and the simulator."""

    translates = False

    def path(self, model: ModelRoute, *, stream: bool) -> str:
        return "/chat/completions"

    def payload(self, body: dict, model: ModelRoute, *, stream: bool, drop: tuple[str, ...] = ()) -> bytes:
        return chat_payload(body, model.upstream_id, stream=stream, drop=drop)

    def json_read(self, raw: bytes, parsed: dict, model: ModelRoute) -> tuple[bytes, dict]:
        return raw, parsed

    async def stream_read(self, opened: ProviderStream) -> ProviderStream:
        return opened

    def refusal_read(self, exc: UpstreamClientError) -> UpstreamClientError:
        return exc
