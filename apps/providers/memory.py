"""An in-memory :class:`~apps.providers.transport.Transport` for unit tests of the pipeline:
providers answer from a script, with no network, and every request they were sent is kept.

    transport = MemoryTransport()
    transport.script("gpt-sim", UpstreamFailure("status 503", status=503), {"choices": [...]})
    transport.script("gpt-sim-stream", [b"data: {...}\\n\\n", b"data: [DONE]\\n\\n"])

Each outcome is used once, in order, and the last one repeats: a dict is a JSON answer, a list
of bytes a stream (its first item is what arrived first), an exception is raised as the
attempt's failure (:class:`UpstreamFailure`, :class:`UpstreamClientError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from apps.providers.transport import UpstreamFailure


@dataclass(slots=True)
class SentRequest:
    model: object
    path: str
    body: dict
    headers: dict[str, str] | None


@dataclass(slots=True)
class MemoryStream:
    model: object
    first: bytes
    rest: list[bytes]
    transport: MemoryTransport
    closed: bool = False

    async def readany(self) -> bytes:
        return self.rest.pop(0) if self.rest else b""

    async def end_wait(self, seconds: float) -> None:
        return None

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.in_flight -= 1


@dataclass
class MemoryTransport:
    in_flight: int = 0
    sent: list[SentRequest] = field(default_factory=list)
    _scripts: dict[str, list] = field(default_factory=dict)

    def script(self, upstream_id: str, *outcomes) -> None:
        """What the model with ``upstream_id`` answers, attempt after attempt."""
        self._scripts[upstream_id] = list(outcomes)

    def _next(self, model, path: str, body: bytes, headers: dict[str, str] | None):
        self.sent.append(SentRequest(model, path, orjson.loads(body), headers))
        outcomes = self._scripts.get(model.upstream_id)
        if not outcomes:
            raise UpstreamFailure("connection: nothing scripted")
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def post_json(self, model, path: str, body: bytes,
                        headers: dict[str, str] | None = None) -> tuple[bytes, dict]:
        answer = self._next(model, path, body, headers)
        return orjson.dumps(answer), answer

    async def open_stream(self, model, path: str, body: bytes,
                          headers: dict[str, str] | None = None) -> MemoryStream:
        chunks = list(self._next(model, path, body, headers))
        self.in_flight += 1
        return MemoryStream(model, chunks[0], chunks[1:], self)

    async def close(self) -> None:
        return None
