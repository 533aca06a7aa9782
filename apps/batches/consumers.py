"""``/ws/admin/batches``: live progress of every batch job for the admin's progress bars.

Staff users only (the admin's session cookie authenticates the handshake); events come from
the workers through the channel layer (``apps.batches.live``).
"""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.batches.live import ADMIN_GROUP


class BatchProgressConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_active or not user.is_staff:
            await self.close(code=4403)
            return
        await self.channel_layer.group_add(ADMIN_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code) -> None:
        await self.channel_layer.group_discard(ADMIN_GROUP, self.channel_name)

    async def live_event(self, message: dict) -> None:
        await self.send_json({"type": "live", "topic": message["topic"], "event": message["event"]})
