"""Vertex AI's URLs, and its access tokens obtained from a service-account key over real HTTP at
the simulator's token endpoint: one grant shared by concurrent callers, renewed before expiry
in the background, never blocking the event loop (the live round trip through the gateway is
tests/gateway/test_vertex.py)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from apps.providers.access_tokens import AccessTokens, TokenRefused
from apps.providers.protocols import chat_protocol, embeddings_path
from tests.live import service_account, service_account_stats


def _provider(key: dict | str, ident: int = 1, **fields):
    credential = key if isinstance(key, str) else json.dumps(key)
    return SimpleNamespace(id=ident, name="vertex", kind="vertex", base_url="http://x", credential=credential,
                           timeout=5.0, max_concurrency=4, api_version="", **fields)


class Clock:
    """Monotonic seconds a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_it_builds_vertex_urls_from_the_project_and_location():
    model = SimpleNamespace(name="m", upstream_id="gemini-2.5-flash",
                            provider=_provider("{}", project="my-project", location="europe-west4"))
    protocol = chat_protocol("vertex")
    assert protocol.path(model, stream=False) == (
        "/v1/projects/my-project/locations/europe-west4/publishers/google/models/gemini-2.5-flash:generateContent")
    assert protocol.path(model, stream=True) == (
        "/v1/projects/my-project/locations/europe-west4/publishers/google/models/gemini-2.5-flash"
        ":streamGenerateContent?alt=sse")
    assert protocol.translates and embeddings_path(model) is None


async def test_concurrent_callers_share_one_grant_and_the_loop_keeps_running(simulator):
    key = service_account(simulator, grant_delay_ms=300)
    tokens = AccessTokens()
    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(ticking())
    got = await asyncio.gather(*(tokens.token(_provider(key)) for _ in range(10)))
    ticker.cancel()
    assert len(set(got)) == 1 and got[0].startswith("ya29.sim-")
    assert service_account_stats(simulator, key)["grants"] == 1 and tokens.fetches == 1
    assert ticks >= 10  # the 300 ms grant ran in a thread: the loop ticked meanwhile


async def test_a_token_is_renewed_in_the_background_before_it_expires(simulator):
    key = service_account(simulator, expires_in=3600)
    clock = Clock()
    tokens = AccessTokens(clock=clock)
    provider = _provider(key)
    first = await tokens.token(provider)
    clock.now += 3000  # not yet in the last five minutes
    assert await tokens.token(provider) == first and tokens.fetches == 1
    clock.now += 400  # in the last five minutes: the current token at once, a renewal behind it
    assert await tokens.token(provider) == first
    assert await tokens.token(provider) == first and tokens.fetches == 1  # one renewal, not one per call
    second = await tokens._entries[provider.id].refreshing
    assert second != first and await tokens.token(provider) == second
    stats = service_account_stats(simulator, key)
    assert (stats["grants"], stats["renewed_early"]) == (2, 1)  # the second while the first was live


async def test_a_token_past_its_use_by_is_not_sent(simulator):
    key = service_account(simulator)
    clock = Clock()
    tokens = AccessTokens(clock=clock)
    provider = _provider(key)
    first = await tokens.token(provider)
    clock.now += 3600 - 10  # ten seconds left: too few to send it
    second = await tokens.token(provider)
    assert second != first and service_account_stats(simulator, key)["grants"] == 2


async def test_a_refused_token_is_forgotten_and_a_changed_key_starts_afresh(simulator):
    key = service_account(simulator)
    tokens = AccessTokens()
    first = await tokens.token(_provider(key))
    tokens.forget(_provider(key), "some other token")
    assert await tokens.token(_provider(key)) == first
    tokens.forget(_provider(key), first)
    second = await tokens.token(_provider(key))
    assert second != first
    other = service_account(simulator)
    assert await tokens.token(_provider(other)) not in (first, second)
    assert service_account_stats(simulator, key)["grants"] == 2
    assert service_account_stats(simulator, other)["grants"] == 1


@pytest.mark.parametrize("credential", ["not json", '{"type": "authorized_user"}', '{"type": "service_account"}'])
async def test_a_credential_that_is_not_a_service_account_key_is_refused(credential):
    with pytest.raises(TokenRefused, match="not a service-account key"):
        await AccessTokens().token(_provider(credential))


async def test_a_key_the_token_endpoint_does_not_know_is_refused(simulator):
    unknown = service_account(simulator, registered=False)
    with pytest.raises(TokenRefused, match="invalid_grant"):
        await AccessTokens().token(_provider(unknown))
    forged = {**service_account(simulator), "private_key": unknown["private_key"]}  # a known account, another key
    with pytest.raises(TokenRefused, match="Invalid JWT Signature"):
        await AccessTokens().token(_provider(forged))
    unreachable = {**service_account(simulator), "token_uri": "http://127.0.0.1:9/token"}
    with pytest.raises(TokenRefused, match="TransportError"):
        await AccessTokens().token(_provider(unreachable))
