"""Cross-process invalidation of the gateway's in-process config.

When an admin (or any code) saves or deletes a key, tenant, provider, model, price, rule,
classifier phrase or tag/end-user limit, a message goes out; every gateway process listening reloads its snapshot
and forgets its cached keys. Redis pub/sub carries it when ``REDIS_URL`` is set, Postgres
``NOTIFY`` otherwise. A Postgres notification is sent inside the writing transaction, so it is
delivered only if that transaction commits; the Redis message is sent on commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg
import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.db import connection, transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from apps.catalog.models import Deployment, Model, ModelPrice, Provider
from apps.gateway.database import conninfo
from apps.limits.models import AttributionLimit
from apps.routing.models import ComplexityIndicator, RoutingFallback, RoutingRule
from apps.tenants.models import ApiKey, Tenant

CHANNEL = "switchyard_config"
logger = logging.getLogger(__name__)


def config_changed_publish(**_kwargs) -> None:
    """Tell every gateway process that the config changed."""
    if settings.REDIS_URL:
        transaction.on_commit(_redis_publish)
    else:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])


def _redis_publish() -> None:
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        client.publish(CHANNEL, b"1")
        client.close()
    except redis.RedisError:
        logger.exception("could not publish a config change; gateways pick it up on their next timed refresh")


def signals_connect() -> None:
    """Publish on every write to a table the gateway caches."""
    for model in (ApiKey, Tenant, Provider, Model, Deployment, ModelPrice, RoutingRule, RoutingFallback,
                  ComplexityIndicator, AttributionLimit):
        post_save.connect(config_changed_publish, sender=model, dispatch_uid=f"bus-save-{model.__name__}")
        post_delete.connect(config_changed_publish, sender=model, dispatch_uid=f"bus-delete-{model.__name__}")
    m2m_changed.connect(config_changed_publish, sender=ApiKey.allowed_models.through, dispatch_uid="bus-key-models")
    m2m_changed.connect(config_changed_publish, sender=Tenant.allowed_models.through,
                        dispatch_uid="bus-tenant-models")


async def config_changes_listen(on_change: Callable[[], Awaitable[None]], *, retry_seconds: float = 1.0) -> None:
    """Call ``on_change`` for each config change until cancelled; reconnects after errors.

    After each (re)connection ``on_change`` runs once, since messages sent while disconnected
    are lost.
    """
    while True:
        try:
            if settings.REDIS_URL:
                await _listen_redis(on_change)
            else:
                await _listen_postgres(on_change)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("config listener lost its connection; reconnecting", exc_info=True)
        await asyncio.sleep(retry_seconds)


async def _listen_redis(on_change: Callable[[], Awaitable[None]]) -> None:
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(CHANNEL)
        await on_change()
        async for message in pubsub.listen():
            if message.get("type") == "message":
                await on_change()
    finally:
        await pubsub.aclose()
        await client.aclose()


async def _listen_postgres(on_change: Callable[[], Awaitable[None]]) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo(), autocommit=True) as conn:
        await conn.execute(f"LISTEN {CHANNEL}")
        await on_change()
        async for _notify in conn.notifies():
            await on_change()
