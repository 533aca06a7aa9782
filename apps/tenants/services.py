"""Writes for tenants and keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from apps.tenants.last_used import KeysUsed
from apps.tenants.models import ApiKey, Tenant

KEY_PREFIX = "sk-sy-"
_PREFIX_CHARS = 8


def key_hash(raw_key: str) -> str:
    """SHA-256 of the whole key. Keys carry 190+ bits of randomness, so a fast hash is enough."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def key_prefix(raw_key: str) -> str:
    """The visible, indexed part of a key: ``sk-sy-`` and eight random characters."""
    return raw_key[: len(KEY_PREFIX) + _PREFIX_CHARS]


@dataclass(frozen=True)
class CreatedKey:
    """A new key and its secret. The secret exists only here; it is never stored."""

    api_key: ApiKey
    secret: str


@transaction.atomic
def key_create(*, tenant: Tenant, name: str = "default", expires_at=None, **limits) -> CreatedKey:
    """Create a key for ``tenant``; the returned secret is shown once and then gone.

    ``limits`` are the key's own limit fields (``rpm_limit``, ``budget_usd``, ...)."""
    while True:
        raw = KEY_PREFIX + secrets.token_urlsafe(6)[:_PREFIX_CHARS] + secrets.token_urlsafe(32)
        if "-" in raw[len(KEY_PREFIX):len(KEY_PREFIX) + _PREFIX_CHARS]:
            continue  # keep the prefix free of '-' so it reads as one token
        if not ApiKey.objects.filter(prefix=key_prefix(raw)).exists():
            break
    api_key = ApiKey.objects.create(
        tenant=tenant, name=name, prefix=key_prefix(raw), key_hash=key_hash(raw), expires_at=expires_at, **limits
    )
    return CreatedKey(api_key=api_key, secret=raw)


def key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key for good."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


@transaction.atomic
def tenant_create(*, name: str, slug: str, **fields) -> Tenant:
    """Create a tenant; settings the platform cannot run with raise ``ValidationError``."""
    tenant = Tenant(name=name, slug=slug, **fields)
    tenant.full_clean()
    tenant.save(force_insert=True)
    return tenant


_api_uses = KeysUsed()  # the management API's (files, batches, usage) in this process


def key_use_note(*, api_key: ApiKey) -> None:
    """A management API request used ``api_key``: its last use is written at most once a minute
    per key and process (the gateway's doors note theirs through the usage buffer instead)."""
    _api_uses.seen(api_key.pk)
    used = _api_uses.due()
    if used:
        keys_last_used_record(used=used)


def keys_last_used_record(*, used: dict[int, float]) -> int:
    """Move each key's ``last_used_at`` forward to its time in ``used`` (key id -> epoch seconds),
    in one statement; never backwards, since processes flush in any order. Returns the rows moved.

    A plain UPDATE, not ``save()``: a key's last use is not a config change, and must not tell
    every gateway to reload its keys."""
    if not used:
        return 0
    from django.db import connection

    ids = list(used)
    times = [datetime.fromtimestamp(used[key_id], UTC) for key_id in ids]
    table = ApiKey._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS k SET last_used_at = u.at "  # noqa: S608  # nosec B608  # the model's own table name
            "FROM unnest(%s::bigint[], %s::timestamptz[]) AS u(id, at) "
            "WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
            [ids, times],
        )
        return cursor.rowcount
