"""Reads for tenants and keys."""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta

from django.utils import timezone

from apps.core.errors import AuthenticationFailed
from apps.tenants.models import ApiKey, Tenant
from apps.tenants.services import KEY_PREFIX, key_hash, key_prefix


def bearer_key(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header, or '' (the scheme's case does not matter)."""
    if not authorization or authorization[:7].lower() != "bearer ":
        return ""
    return authorization[7:].strip()


def key_for_authorization(authorization: str | None) -> ApiKey:
    """The usable key an ``Authorization`` header names; :class:`AuthenticationFailed` otherwise."""
    key = key_authenticate(bearer_key(authorization))
    if key is None:
        raise AuthenticationFailed()
    return key


def key_authenticate(raw_key: str, *, now=None) -> ApiKey | None:
    """The usable key for ``raw_key``, or None.

    Looks the key up by its visible prefix, then compares hashes in constant time, so the
    comparison leaks nothing about how much of a guess was right. Revoked and expired keys,
    and keys of inactive tenants, do not authenticate.
    """
    if not raw_key or not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 200:
        return None
    candidate = ApiKey.objects.select_related("tenant").filter(prefix=key_prefix(raw_key)).first()
    if candidate is None:
        return None
    if not hmac.compare_digest(candidate.key_hash, key_hash(raw_key)):
        return None
    if not candidate.is_usable(now or timezone.now()):
        return None
    return candidate


def key_prefixes(*, tenant_id: int) -> dict[int, str]:
    """The visible prefix of each of the tenant's keys, revoked ones included, by key id."""
    return dict(ApiKey.objects.filter(tenant_id=tenant_id).values_list("pk", "prefix"))


def retention_cutoffs(now: datetime) -> list[tuple[int, datetime]]:
    """Each tenant that limits its log retention, and the time before which its records go."""
    return [(tenant_id, now - timedelta(days=days)) for tenant_id, days in Tenant.objects.filter(
        log_retention_days__isnull=False).values_list("pk", "log_retention_days")]
