"""Live events' channel-layer groups, shared by every app that publishes to sockets.

A tenant's subscribers of a topic (``usage`` from the gateway's streaming doors, ``batch`` from
batch jobs) are one group per tenant and topic; publishers and the WebSocket door name it with
:func:`live_group`, so the two always agree.
"""

from __future__ import annotations


def live_group(tenant_id: int, topic: str = "usage") -> str:
    """The channel-layer group of one tenant's live events of a topic (``usage`` or ``batch``)."""
    return f"tenant.{tenant_id}.{topic}"
