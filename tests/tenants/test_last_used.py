"""A key's last use: noted in memory per request, written at most once a minute per key, never
moved backwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apps.tenants.last_used import KeysUsed
from apps.tenants.models import ApiKey
from apps.tenants.services import keys_last_used_record


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_it_gives_a_keys_first_use_at_once_then_at_most_once_per_period():
    clock = Clock()
    used = KeysUsed(every=60, clock=clock)
    used.seen(1)
    assert used.due() == {1: clock.now}
    assert used.due() == {}
    clock.now += 10
    used.seen(1)
    clock.now += 20
    used.seen(1)
    used.seen(2)
    assert used.due() == {2: clock.now}  # key 1 was written 30 s ago
    clock.now += 30
    assert used.due() == {1: clock.now - 30}  # its latest use, a minute after its last write
    assert used.due() == {}


def test_it_gives_every_pending_use_at_shutdown_and_keeps_a_failed_write_for_the_next_round():
    clock = Clock()
    used = KeysUsed(every=60, clock=clock)
    used.seen(1)
    failed = used.due()
    used.retry(failed)
    assert used.due() == failed
    clock.now += 5
    used.seen(1)
    assert used.due() == {}
    assert used.due(everything=True) == {1: clock.now}


def test_it_moves_last_used_forward_only_and_only_for_the_keys_given(key_a, key_b):
    now = datetime.now(UTC).replace(microsecond=0)
    assert keys_last_used_record(used={key_a.api_key.pk: now.timestamp()}) == 1
    assert keys_last_used_record(used={key_a.api_key.pk: (now - timedelta(minutes=5)).timestamp()}) == 0
    assert ApiKey.objects.get(pk=key_a.api_key.pk).last_used_at == now
    assert ApiKey.objects.get(pk=key_b.api_key.pk).last_used_at is None
