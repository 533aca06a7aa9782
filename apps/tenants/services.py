"""Writes for tenants and keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

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
