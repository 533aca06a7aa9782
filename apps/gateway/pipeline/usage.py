"""The end of every request, in one place: its usage row goes to the in-process buffer (no I/O
here) and its limits reservation is settled to what it used. A request has one row however it
ends, so a second call adds nothing."""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from apps.core.errors import GatewayError
from apps.gateway.pipeline.call import Call
from apps.gateway.pipeline.limits import limits_settle

if TYPE_CHECKING:
    from apps.gateway.runtime import Runtime


def call_log(runtime: Runtime, call: Call) -> None:
    """Log ``call`` once and settle its limits (and end its trace's span, when tracing is on)."""
    if call.logged:
        return
    call.logged = True
    if call.trace is None:
        _row_write(runtime, call)
    else:
        call.trace.end(call, partial(_row_write, runtime, call))


def _row_write(runtime: Runtime, call: Call) -> None:
    runtime.usage.append(call.usage_row())
    if call.reservation is not None:
        limits_settle(runtime, call)


def call_fail(runtime: Runtime, call: Call, error: GatewayError) -> None:
    """Log a request refused before it went upstream (bad input, routing, limits)."""
    call.status = error.status
    call.error_code = error.code
    call.overhead_ms = (time.perf_counter() - call.started) * 1000
    call_log(runtime, call)


def cut_short_status(runtime: Runtime, *, server: bool | None = None) -> tuple[int, str]:
    """Status and code of a request stopped before its end: by the server's shutdown, or by the
    client leaving. ``server`` says which when the door knows; else a draining server is blamed."""
    if server or (server is None and runtime.draining):
        return 503, "server_shutdown"
    return 499, "client_closed_request"
