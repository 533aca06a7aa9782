"""How a test steers the SIMULATED upstream: its config and per-request knobs, queued faults,
counters, and the headers that mark every answer as simulated (see ``apps.simulator.server``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

HEADERS = {"x-simulated-upstream": "true"}
SSE_HEADERS = {"x-simulated-upstream": "true", "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
FAULT_MODES = frozenset({"status", "timeout", "slow", "stall", "cut", "garbage", "invalid_json", "no_usage",
                         "linger", "content_filter", "context_length"})
TIMEOUT_FAULT_SECONDS = 3600.0
NOT_JSON = b"{this is not json"
GARBAGE = b"this is not server-sent events\r\n\x00\xff garbage\n\n"



@dataclass
class SimulatorConfig:
    """How the simulated upstream answers when a request sends no ``x-sim-*`` headers."""

    ttft_ms: float = 20.0  # delay before the first byte of a chat answer
    chunk_delay_ms: float = 0.0  # delay between two content chunks of a stream
    chunks: int = 20  # words (= completion tokens = content chunks) in a chat answer
    embedding_dims: int = 384  # length of an embedding unless the request asks for ``dimensions``
    rpm: int = 0  # chat requests each model takes per wall-clock minute (0: no limit), as a provider's rate limit
    batch_delay_ms: float = 1000.0  # how long a submitted batch validates before it runs (apps.simulator.batches)
    # (model, prompt) -> whether that model answers that prompt correctly (apps.simulator.outcomes)
    outcomes: dict = field(default_factory=dict)


@dataclass
class Fault:
    """A queued fault: ``count`` more matching requests fail (-1: until cleared)."""

    model: str
    mode: str
    status: int = 500
    count: int = 1
    retry_after: float | None = None
    delay: float = 5.0  # seconds before the first byte, for ``slow``


@dataclass
class SimulatorState:
    """Mutable state of one server: its config, queued faults and request counters."""

    config: SimulatorConfig
    faults: list[Fault] = field(default_factory=list)
    requests: int = 0
    by_model: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    stopping: bool = False
    prompt_cache: set[str] = field(default_factory=set)  # prefixes the Messages API has cached
    last_messages: dict | None = None  # the last Messages request's body, for tests to read
    # With an RPM limit: chat requests taken, by model and wall-clock minute, and those refused (429).
    per_minute: dict[str, dict[int, int]] = field(default_factory=dict)
    rate_limited: dict[str, int] = field(default_factory=dict)
    # Vertex AI (apps.simulator.vertex): service accounts by client_email (with their counters),
    # and the access tokens granted (token -> (client_email, monotonic expiry)).
    service_accounts: dict[str, dict] = field(default_factory=dict)
    access_tokens: dict[str, tuple[str, float]] = field(default_factory=dict)

    def rate_take(self, model: str, rpm: int, now: float) -> int:
        """Take one of ``model``'s requests this minute: what is left after it, or -1 (refused)."""
        minute = int(now // 60)
        counts = self.per_minute.setdefault(model, {})
        used = counts.get(minute, 0)
        if used >= rpm:
            self.rate_limited[model] = self.rate_limited.get(model, 0) + 1
            return -1
        counts[minute] = used + 1
        return rpm - used - 1

    def take_fault(self, model: str) -> Fault | None:
        """The oldest fault matching ``model`` (or ``*``), used up by one request."""
        for fault in self.faults:
            if fault.model in ("*", model):
                if fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                return fault
        return None


def knob(request: web.Request, name: str, default: float) -> float:
    """A request's ``x-sim-*`` header as a number, else ``default``."""
    raw = request.headers.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        return default


def header_fault(request: web.Request) -> Fault | None:
    """The fault an ``x-sim-fault: <mode>[:<status>]`` header injects into this one request."""
    raw = request.headers.get("x-sim-fault")
    if not raw:
        return None
    mode, _, status = raw.partition(":")
    if mode not in FAULT_MODES:
        return None
    return Fault(model="*", mode=mode, status=int(status) if status.isdigit() else 500)


def fault_from_body(body: dict) -> Fault | str:
    """A fault from a control request, or what is wrong with it."""
    mode = body.get("mode", "status")
    if mode not in FAULT_MODES:
        return f"'mode' must be one of {sorted(FAULT_MODES)}"
    model = body.get("model", "*")
    if not isinstance(model, str) or not model:
        return "'model' must be a model id or '*'"
    status, count, retry_after = body.get("status", 500), body.get("count", 1), body.get("retry_after")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        return "'status' must be an HTTP status code"
    if not isinstance(count, int) or isinstance(count, bool) or count == 0 or count < -1:
        return "'count' must be a positive number of requests, or -1 for until cleared"
    if retry_after is not None and (not isinstance(retry_after, (int, float)) or retry_after < 0):
        return "'retry_after' must be a number of seconds"
    delay = body.get("delay", 5.0)
    if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= TIMEOUT_FAULT_SECONDS:
        return "'delay' must be a number of seconds"
    return Fault(model=model, mode=mode, status=status, count=count, retry_after=retry_after, delay=float(delay))


def drop_connection(request: web.Request) -> web.Response:
    """Close the connection with nothing more sent (the returned response goes nowhere)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500, headers=HEADERS)
