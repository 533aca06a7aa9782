"""Progress of batch jobs as live events on the channel layer.

Each event goes to two groups: the job's tenant (``tenant.<id>.batch``, which a tenant's
WebSocket joins with ``{"type": "subscribe", "topic": "batch"}``) and the admin's
(``batches.admin``, joined by the progress bars of the admin pages). Only a Redis channel
layer carries events from a worker process to web processes, so without ``REDIS_URL`` nothing
is published and the admin polls instead.
"""

from __future__ import annotations

import logging

from channels.layers import get_channel_layer
from django.conf import settings

from apps.core.live import live_group

logger = logging.getLogger(__name__)

ADMIN_GROUP = "batches.admin"


def progress_event(job) -> dict:
    return {"id": job.pk, "kind": job.kind, "status": job.status, "total": job.total, "completed": job.completed,
            "failed": job.failed, "percent": job.percent}


def live_enabled() -> bool:
    return bool(settings.REDIS_URL)


async def progress_publish(tenant_id: int, event: dict) -> None:
    """Send a job's progress to its tenant's and the admin's subscribers; never raises."""
    if not live_enabled():
        return
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(live_group(tenant_id, "batch"),
                               {"type": "live.event", "topic": "batch", "event": event})
        await layer.group_send(ADMIN_GROUP, {"type": "live.event", "topic": "batch", "event": event})
    except Exception:
        logger.warning("batch progress not published", exc_info=True)
