"""Live events for subscribed sockets, through the channel layer (Redis when ``REDIS_URL`` is
set, in memory otherwise): every web process's subscribers of a tenant's group get them.

A socket subscribes with ``{"type": "subscribe", "topic": "usage"}`` and then receives
``{"type": "live", "topic": "usage", "event": {...}}`` after each request its tenant makes over
a streaming door (the WebSocket and the EventSource endpoint); with ``"topic": "batch"``, the
progress of its batch jobs (``apps.batches.live``). Publishing happens off the
response path; a channel layer that is down costs a log line, never a request.
"""

from __future__ import annotations

import logging

from channels.layers import get_channel_layer

from apps.core.live import live_group

logger = logging.getLogger(__name__)

_USAGE_FIELDS = ("request_id", "model", "cache", "cost", "usage", "latency_ms", "ttft_ms", "finish_reason")


def live_usage_event(done: dict) -> dict:
    """The public part of a request's ``done`` event."""
    return {name: done.get(name) for name in _USAGE_FIELDS}


def live_publish(runtime, tenant_id: int, event: dict, *, topic: str = "usage") -> None:
    """Send ``event`` to the tenant's subscribers, in the background."""
    runtime.spawn(_publish(live_group(tenant_id, topic), topic, event))


async def _publish(group: str, topic: str, event: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(group, {"type": "live.event", "topic": topic, "event": event})
    except Exception:
        logger.warning("live event not published", exc_info=True, extra={"group": group})
