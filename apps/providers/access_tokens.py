"""OAuth access tokens from Google service-account keys (Vertex AI), one per provider per
process, shared by every request and renewed before they expire.

A provider's credential is its service-account JSON key. google-auth's
``service_account.Credentials`` signs a JWT with the key and exchanges it at the key's
``token_uri`` (the JWT bearer grant) for an access token that lasts ``expires_in`` seconds
(an hour at Google). The exchange is a blocking HTTP call, so it runs in a thread.

    no token, or past its use-by     the caller awaits the refresh (one per provider: concurrent
                                     callers await the same one)
    in its last stretch (renew)      the current token is returned at once and one refresh
                                     starts in the background
    fresh                            the current token, with no I/O

The last stretch is the last fifth of the token's life, at most five minutes; its use-by is
thirty seconds (at most a tenth of its life) before it expires, so a request is not sent with
a token that runs out on the way. A 401 from the provider forgets the token it was sent with.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from apps.providers.transport import ProviderConfig

logger = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
RENEW_AT_MOST = 300.0  # seconds before expiry a background renewal starts, at most
USE_BY_AT_MOST = 30.0  # seconds before expiry a token is no longer sent, at most
RETRY_AFTER = 1.0  # seconds between background renewals that fail


class TokenRefused(Exception):
    """The key could not be turned into an access token (a bad key, a refused grant, the token
    endpoint unreachable)."""


def key_parse(credential: str) -> dict:
    """A service-account JSON key as a dict; raises ``ValueError`` naming what is missing."""
    try:
        info = orjson.loads(credential)
    except orjson.JSONDecodeError as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValueError('not a service-account key ("type": "service_account")')
    missing = [name for name in ("client_email", "private_key", "token_uri") if not isinstance(info.get(name), str)]
    if missing:
        raise ValueError("missing " + ", ".join(missing))
    return info


def _fetch(info: dict, timeout: float) -> tuple[str, float]:
    """Blocking: one JWT bearer grant. The token and its lifetime in seconds."""
    # google-auth is imported here: only processes with a Vertex provider pay for loading it.
    import google.auth.exceptions
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    try:
        credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        credentials.refresh(functools.partial(Request(), timeout=timeout))
    except (google.auth.exceptions.GoogleAuthError, ValueError) as exc:
        raise TokenRefused(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    expiry = credentials.expiry  # naive UTC, google-auth's convention
    lifetime = (expiry - dt.datetime.now(dt.UTC).replace(tzinfo=None)).total_seconds() if expiry else 3600.0
    return credentials.token, max(lifetime, 0.0)


@dataclass(slots=True)
class _Entry:
    credential: str = field(repr=False)  # the key it was made from: a changed key starts afresh
    info: dict = field(repr=False)
    token: str = ""
    renew_at: float = 0.0
    use_by: float = 0.0
    refreshing: asyncio.Task | None = field(default=None, repr=False)


class AccessTokens:
    """Each provider's current access token, for one event loop. ``clock`` is monotonic seconds;
    ``fetch`` the blocking grant (run in a thread)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 fetch: Callable[[dict, float], tuple[str, float]] = _fetch) -> None:
        self._clock = clock
        self._fetch = fetch
        self._entries: dict[int, _Entry] = {}
        self.fetches = 0  # grants started by this process

    async def token(self, provider: ProviderConfig) -> str:
        """A valid access token for ``provider``; raises :class:`TokenRefused`."""
        entry = self._entry(provider)
        now = self._clock()
        if entry.token and now < entry.renew_at:
            return entry.token
        if entry.token and now < entry.use_by:
            self._refresh(entry, provider.timeout)  # in the background: this call goes on with the current one
            return entry.token
        # shielded: a caller that gives up does not cancel the refresh the others wait for
        return await asyncio.shield(self._refresh(entry, provider.timeout))

    def forget(self, provider: ProviderConfig, token: str) -> None:
        """The provider refused ``token``: the next call fetches another."""
        entry = self._entries.get(provider.id)
        if entry is not None and entry.token == token:
            entry.token, entry.renew_at, entry.use_by = "", 0.0, 0.0

    def _entry(self, provider: ProviderConfig) -> _Entry:
        entry = self._entries.get(provider.id)
        if entry is None or entry.credential != provider.credential:  # the same string object: no compare
            try:
                info = key_parse(provider.credential)
            except ValueError as exc:
                raise TokenRefused(f"the credential is not a service-account key: {exc}") from None
            entry = self._entries[provider.id] = _Entry(provider.credential, info)
        return entry

    def _refresh(self, entry: _Entry, seconds: float) -> asyncio.Task:
        """The refresh in flight for ``entry``, started if none is (``seconds``: the grant's timeout)."""
        if entry.refreshing is None:
            entry.refreshing = asyncio.get_running_loop().create_task(self._run(entry, seconds))
            entry.refreshing.add_done_callback(_retrieve)
        return entry.refreshing

    async def _run(self, entry: _Entry, seconds: float) -> str:
        self.fetches += 1
        try:
            token, lifetime = await asyncio.to_thread(self._fetch, entry.info, seconds)
        except BaseException as exc:
            logger.warning("no access token for %s: %s", entry.info.get("client_email"), exc)
            if entry.token:  # a renewal failed: the next try waits a second, while the token lasts
                entry.renew_at = min(self._clock() + RETRY_AFTER, entry.use_by)
            raise
        finally:
            entry.refreshing = None
        now = self._clock()
        entry.token = token
        entry.renew_at = now + lifetime - min(RENEW_AT_MOST, lifetime / 5)
        entry.use_by = now + lifetime - min(USE_BY_AT_MOST, lifetime / 10)
        return token


def _retrieve(task: asyncio.Task) -> None:
    """A background renewal's failure is seen by whoever next needs the token, not logged as lost."""
    if not task.cancelled():
        task.exception()
